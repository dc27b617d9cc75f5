"""What the OpenAI-compatible API costs over calling the runtime in process: time to the first
token and decode tokens/s for the same greedy request, through `serve` (the official openai
client, streamed, over loopback) and through `Phi4MMEdge.generate`, alternated round by round.

    python -m phi4mm_edge.benchmarks.api_overhead ARTIFACT [--rounds 5] [--tokens 32] [--threads N]

The server runs in its own process with the same thread count; the in-process model is loaded
in this one (the two never generate at the same time).
"""

import argparse
import re
import statistics
import subprocess
import sys
import time

from ..runtime import Phi4MMEdge

PROMPT = "Describe what an on-device assistant can do."


def start_server(artifact: str, tokens: int, threads: int) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([sys.executable, "-m", "phi4mm_edge.cli", "serve", artifact, "--port", "0",
                                "--max-new-tokens", str(tokens), "--threads", str(threads)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in process.stdout:
        if "Ctrl+C" in line:
            return process, re.search(r"https?://\S+", line).group(0)
    raise RuntimeError("the server did not start")


def through_api(client, prompt: str, tokens: int) -> tuple[float, float]:
    started = time.perf_counter()
    first, last, count = None, None, 0
    for chunk in client.chat.completions.create(model="m", messages=[{"role": "user", "content": prompt}], stream=True,
                                                max_tokens=tokens, stream_options={"include_usage": True}):
        if chunk.choices and chunk.choices[0].delta.content:
            last = time.perf_counter()
            first = first or last
        if chunk.usage:
            count = chunk.usage.completion_tokens
    return (first - started) * 1000, (count - 1) / (last - first)


def in_process(model: Phi4MMEdge, prompt: str, tokens: int) -> tuple[float, float]:
    generation = model.generate(prompt, max_new_tokens=tokens)
    generation.text()
    return generation.result.timings.ttft_ms, generation.result.timings.decode_tokens_per_s


def main(argv=None) -> dict:
    import openai

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifact")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    server, url = start_server(args.artifact, args.tokens, args.threads)
    try:
        client = openai.OpenAI(base_url=url + "v1", api_key="local", max_retries=0, timeout=600)
        model = Phi4MMEdge.load(args.artifact, threads=args.threads)
        samples = {"api": [], "in process": []}
        for round_ in range(args.rounds + 1):  # round 0 warms both up
            # A new prompt each round, the same on both sides: a repeated one would be a follow-up
            # that reuses its KV cache and skips the prefill.
            prompt = f"{round_}. {PROMPT}"
            for name, measure in (("api", lambda: through_api(client, prompt, args.tokens)),
                                  ("in process", lambda: in_process(model, prompt, args.tokens))):
                result = measure()
                if round_:
                    samples[name].append(result)
    finally:
        server.terminate()
        server.wait(timeout=30)
    report = {}
    for name, values in samples.items():
        report[name] = (statistics.median(v[0] for v in values), statistics.median(v[1] for v in values))
        print(f"{name:11} ttft {report[name][0]:9.1f} ms   decode {report[name][1]:8.2f} tok/s")
    api, local = report["api"], report["in process"]
    print(f"API overhead: ttft +{api[0] - local[0]:.1f} ms ({api[0] / local[0]:.3f}x), decode {api[1] / local[1]:.3f}x the in-process rate")
    return report


if __name__ == "__main__":
    main()

"""The peers, measured in the same `bench` invocation, each in its own process (its own peak RSS,
and its own Python if the peer lives in another environment):

- onnxruntime-genai: an int4 CPU model made by its own builder (see genai_peer.py), run through
  its generator with one thread per physical core (the tuned peer: its default is one thread).
- PyTorch eager: transformers' Phi3ForCausalLM on the Phi-3 checkpoint genai_peer.py writes,
  i.e. Phi-4-multimodal's text part with equal weights, in bf16 (fp32 needs 15 GB for the weights
  alone, beside ours: it is measured only with --torch-dtype fp32 on a machine with the room).

Every peer prints one JSON object: {"load_s", "ttft_s": {n: [seconds...]}, "decode_tokens_per_s":
[...], "peak_rss_mb"}; prompts are the same random ids as ours (bench.prompt).
"""

import json
import subprocess
import sys
from pathlib import Path

from ..errors import Phi4MMError

SCRIPTS = Path(__file__).with_name("peer_scripts")


def run_peer(script: str, args: list, python: str | None = None, timeout: float = 3600) -> dict:
    """Run one peer script with `python` (default: this interpreter); returns its JSON result."""
    command = [python or sys.executable, str(SCRIPTS / script), *map(str, args)]
    print(f"measuring the peer: {' '.join(command)}", file=sys.stderr, flush=True)
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise Phi4MMError(f"peer {script} took over {timeout:.0f} s") from None
    if done.returncode != 0:
        raise Phi4MMError(f"peer {script} failed (exit {done.returncode}): {done.stderr.strip()[-800:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def genai(folder, lengths, repeats: int, decode_tokens: int, threads: int, python: str | None = None) -> dict:
    result = run_peer("genai_run.py", [folder, ",".join(map(str, lengths)), repeats, decode_tokens, threads], python)
    result["artifact_mb"] = sum(p.stat().st_size for p in Path(folder).iterdir() if p.is_file()) / 1e6
    return result


def torch_eager(folder, lengths, repeats: int, decode_tokens: int, threads: int, dtype: str = "bf16",
                python: str | None = None) -> dict:
    return run_peer("torch_run.py", [folder, ",".join(map(str, lengths)), repeats, decode_tokens, threads, dtype], python)

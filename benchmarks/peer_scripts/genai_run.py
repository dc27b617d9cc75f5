"""onnxruntime-genai peer: python genai_run.py MODEL_FOLDER LENGTHS REPEATS DECODE_TOKENS THREADS.
Prints one JSON line. MODEL_FOLDER is a genai model folder: its builder's output, or a
phi4mm-edge artifact (export writes genai's files into it; its decoder-only overlay
genai_text.json is applied, so the prompts run with no adapter, as ours are measured). The
threads are set through a config overlay (genai reads them from its config only); no file in the
folder is changed, so an artifact's sha256 list still holds."""

import json
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime_genai as og
from peer_common import peak_rss_mb

folder, lengths, repeats, decode_tokens, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
if hasattr(og, "disable_telemetry_events"):  # genai 0.18 has telemetry; nothing leaves this machine
    og.disable_telemetry_events()
config = og.Config(folder)
text_overlay = Path(folder) / "genai_text.json"
if text_overlay.is_file():
    config.overlay(text_overlay.read_text())
    print(f"applied {text_overlay.name}: genai's decoder-only model over the artifact's graphs", file=sys.stderr)
config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))

started = time.perf_counter()
model = og.Model(config)
result = {"load_s": time.perf_counter() - started, "ttft_s": {}, "decode_tokens_per_s": []}
for n in map(int, lengths.split(",")):
    ids = np.random.default_rng(0).integers(0, 199_000, n).astype(np.int32)  # bench.prompt(n)
    times = []
    for repeat in range(repeats + 1):  # the first is the warm-up
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=n + decode_tokens + 1, do_sample=False)
        generator = og.Generator(model, params)
        begin = time.perf_counter()
        generator.append_tokens(ids)  # runs the prompt and yields the first token's logits
        generator.generate_next_token()
        first = time.perf_counter()
        if repeat:
            times.append(first - begin)
        if n == 128 and repeat:
            count = 0
            while not generator.is_done() and count < decode_tokens:
                generator.generate_next_token()
                count += 1
            result["decode_tokens_per_s"].append(count / (time.perf_counter() - first))
        del generator
    result["ttft_s"][str(n)] = times
result["peak_rss_mb"] = peak_rss_mb()
print(json.dumps(result))

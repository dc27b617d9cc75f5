"""onnxruntime-genai peer: python genai_run.py MODEL_FOLDER LENGTHS REPEATS DECODE_TOKENS THREADS.
Prints one JSON line. Sets the model's intra_op_num_threads in genai_config.json when it differs
(onnxruntime-genai reads threads from that file only), and says so on stderr."""

import json
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime_genai as og
from peer_common import peak_rss_mb

folder, lengths, repeats, decode_tokens, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
config_path = Path(folder) / "genai_config.json"
config = json.loads(config_path.read_text())
options = config["model"]["decoder"].setdefault("session_options", {})
if options.get("intra_op_num_threads") != threads:
    options["intra_op_num_threads"] = threads
    config_path.write_text(json.dumps(config, indent=4))
    print(f"set intra_op_num_threads={threads} in {config_path}", file=sys.stderr)

started = time.perf_counter()
model = og.Model(folder)
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

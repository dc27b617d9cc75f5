"""Per-operator profile of prefill (ONNX Runtime's profiler), for each prefill path:
python benchmarks/results/profile_prefill.py ARTIFACT [TOKENS]
Runs one TOKENS-token prompt (default 512) after a warm-up, through the int4 path (decoder.onnx)
and the int8 path (decoder_prefill.onnx), and prints each path's operator split."""

import collections
import json
import sys

import numpy as np

from phi4mm_edge.runtime import Phi4MMEdge, providers


def profiled(threads=None):
    options = providers.session_options(threads)
    options.enable_profiling = True
    return options


tokens = int(sys.argv[2]) if len(sys.argv) > 2 else 512
ids = np.random.default_rng(0).integers(0, 199_000, tokens).tolist()
for path in ("int4", "int8"):
    model = Phi4MMEdge.load(sys.argv[1], context_length=tokens + 8, verify=False, prefill=path,
                           session_options=profiled())
    for _ in range(2):  # warm-up, then the profiled run
        model.clear_cache()  # a whole prefill each time, not a reuse of the previous one
        model.generate_from_ids(ids, max_new_tokens=1).text()
    session = model.decoder.int8_prompt if path == "int8" else model.decoder.decoder
    events = json.load(open(session.end_profiling()))
    run = max((e for e in events if e.get("cat") == "Session" and e["name"] == "model_run"), key=lambda e: e["ts"])
    by_op = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") \
                and run["ts"] <= e["ts"] <= run["ts"] + run["dur"]:
            by_op[e["args"].get("op_name", "?")] += e["dur"]
    kernels = sum(by_op.values())
    print(f"prefill {path}, {tokens} tokens: {run['dur'] / 1e6:.2f} s wall, {tokens / run['dur'] * 1e6:.1f} tokens/s")
    for op, duration in by_op.most_common(7):
        print(f"  {op:28} {100 * duration / kernels:5.1f}%  {duration / 1e6:7.3f} s")
    model = None

"""Per-operator profile of decode steps (ONNX Runtime's profiler), no adapter vs the speech adapter:
python benchmarks/results/profile_decode.py ARTIFACT
Runs 64-token prompts with 24 new tokens each and prints the operator split of the decode steps."""

import collections
import json
import sys

import numpy as np

from phi4mm_edge.runtime import Phi4MMEdge, providers


def profiled(threads=None):
    options = providers.session_options(threads)
    options.enable_profiling = True
    return options


model = Phi4MMEdge.load(sys.argv[1], context_length=600, verify=False, session_options=profiled())
ids = np.random.default_rng(0).integers(0, 199_000, 64).tolist()
for adapter in ("none", "speech"):
    model.generate_from_ids(ids, max_new_tokens=24, adapter=adapter).text()
events = json.load(open(model.decoder.decoder.end_profiling()))
runs = sorted((e for e in events if e.get("cat") == "Session" and e["name"] == "model_run"), key=lambda e: e["ts"])
nodes = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
# runs: prefill, 23 decode steps (none); prefill, 23 decode steps (speech)
for label, group in (("no adapter", runs[1:24]), ("speech adapter", runs[25:48])):
    by_op = collections.Counter()
    for run in group:
        for e in nodes:
            if run["ts"] <= e["ts"] <= run["ts"] + run["dur"]:
                by_op[e["args"].get("op_name", "?")] += e["dur"]
    kernels = sum(by_op.values())
    print(f"decode, {label}: {sum(r['dur'] for r in group) / len(group) / 1000:.1f} ms/step wall")
    for op, duration in by_op.most_common(5):
        print(f"  {op:28} {100 * duration / kernels:5.1f}%  {duration / len(group) / 1000:7.2f} ms/step")

"""phi4mm-edge in its own process, on the peers' workload: python ours_run.py ARTIFACT LENGTHS
REPEATS DECODE_TOKENS THREADS. Prints one JSON line like the peer scripts, so load time and peak
RSS are measured the same way for everyone: a fresh interpreter, one load (warm: the artifact
was verified before), its prompts, decode with no adapter, then with each adapter it has."""

import json
import sys
import time

import numpy as np
from peer_common import peak_rss_mb

from phi4mm_edge.runtime import Phi4MMEdge

folder, lengths, repeats, decode_tokens, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
lengths = [int(n) for n in lengths.split(",")]
started = time.perf_counter()
model = Phi4MMEdge.load(folder, threads=threads, context_length=max(lengths) + decode_tokens + 8)
result = {"load_s": time.perf_counter() - started, "ttft_s": {}, "decode_tokens_per_s": [], "adapter_decode_tokens_per_s": {}}
for n in lengths:
    ids = np.random.default_rng(0).integers(0, 199_000, n).tolist()  # bench.prompt(n)
    times = []
    for repeat in range(repeats + 1):  # the first is the warm-up
        generation = model.generate_from_ids(ids, max_new_tokens=decode_tokens if n == lengths[0] else 1)
        generation.text()
        if repeat:
            times.append(generation.result.timings.ttft_ms / 1000)
            if n == lengths[0]:
                result["decode_tokens_per_s"].append(generation.result.timings.decode_tokens_per_s)
    result["ttft_s"][str(n)] = times
for adapter in model.adapters.names():
    if adapter != "none":
        ids = np.random.default_rng(0).integers(0, 199_000, lengths[0]).tolist()
        rates = []
        for repeat in range(repeats + 1):
            generation = model.generate_from_ids(ids, max_new_tokens=decode_tokens, adapter=adapter)
            generation.text()
            if repeat:
                rates.append(generation.result.timings.decode_tokens_per_s)
        result["adapter_decode_tokens_per_s"][adapter] = rates
result["peak_rss_mb"] = peak_rss_mb()
print(json.dumps(result))

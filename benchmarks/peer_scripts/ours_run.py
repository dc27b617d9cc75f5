"""phi4mm-edge in its own process, on the peers' workload: python ours_run.py ARTIFACT LENGTHS
REPEATS DECODE_TOKENS THREADS [PROVIDER] (the provider the in-process bench ran on; default
auto). Prints one JSON line like the peer scripts, so load time and peak
RSS are measured the same way for everyone: a fresh interpreter, one load (warm: the artifact
was verified before), its prompts, decode with no adapter, then with each adapter it has."""

import json
import sys
import time

import numpy as np
from peer_common import peak_rss_mb

from phi4mm_edge.runtime import Phi4MMEdge

folder, lengths, repeats, decode_tokens, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
provider = sys.argv[6] if len(sys.argv) > 6 else "auto"
lengths = [int(n) for n in lengths.split(",")]
started = time.perf_counter()
model = Phi4MMEdge.load(folder, provider=provider, threads=threads, context_length=max(lengths) + decode_tokens + 8)
result = {"load_s": time.perf_counter() - started, "provider": model.provider, "ttft_s": {}, "decode_tokens_per_s": [],
          "adapter_decode_tokens_per_s": {}}
for n in lengths:
    ids = np.random.default_rng(0).integers(0, 199_000, n).tolist()  # bench.prompt(n)
    times = []
    for repeat in range(repeats + 1):  # the first is the warm-up
        model.clear_cache()  # the same prompt again would be a follow-up: all but its last position reused
        generation = model.generate_from_ids(ids, max_new_tokens=1)
        generation.text()
        if repeat:
            times.append(generation.result.timings.ttft_ms / 1000)
    result["ttft_s"][str(n)] = times
# Decode after the shortest prompt, the adapters interleaved round by round: a shared host's speed
# drifts within a minute, and the ratios between adapters must not absorb that drift.
ids = np.random.default_rng(0).integers(0, 199_000, lengths[0]).tolist()
adapters = [a for a in model.adapters.names() if a != "none"]
rates = {a: [] for a in ["none", *adapters]}
for repeat in range(repeats + 1):
    for adapter in rates:
        generation = model.generate_from_ids(ids, max_new_tokens=decode_tokens, adapter=adapter)
        generation.text()
        if repeat:
            rates[adapter].append(generation.result.timings.decode_tokens_per_s)
result["decode_tokens_per_s"] = rates.pop("none")
result["adapter_decode_tokens_per_s"] = rates
result["peak_rss_mb"] = peak_rss_mb()
print(json.dumps(result))

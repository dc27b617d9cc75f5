"""Re-measure TTFT for a 128-token prompt alone (as `bench` does it):
python benchmarks/results/ttft.py ARTIFACT"""

import statistics
import sys
import time

import numpy as np

from phi4mm_edge.runtime import Phi4MMEdge

model = Phi4MMEdge.load(sys.argv[1], context_length=1100)
ids = np.random.default_rng(128).integers(0, 199_000, 128).tolist()
model.generate_from_ids(ids, max_new_tokens=1).text()  # warm-up
times = []
for _ in range(3):
    model.clear_cache()  # else the repeat reuses the previous prompt's KV cache
    started = time.perf_counter()
    model.generate_from_ids(ids, max_new_tokens=1).text()
    times.append(time.perf_counter() - started)
print(f"ttft 128: min {min(times):.2f} median {statistics.median(times):.2f} max {max(times):.2f} s")

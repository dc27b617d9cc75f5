import time, statistics, numpy as np
from phi4mm_edge.runtime import Phi4MMEdge
m = Phi4MMEdge.load(__import__("sys").argv[1], context_length=1100)
ids = np.random.default_rng(128).integers(0, 199000, 128).tolist()
m.generate_from_ids(ids, max_new_tokens=1).text()
ts = []
for _ in range(3):
    t = time.perf_counter(); m.generate_from_ids(ids, max_new_tokens=1).text(); ts.append(time.perf_counter() - t)
print("ours ttft 128: min %.2f median %.2f max %.2f s" % (min(ts), statistics.median(ts), max(ts)))

"""Decode step time with each adapter, for one or more artifacts in the same process, rounds
interleaved so that the machine's drift (shared hosts vary by 20% from minute to minute) falls on
every design alike. Ratios are taken within each round, then their median is reported.

    python -m phi4mm_edge.benchmarks.adapter_decode ARTIFACT [ARTIFACT ...] [--rounds 7] [--tokens 24]
"""

import argparse
import resource
import statistics
import time
from pathlib import Path

import numpy as np

from ..artifact import ADAPTERS, NO_ADAPTER
from ..runtime import Phi4MMEdge


def step_ms(model: Phi4MMEdge, adapter: str, tokens: int) -> float:
    ids = np.random.default_rng(0).integers(0, 199_000, 16).tolist()
    generation = model.generate_from_ids(ids, max_new_tokens=tokens, adapter=adapter)
    generation.text()
    return 1000 / generation.result.timings.decode_tokens_per_s


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifacts", nargs="+")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--tokens", type=int, default=24)
    parser.add_argument("--threads", type=int)
    args = parser.parse_args(argv)
    models = {}
    for folder in args.artifacts:
        started = time.perf_counter()
        models[folder] = Phi4MMEdge.load(folder, context_length=600, threads=args.threads)
        print(f"{folder}: loaded in {time.perf_counter() - started:.1f} s; peak RSS so far "
              f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB", flush=True)
    adapters = [NO_ADAPTER, *ADAPTERS]
    samples = {(f, a): [] for f in models for a in adapters}
    for round_ in range(args.rounds + 1):  # round 0 warms up
        for folder, model in models.items():
            for adapter in adapters:
                ms = step_ms(model, adapter, args.tokens)
                if round_:
                    samples[(folder, adapter)].append(ms)
    first = args.artifacts[0]
    report = {}
    for folder in models:
        for adapter in adapters:
            times = samples[(folder, adapter)]
            own = [t / n for t, n in zip(times, samples[(folder, NO_ADAPTER)])]
            against_first = [t / n for t, n in zip(times, samples[(first, NO_ADAPTER)])]
            report[(folder, adapter)] = (statistics.median(times), statistics.median(own), statistics.median(against_first))
            print(f"{Path(folder).name:24} {adapter:7} step {statistics.median(times):7.1f} ms  "
                  f"{statistics.median(own):5.3f}x its own no-adapter step  "
                  f"{statistics.median(against_first):5.3f}x {Path(first).name}'s no-adapter step")
    return report


if __name__ == "__main__":
    main()

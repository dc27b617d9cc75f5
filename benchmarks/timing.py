"""Timing helper shared by the benchmarks: medians after a warm-up, never a single run."""

import statistics
import time


def timed(run, repeats: int = 5, warmup: int = 1) -> list[float]:
    """Wall seconds of `run()` for each of `repeats` calls, after `warmup` untimed calls."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return times


def median_seconds(run, repeats: int = 5, warmup: int = 1) -> float:
    return statistics.median(timed(run, repeats, warmup))


def measure_at_both_precisions(folder, config: dict, measure) -> dict:
    """Write a reference checkpoint with `config`, export it at fp32 and int4 under `folder`, and
    return {precision: measure(loaded model)}."""
    from pathlib import Path

    from ..export.convert import export
    from ..export.options import ExportOptions
    from ..export.graph_blocks import Precision
    from ..export.reference_checkpoint import write_reference
    from ..runtime import Phi4MMEdge

    folder = Path(folder)
    checkpoint = write_reference(folder / "checkpoint", config=config)
    results = {}
    for precision in ("fp32", "int4"):
        export(checkpoint, folder / precision, ExportOptions(Precision(weights=precision)), show_progress=False)
        results[precision] = measure(Phi4MMEdge.load(folder / precision))
    return results

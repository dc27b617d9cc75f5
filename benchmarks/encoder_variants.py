"""What the encoder benchmarks (vision_latency.py, audio_latency.py) share: the variants of an
encoder graph they compare (how linears are stored, how attention runs), the full-width
checkpoints each variant is built from, interleaved timing, ONNX Runtime's per-operator
profile, the CPU they ran on, and their command line."""

import argparse
import json
import tempfile
import statistics
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..runtime.providers import open_session, session_options


@dataclass(frozen=True)
class Variant:
    name: str
    weights: str  # the linears: "int4" (MatMulNBits, accuracy level 4), "int8" (MLAS's uint8 x int8 GEMM), "fp32"
    fused_attention: bool
    # int8: activations rounded per row, as export's encoders do (False: DynamicQuantizeMatMul)
    int8_row_scales: bool = True

    def precision(self):
        from ..export.graph_blocks import Precision

        return Precision(weights=self.weights, int8_row_scales=self.int8_row_scales)


BASELINE = Variant("--baseline graphs (another version's export)", "int4", False)  # timed from files, never built here
BEFORE = Variant("int4 linears, plain attention (before)", "int4", False)
AFTER = Variant("int8 linears, fused attention (after)", "int8", True)  # export's default with an int4 base
EXACT = Variant("fp32 linears, plain attention", "fp32", False)  # what the others' outputs are compared with
VARIANTS = (
    BEFORE,
    Variant("int4 linears, fused attention", "int4", True),
    Variant("int8 per-tensor linears, fused attention", "int8", True, int8_row_scales=False),
    Variant("int8 linears, plain attention", "int8", False),
    AFTER,
    EXACT,
    Variant("fp32 linears, fused attention", "fp32", True),
)


def open_sessions(graphs: dict, threads: int | None = None) -> dict:
    """{key: session} with the runtime's session options (`threads` None: one per physical core)."""
    options = session_options(threads)
    return {key: open_session(path, options, "cpu") for key, path in graphs.items()}


def interleaved_seconds(sessions: dict, feeds: dict, rounds: int) -> dict:
    """{key: [seconds in each round]}: every round runs each session once, after one warm-up each."""
    for session in sessions.values():
        session.run(None, feeds)
    times = {key: [] for key in sessions}
    for _ in range(rounds):
        for key, session in sessions.items():
            started = time.perf_counter()
            session.run(None, feeds)
            times[key].append(time.perf_counter() - started)
    return times


def per_layer(few: list[float], more: list[float], few_layers: int, more_layers: int,
              full_layers: int) -> tuple[float, float, float]:
    """From the times of graphs running `few_layers` and `more_layers` layers (their medians):
    (one layer, the rest, the rest + `full_layers` layers)."""
    few, more = statistics.median(few), statistics.median(more)
    layer = (more - few) / (more_layers - few_layers)
    rest = few - few_layers * layer
    return layer, rest, rest + full_layers * layer


def median_ratio(values: list[float], baseline: list[float]) -> float:
    """The median of the per-round ratios: drift of a shared machine cancels within a round."""
    return statistics.median(v / b for v, b in zip(values, baseline))


def op_type_shares(profile_path: str, runs: int) -> list[tuple[str, float, float]]:
    """[(operator type, ms per run, share of the kernels' time)] from an ONNX Runtime profile."""
    by_type = Counter()
    for event in json.loads(Path(profile_path).read_text()):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            by_type[event["args"]["op_name"]] += event["dur"]
    total = sum(by_type.values())
    return [(op, microseconds / 1000 / runs, microseconds / total) for op, microseconds in by_type.most_common()]


def profile(graph: Path, feeds: dict, threads: int | None = None, runs: int = 3) -> list[str]:
    """The per-operator profile of `runs` runs of `graph` (after a warm-up in another session), as lines."""
    open_session(graph, session_options(threads), "cpu").run(None, feeds)  # page the weights in
    options = session_options(threads)
    options.enable_profiling = True
    options.profile_file_prefix = str(graph.with_suffix(""))
    session = open_session(graph, options, "cpu")
    for _ in range(runs):
        session.run(None, feeds)
    return [f"    {op:28s} {ms:8.1f} ms per run  {share:6.1%}"
            for op, ms, share in op_type_shares(session.end_profiling(), runs)]


def variant_lines(variants: list, samples: dict, outputs: dict, estimates: dict, more: int, unit: str,
                  part: str) -> list[str]:
    """One line per variant: the `more`-part graph's median (and its median per-round ratio to
    the first variant), the estimates of one `part` (layer, block), the rest and the whole
    encoder (and its ratio), and the outputs' relative L2 distance from EXACT's; `unit` formats
    the times (e.g. "7.1f")."""
    exact = outputs[EXACT, more]
    lines = []
    for variant, (one, rest, encoder) in estimates.items():
        error = np.linalg.norm(outputs[variant, more] - exact) / np.linalg.norm(exact)
        lines.append(f"  {variant.name:42s} {statistics.median(samples[variant, more]):{unit}} "
                     f"({median_ratio(samples[variant, more], samples[variants[0], more]):4.2f}x)  "
                     f"{part} {one:{unit}}  rest {rest:{unit}}  encoder {encoder:{unit}} "
                     f"({encoder / estimates[variants[0]][2]:4.2f}x)  {error:.1e}")
    return lines


def measure_variants(export_variants, baseline: Path | None, baseline_file: str, feeds: dict, rounds: int,
                     threads: int | None, parts: tuple[int, int, int], scale: float) -> tuple:
    """Every variant's graphs of `parts` = (few, more, full-size) layers or blocks (and the
    --baseline folder's files, `baseline_file` formatted with the count), timed round by round:
    (variants, graphs, samples, outputs, estimates), samples being seconds times `scale`. The
    first variant is what the ratios are to."""
    few, more, full = parts
    variants = ([BASELINE] if baseline else []) + list(VARIANTS)
    graphs = {**export_variants(few), **export_variants(more)}
    if baseline:
        graphs.update({(BASELINE, n): Path(baseline) / baseline_file.format(n) for n in (few, more)})
    sessions = open_sessions(graphs, threads)
    samples = {key: [s * scale for s in values] for key, values in interleaved_seconds(sessions, feeds, rounds).items()}
    outputs = {key: session.run(None, feeds)[0] for key, session in sessions.items()}
    estimates = {variant: per_layer(samples[variant, few], samples[variant, more], few, more, full)
                 for variant in variants}
    return variants, graphs, samples, outputs, estimates


def export_variants(folder: Path, part: str, count: int, configure: Callable[[dict, int], None], build) -> dict:
    """A checkpoint whose `part` encoder `configure(config, count)` sizes (full width, `count`
    layers or blocks), then `<part><count>_<i>.onnx` per variant, built by
    `build(checkpoint, graph, precision, fused_attention=...)`; returns {(variant, count): path}."""
    from ..export.checkpoint import Checkpoint
    from ..export.graph_files import write_graph
    from ..export.reference_checkpoint import tiny_config, write_reference

    config = tiny_config()
    configure(config, count)
    checkpoint = Checkpoint(write_reference(folder / f"checkpoint{count}", config=config))
    graphs = {}
    for index, variant in enumerate(VARIANTS):
        name = f"{part}{count}_{index}.onnx"
        write_graph(folder, name, lambda graph: build(checkpoint, graph, variant.precision(),
                                                      fused_attention=variant.fused_attention))
        graphs[variant, count] = folder / name
    return graphs


def main(argv, description: str, part: str, unit: str, on_artifact: Callable, full_size: Callable) -> None:
    """An encoder benchmark's command line: ARTIFACT runs `on_artifact(model, folder)` (lines to
    print); --full-size-<unit> runs `full_size(folder, rounds, profile, threads, baseline)`."""
    from ..runtime import Phi4MMEdge

    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifact", nargs="?")
    parser.add_argument(f"--full-size-{unit}", dest="full_size", action="store_true")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, help="intra-op threads (default: one per physical core, as the runtime)")
    parser.add_argument("--baseline", type=Path, help=f"a folder with {part}1.onnx and {part}3.onnx built by another "
                                                      "version of the code for the same checkpoints: "
                                                      "timed too, and the ratios are to it")
    parser.add_argument("--profile", action="store_true", help=f"with --full-size-{unit}: profile the after variant")
    args = parser.parse_args(argv)
    if args.artifact:
        print("\n".join(on_artifact(Phi4MMEdge.load(args.artifact), args.artifact)))
    if args.full_size:
        with tempfile.TemporaryDirectory() as folder:
            print("\n".join(full_size(Path(folder), args.rounds, args.profile, args.threads, args.baseline)))

"""7-bit or 8-bit weights for the int8 prompt graph: the error of its int8 linear (export/
graph_blocks.row_scaled_int8_matmul) against the fp32 product, for one decoder layer's linear shapes.

    python -m phi4mm_edge.benchmarks.int8_weight_bits [--rows 512] [--hidden 3072] [--intermediate 8192] [--rounds 9]

Two columns per weight width:
- "exact int32": what a CPU whose integer dot products accumulate in 32 bits computes (AVX-VNNI,
  AVX-512 VNNI, AMX, ARM dotprod): uint8 activations rounded per row, int8 weights per
  output channel, every product summed exactly. Simulated in numpy (int64), so it is the same
  on every machine.
- "ONNX Runtime here": the real kernel on this machine. Without VNNI (AVX2 only) MLAS sums
  uint8 x int8 pairs in saturating int16 (vpmaddubsw), which 8-bit weights overflow.

Activations are Gaussian, and Gaussian with 1% of the channels 20x larger (the outlier
channels LLM activations are known for); weights are Gaussian. The speed should be the same for both
widths (the same bytes through the same kernel); only where they may run differs (runtime/cpu.py).
`--rounds N` checks it: each shape's ONNX Runtime linear at 7 and at 8 bits, timed alternately N
times after a warm-up, medians and the median of the per-round ratios.
"""

import argparse
import statistics

import numpy as np

from ..quant.int8 import ROW_LIMIT, ROW_ZERO_POINT, quantize_columns
from ..runtime.cpu import UNSATURATED_INT8_FEATURES, cpu_features
from .encoder_variants import interleaved_seconds, median_ratio
from .gemm_ceiling import int8_row_scaled_session


def activations(rows: int, width: int, rng, outliers: bool) -> np.ndarray:
    x = rng.standard_normal((rows, width)).astype(np.float32)
    if outliers:
        x[:, rng.choice(width, max(1, width // 100), replace=False)] *= 20
    return x


def exact_int32(x: np.ndarray, columns) -> np.ndarray:
    """The graph's arithmetic without saturation: each row of x divided by its peak |x| and
    rounded to uint8 at steps of 1/ROW_LIMIT around ROW_ZERO_POINT, products summed exactly."""
    peak = np.maximum(np.abs(x).max(axis=-1, keepdims=True), np.finfo(np.float32).tiny).astype(np.float32)
    q = np.clip(np.rint(x / peak * ROW_LIMIT) + ROW_ZERO_POINT, 0, 255).astype(np.int64)
    products = (q - ROW_ZERO_POINT) @ columns.weight_t.astype(np.int64)
    return products.astype(np.float64) / ROW_LIMIT * columns.scales * peak


def onnx_runtime(x: np.ndarray, columns) -> np.ndarray:
    """The export's own int8 linear, run by ONNX Runtime on this machine."""
    return int8_row_scaled_session(columns).run(None, {"x": x})[0]


def relative_error(ours: np.ndarray, reference: np.ndarray) -> float:
    return float(np.linalg.norm(ours - reference) / np.linalg.norm(reference))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--hidden", type=int, default=3072)
    parser.add_argument("--intermediate", type=int, default=8192)
    parser.add_argument("--rounds", type=int, default=0, help="also time 7 against 8 bits, interleaved, N rounds")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    features = cpu_features()
    unsaturated = [name for name in UNSATURATED_INT8_FEATURES if features.get(name)]
    print(f"this CPU's unsaturated int8 dot products: {unsaturated or 'none (ONNX Runtime saturates 8-bit weights here)'}")
    shapes = {"qkv / o_proj (K = hidden)": (args.hidden, args.hidden), "down_proj (K = intermediate)": (args.intermediate, args.hidden)}
    results = {}
    print(f"{'linear':30} {'activations':>20} {'bits':>4} {'exact int32':>12} {'ONNX Runtime here':>18}")
    for name, (k, n) in shapes.items():
        weight = (rng.standard_normal((n, k)) / np.sqrt(k)).astype(np.float32)
        for outliers in (False, True):
            x = activations(args.rows, k, rng, outliers)
            kind = "1% channels x20" if outliers else "Gaussian"
            reference = x.astype(np.float64) @ weight.T.astype(np.float64)
            for bits in (7, 8):
                columns = quantize_columns(weight, bits)
                row = {"exact_int32": relative_error(exact_int32(x, columns), reference),
                       "onnxruntime_here": relative_error(onnx_runtime(x, columns), reference)}
                results[f"{name}, {kind}, {bits} bits"] = row
                print(f"{name:30} {kind:>20} {bits:>4} {100 * row['exact_int32']:11.3f}% {100 * row['onnxruntime_here']:17.3f}%")
        if args.rounds:
            x = activations(args.rows, k, rng, False)
            samples = interleaved_seconds({bits: int8_row_scaled_session(quantize_columns(weight, bits)) for bits in (7, 8)},
                                          {"x": x}, args.rounds)
            ratio = median_ratio(samples[8], samples[7])
            results[f"{name}, seconds"] = {bits: statistics.median(times) for bits, times in samples.items()}
            print(f"{name:30} ONNX Runtime here, {args.rows} rows: 7 bits {1000 * statistics.median(samples[7]):.2f} ms, "
                  f"8 bits {1000 * statistics.median(samples[8]):.2f} ms, 8/7 {ratio:.3f} (median of {args.rounds} rounds)")
    return results


if __name__ == "__main__":
    main()

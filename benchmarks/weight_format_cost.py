"""What each candidate default weight format costs the decoder at full size, measured in one run:

    python -m phi4mm_edge.benchmarks.weight_format_cost [--repeats N] [--threads N] [--rows N ...]

A decoder run reads every decoder linear once (32 layers of int4 MatMulNBits at Phi-4-mini's
shapes) and the tied lm_head (the token table, [200064, 3072]) once, for the last position. For
each format (the linears' block size and accuracy level; the table's bits and block) this times
one layer's linears (x32) and the lm_head at 1 row of activations (a decode step) and at a
prompt chunk's rows, the formats interleaved round by round, and prints the medians and each
one's ratio to the first format's. Attention, norms and the KV cache are left out (the same for
every format), so a whole decoder run slows by less than these ratios say. The weights are
random: the kernels' time does not depend on their values.
"""

import argparse
import json
import statistics
import time

import numpy as np

from ..export.reference_checkpoint import full_size_config
from ..machine import cpu_description
from .gemm_ceiling import _session


def nbits_session(k: int, n: int, bits: int, block_size: int, accuracy_level: int, threads: int | None):
    """MatMulNBits over `x` [1, k] -> `y` [1, n] with random codes and scales of `bits`."""
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(n + k)
    blocks = -(-k // block_size)
    codes = rng.integers(0, 256, (n, blocks, block_size * bits // 8), dtype=np.uint8)
    scales = (rng.random((n, blocks), np.float32) * 1e-3).astype(np.float32)
    node = helper.make_node("MatMulNBits", ["x", "B", "S"], ["y"], domain="com.microsoft", K=k, N=n, bits=bits,
                            block_size=block_size, accuracy_level=accuracy_level)
    # Dozens of sessions take turns here (a decoder is one session: its threads spin only between
    # its own nodes), so no spinning.
    return _session(node, [numpy_helper.from_array(codes, "B"), numpy_helper.from_array(scales, "S")], k, n, threads,
                    spinning=False)


# name: (linears' block, accuracy level, table bits, table block). No 8-bit table at level 0: ONNX
# Runtime 1.32 takes seconds per lm_head run there on AVX2 (no fast kernel for it).
FORMATS = {
    "default: b32 lvl4, int4 table": (32, 4, 4, 32),
    "b32 lvl4, int8 table": (32, 4, 8, 32),
    "b64 lvl4, int8 table": (64, 4, 8, 64),
    "b32 lvl0, int4 table": (32, 0, 4, 32),
}


def measure(repeats: int, threads: int | None, rows: tuple[int, ...] = (1, 256)) -> dict:
    full = full_size_config()
    hidden, vocab, layers = full["hidden_size"], full["vocab_size"], full["num_hidden_layers"]
    heads, kv_heads, inner = full["num_attention_heads"], full["num_key_value_heads"], full["intermediate_size"]
    head_dim = hidden // heads
    shapes = {"qkv_proj": (hidden, (heads + 2 * kv_heads) * head_dim), "o_proj": (hidden, hidden),
              "gate_up_proj": (hidden, 2 * inner), "down_proj": (inner, hidden)}
    rng = np.random.default_rng(1)
    sessions = {}
    for name, (block, level, bits, table_block) in FORMATS.items():
        linears = {shape: nbits_session(k, n, 4, block, level, threads) for shape, (k, n) in shapes.items()}
        sessions[name] = (linears, nbits_session(hidden, vocab, bits, table_block, level, threads))

    def seconds(session, x):
        started = time.perf_counter()
        session.run(None, {"x": x})
        return time.perf_counter() - started

    order = list(FORMATS)
    result = {}
    for m in rows:
        inputs = {shape: rng.standard_normal((m, k)).astype(np.float32) for shape, (k, _) in shapes.items()}
        last = inputs["qkv_proj"][-1:]  # lm_head reads the last position only
        times = {name: {"linears": [], "lm_head": []} for name in FORMATS}
        for round_ in range(repeats + 1):  # round 0 warms up
            for name in order[round_ % len(order):] + order[:round_ % len(order)]:  # each first in turn
                linears, head = sessions[name]
                linear_time = sum(seconds(linears[shape], inputs[shape]) for shape in shapes) * layers  # 32 alike
                head_time = seconds(head, last)
                if round_:
                    times[name]["linears"].append(linear_time)
                    times[name]["lm_head"].append(head_time)
        for name in order:
            linears, head = (statistics.median(times[name][part]) for part in ("linears", "lm_head"))
            result.setdefault(name, {})[f"{m} rows"] = {
                "linears ms": round(linears * 1e3, 2), "lm_head ms": round(head * 1e3, 2),
                "run ms": round((linears + head) * 1e3, 2)}
        for name in order:
            entry = result[name][f"{m} rows"]
            entry["run / first"] = round(entry["run ms"] / result[order[0]][f"{m} rows"]["run ms"], 3)
    for name, (block, level, bits, table_block) in FORMATS.items():
        result[name]["weights GB"] = round((sum(k * n for k, n in shapes.values()) * layers * (4 + 32 / block)
                                            + vocab * hidden * (bits + 32 / table_block)) / 8 / 1e9, 3)
    return {"machine": cpu_description(), "repeats": repeats, "threads": threads, "formats": result}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m phi4mm_edge.benchmarks.weight_format_cost",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, help="ONNX Runtime threads (default: the machine's cores)")
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 256],
                        help="rows of activations: 1 is a decode step, more a prompt chunk")
    args = parser.parse_args(argv)
    result = measure(args.repeats, args.threads, tuple(args.rows))
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()

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


def rescored_head_session(k: int, n: int, block_size: int, accuracy_level: int, threads: int | None):
    """The tied lm_head of --token-table int4-rescored, built by export's own code (embedding.py):
    int4 MatMulNBits over `x` [1, k], then its top logits recomputed from table + residual rows."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from ..export.embedding import TokenTable, tied_lm_head
    from ..export.graph_blocks import Precision
    from ..export.onnx_graph import IR_VERSION, MS_DOMAIN, OPSET, Graph
    from ..export.options import RESCORE_TOP
    from ..quant import int4
    from ..runtime.providers import session_options

    rng = np.random.default_rng(n + k + 1)
    blocks = -(-k // block_size)

    def random_int4(name: str) -> tuple:
        weight = int4.Int4Weight(rng.integers(0, 256, (n, blocks, block_size // 2), dtype=np.uint8),
                                 (rng.random((n, blocks), np.float32) * 1e-3).astype(np.float32), None, (n, k),
                                 block_size)
        return weight, [numpy_helper.from_array(weight.packed, f"{name}.qweight"),
                        numpy_helper.from_array(weight.scales, f"{name}.scales")]

    (table, protos), (residual, residual_protos) = random_int4("embed_tokens"), random_int4("embed_tokens.residual")
    precision = Precision(block_size=block_size, accuracy_level=accuracy_level)
    token_table = TokenTable(precision, n, k, quantized=table, protos=protos, residual=residual,
                             residual_protos=residual_protos, rescore_top=RESCORE_TOP)
    graph = Graph("lm_head", None)
    graph.op("Identity", [tied_lm_head(token_table)(graph, "x")], outputs=["y"])
    model = helper.make_model(
        helper.make_graph(graph.nodes, "lm_head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, k])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, n])], graph.initializers),
        ir_version=IR_VERSION, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS_DOMAIN, 1)])
    options = session_options(threads)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def head_session(k: int, n: int, table: str, block_size: int, accuracy_level: int, threads: int | None):
    if table == "int4-rescored":
        return rescored_head_session(k, n, block_size, accuracy_level, threads)
    return nbits_session(k, n, 8 if table == "int8" else 4, block_size, accuracy_level, threads)


# name: (linears' block, accuracy level, table, table block). No 8-bit table at level 0: ONNX
# Runtime 1.32 takes seconds per lm_head run there on AVX2 (no fast kernel for it).
FORMATS = {
    "b32 lvl4, int4 table": (32, 4, "int4", 32),
    "b32 lvl4, int4 table rescored": (32, 4, "int4-rescored", 32),
    "b32 lvl4, int8 table": (32, 4, "int8", 32),
    "b64 lvl4, int8 table": (64, 4, "int8", 64),
    "b32 lvl0, int4 table": (32, 0, "int4", 32),
}
TABLE_BITS = {"int4": 4, "int4-rescored": 8, "int8": 8}  # stored bits a weight (rescored: 4 + the 4-bit residual)


def measure(repeats: int, threads: int | None, rows: tuple[int, ...] = (1, 256)) -> dict:
    full = full_size_config()
    hidden, vocab, layers = full["hidden_size"], full["vocab_size"], full["num_hidden_layers"]
    heads, kv_heads, inner = full["num_attention_heads"], full["num_key_value_heads"], full["intermediate_size"]
    head_dim = hidden // heads
    shapes = {"qkv_proj": (hidden, (heads + 2 * kv_heads) * head_dim), "o_proj": (hidden, hidden),
              "gate_up_proj": (hidden, 2 * inner), "down_proj": (inner, hidden)}
    rng = np.random.default_rng(1)
    sessions = {}
    for name, (block, level, table, table_block) in FORMATS.items():
        linears = {shape: nbits_session(k, n, 4, block, level, threads) for shape, (k, n) in shapes.items()}
        sessions[name] = (linears, head_session(hidden, vocab, table, table_block, level, threads))

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
    for name, (block, level, table, table_block) in FORMATS.items():
        scales = 32 / table_block * (2 if table == "int4-rescored" else 1)  # fp32 scales: the residual has its own
        result[name]["weights GB"] = round((sum(k * n for k, n in shapes.values()) * layers * (4 + 32 / block)
                                            + vocab * hidden * (TABLE_BITS[table] + scales)) / 8 / 1e9, 3)
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

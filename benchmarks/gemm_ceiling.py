"""The machine's compute ceiling for prefill, measured by ONNX Runtime itself: GFLOPS of each GEMM
kernel a prompt can run on, at the decoder's own shapes and a prompt-sized M.

Kernels: MatMulNBits (int4, the artifact's block size and accuracy level: what decode uses),
fp32 MatMul (MLAS SGEMM, prepacked), DynamicQuantizeMatMul (MLAS's uint8 x int8 GEMM, activations
rounded per tensor) and the int8 prompt graph's own linear (the same GEMM, activations rounded per
row: export/graph_blocks.row_scaled_int8_matmul; the two side by side are the price of row scales).
The weights are random; the throughput does not depend on their values.
"""

import numpy as np

from ..manifest import StoredPrecision, TextConfig
from ..quant import int4, int8
from .timing import timed

SHAPES = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")


def decoder_shapes(text: TextConfig) -> dict:
    """(K, N) of each linear of one decoder layer, from the manifest's model dimensions."""
    hidden, inner = text.hidden_size, text.intermediate_size
    qkv = (text.num_heads + 2 * text.num_kv_heads) * text.head_dim
    return {"qkv_proj": (hidden, qkv), "o_proj": (text.num_heads * text.head_dim, hidden),
            "gate_up_proj": (hidden, 2 * inner), "down_proj": (inner, hidden)}


def _session(node, initializers, k: int, n: int, threads: int | None, spinning: bool = True):
    """One node over `x` [rows, k] -> `y` [rows, n]. `spinning=False` when many such sessions take
    turns: a finished one's threads must not spin on the cores the next one runs on."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph([node], "gemm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, n])], initializers)
    model = helper.make_model(graph,
                              opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)],
                              ir_version=10)
    from ..runtime.providers import session_options

    options = session_options(threads)
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def kernels(k: int, n: int, block_size: int, accuracy_level: int, threads: int | None) -> dict:
    from onnx import helper, numpy_helper

    weight = (np.random.default_rng(0).standard_normal((n, k)) * 0.02).astype(np.float32)
    q4 = int4.quantize(weight, block_size)
    q8 = int8.quantize_columns(weight)
    return {
        "int4 MatMulNBits": _session(
            helper.make_node("MatMulNBits", ["x", "B", "S"], ["y"], domain="com.microsoft", K=k, N=n, bits=4,
                             block_size=block_size, accuracy_level=accuracy_level),
            [numpy_helper.from_array(q4.packed, "B"), numpy_helper.from_array(q4.scales, "S")], k, n, threads),
        "fp32 MatMul": _session(helper.make_node("MatMul", ["x", "W"], ["y"]),
                                [numpy_helper.from_array(np.ascontiguousarray(weight.T), "W")], k, n, threads),
        "int8 DynamicQuantizeMatMul": _session(
            helper.make_node("DynamicQuantizeMatMul", ["x", "W", "S"], ["y"], domain="com.microsoft"),
            [numpy_helper.from_array(q8.weight_t, "W"), numpy_helper.from_array(q8.scales, "S")], k, n, threads),
        "int8 row-scaled (prompt graph)": int8_row_scaled_session(q8, threads),
    }


def int8_row_scaled_session(columns: int8.Int8Columns, threads: int | None = None):
    """The int8 prompt graph's linear, built by export's own block, over `x` [rows, K] -> `y`."""
    from ..export.graph_blocks import row_scaled_int8_matmul

    def build(graph, x):
        weights = [graph.weight("proj.int8", columns.weight_t), graph.weight("proj.int8_scales", columns.scales)]
        return row_scaled_int8_matmul(graph, x, weights, None, "proj")

    return built_session(build, *columns.weight_t.shape, threads)


def built_session(build, k: int, n: int, threads: int | None = None):
    """A session over a graph made by export's Graph: `build(graph, x)` returns `y` for the input
    `x` [rows, k]; `y` is [rows, n]. Its weights go through a temporary folder, as export writes them."""
    import tempfile
    from pathlib import Path

    import onnxruntime as ort
    from onnx import TensorProto

    from ..export.onnx_graph import ExternalData, Graph
    from ..runtime.providers import session_options

    with tempfile.TemporaryDirectory() as folder:
        data = ExternalData(Path(folder) / "linear.data")
        graph = Graph("linear", data)
        graph.op("Identity", [build(graph, graph.input("x", TensorProto.FLOAT, ["rows", k]))], outputs=["y"])
        graph.output("y", TensorProto.FLOAT, ["rows", n])
        graph.save(Path(folder) / "linear.onnx")
        data.close()
        return ort.InferenceSession(str(Path(folder) / "linear.onnx"), session_options(threads),
                                    providers=["CPUExecutionProvider"])


def gemm_ceiling(text: TextConfig, precision: StoredPrecision, rows: int = 512, repeats: int = 3,
                 threads: int | None = None) -> dict:
    """{kernel: {shape: GFLOPS median}, kernel + ' (all shapes)': GFLOPS over the layer's FLOPs}."""
    x_rng = np.random.default_rng(1)
    out = {}
    for shape, (k, n) in decoder_shapes(text).items():
        x = x_rng.standard_normal((rows, k)).astype(np.float32)
        for kernel, session in kernels(k, n, precision.block_size, precision.accuracy_level, threads).items():
            seconds = float(np.median(timed(lambda: session.run(None, {"x": x}), repeats)))
            out.setdefault(kernel, {})[shape] = {"seconds": seconds, "gflops": 2 * rows * k * n / seconds / 1e9}
    layer_flops = sum(2 * rows * k * n for k, n in decoder_shapes(text).values())
    return {"rows": rows, "kernels": {kernel: {"per_shape": shapes, "layer_gflops": layer_flops / sum(
        s["seconds"] for s in shapes.values()) / 1e9} for kernel, shapes in out.items()}}

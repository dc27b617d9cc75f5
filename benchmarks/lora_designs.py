"""How to run the modality LoRAs at the base model's cost: the candidate designs, measured on
decoder-shaped linears of the real width (one token per step, as decode runs).

    python -m phi4mm_edge.benchmarks.lora_designs [--layers 4] [--repeats 20]

Each design computes, per LoRA target of a layer (qkv_proj, o_proj, gate_up_proj, down_proj),
y = base(x) + lora(x), with an int4 base (MatMulNBits) of Phi-4-mini's shapes and a rank-320 LoRA
(the speech adapter's, the larger one):
- inputs-fp32: A, B as fp32 graph inputs (how the runtime bound them before this work);
- none: the same graph with rank-0 inputs (what "no adapter" costs there);
- if-int4: an If per target choosing between a constant int4 LoRA (MatMulNBits, prepacked once) and
  the rank-0 input branch; the active adapter is a bool input;
- if-int8: the same with 8-bit MatMulNBits LoRA constants;
- base: no LoRA at all (the floor).
Weights are random: speed does not depend on their values.
"""

import argparse
import statistics
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from ..quant import int4

HIDDEN, INTER, QKV = 3072, 8192, 5120
TARGETS = {"qkv_proj": (HIDDEN, QKV), "o_proj": (HIDDEN, HIDDEN), "gate_up_proj": (HIDDEN, 2 * INTER), "down_proj": (INTER, HIDDEN)}
RANK = 320
BLOCK = 32


def nbits(name: str, k: int, n: int, bits: int, rng) -> tuple[list, dict]:
    """Initializers and attributes of a MatMulNBits weight [K, N] at `bits`."""
    weight = rng.standard_normal((n, k), dtype=np.float32) / np.sqrt(k)
    if bits == 4:
        q = int4.quantize(weight, BLOCK)
        packed, scales = q.packed, q.scales
    else:
        blocks = weight.reshape(n, k // BLOCK, BLOCK)
        scales = np.abs(blocks).max(axis=2) / 127
        packed = (np.round(blocks / scales[..., None]) + 128).astype(np.uint8)
    inits = [numpy_helper.from_array(packed, f"{name}.q"), numpy_helper.from_array(scales.astype(np.float32), f"{name}.s")]
    return inits, dict(K=k, N=n, bits=bits, block_size=BLOCK, accuracy_level=4)


def build(design: str, layers: int, rng) -> tuple[bytes, list]:
    """The model bytes and its extra input names for one design. Every target reads one of two
    inputs (the hidden and the MLP width) and is a graph output: nothing but the linears runs."""
    nodes, inits, outputs = [], [], []
    inputs = [helper.make_tensor_value_info(f"x{width}", TensorProto.FLOAT, [1, 1, width]) for width in (HIDDEN, INTER)]
    if design.startswith("if"):
        inputs.append(helper.make_tensor_value_info("use_lora", TensorProto.BOOL, []))
    for layer in range(layers):
        for target, (k, n) in TARGETS.items():
            name, source = f"l{layer}.{target}", f"x{k}"
            base_inits, attrs = nbits(f"{name}.base", k, n, 4, rng)
            inits += base_inits
            nodes.append(helper.make_node("MatMulNBits", [source, base_inits[0].name, base_inits[1].name], [f"{name}.base_out"],
                                          domain="com.microsoft", **attrs))
            out = f"{name}.base_out"
            if design in ("inputs-fp32", "none"):
                inputs += [helper.make_tensor_value_info(f"{name}.A", TensorProto.FLOAT, [k, "r"]),
                           helper.make_tensor_value_info(f"{name}.B", TensorProto.FLOAT, ["r", n])]
                nodes += [helper.make_node("MatMul", [source, f"{name}.A"], [f"{name}.xa"]),
                          helper.make_node("MatMul", [f"{name}.xa", f"{name}.B"], [f"{name}.lora"]),
                          helper.make_node("Add", [out, f"{name}.lora"], [f"{name}.y"])]
                out = f"{name}.y"
            elif design.startswith("if"):
                bits = 4 if design == "if-int4" else 8
                a_inits, a_attrs = nbits(f"{name}.A", k, RANK, bits, rng)
                b_inits, b_attrs = nbits(f"{name}.B", RANK, n, bits, rng)
                then_graph = helper.make_graph(
                    [helper.make_node("MatMulNBits", [source, a_inits[0].name, a_inits[1].name], [f"{name}.xa"], domain="com.microsoft", **a_attrs),
                     helper.make_node("MatMulNBits", [f"{name}.xa", b_inits[0].name, b_inits[1].name], [f"{name}.then"], domain="com.microsoft", **b_attrs)],
                    f"{name}.then_graph", [], [helper.make_tensor_value_info(f"{name}.then", TensorProto.FLOAT, None)], a_inits + b_inits)
                else_graph = helper.make_graph(
                    [helper.make_node("Identity", [f"{name}.zero"], [f"{name}.else"])],
                    f"{name}.else_graph", [], [helper.make_tensor_value_info(f"{name}.else", TensorProto.FLOAT, None)])
                inits.append(numpy_helper.from_array(np.zeros((1, 1, n), np.float32), f"{name}.zero"))
                nodes += [helper.make_node("If", ["use_lora"], [f"{name}.lora"], then_branch=then_graph, else_branch=else_graph),
                          helper.make_node("Add", [out, f"{name}.lora"], [f"{name}.y"])]
                out = f"{name}.y"
            outputs.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, design, inputs, outputs, inits)
    model = helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])
    return model.SerializeToString(), [i.name for i in inputs]


def feeds(design: str, names: list, rng) -> dict:
    out = {f"x{width}": rng.standard_normal((1, 1, width), dtype=np.float32) for width in (HIDDEN, INTER)}
    for name in names:
        if name.endswith(".A") or name.endswith(".B"):
            target = name.split(".")[1]
            k, n = TARGETS[target]
            rank = RANK if design == "inputs-fp32" else 0
            shape = (k, rank) if name.endswith(".A") else (rank, n)
            out[name] = (rng.standard_normal(shape, dtype=np.float32) * 0.01)
    if design.startswith("if"):
        out["use_lora"] = np.array(True)
    return out


def measure(design: str, layers: int, repeats: int) -> dict:
    rng = np.random.default_rng(0)
    model, names = build(design, layers, rng)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    started = time.perf_counter()
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    load_s = time.perf_counter() - started
    inputs = feeds(design, names, rng)
    session.run(None, inputs)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        session.run(None, inputs)
        times.append(time.perf_counter() - started)
    result = {"ms_per_step": statistics.median(times) * 1000, "load_s": load_s}
    if design.startswith("if"):
        inputs["use_lora"] = np.array(False)
        session.run(None, inputs)
        off = []
        for _ in range(repeats):
            started = time.perf_counter()
            session.run(None, inputs)
            off.append(time.perf_counter() - started)
        result["ms_per_step_inactive"] = statistics.median(off) * 1000
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--designs", default="base,none,inputs-fp32,if-int4,if-int8")
    args = parser.parse_args(argv)
    results = {}
    for design in args.designs.split(","):
        results[design] = measure(design, args.layers, args.repeats)
        print(design, {k: round(v, 2) for k, v in results[design].items()}, flush=True)
    base = results.get("base", {}).get("ms_per_step")
    if base:
        for design, r in results.items():
            print(f"{design:12} {r['ms_per_step'] / base:5.2f}x the base step"
                  + (f", inactive {r['ms_per_step_inactive'] / base:5.2f}x" if "ms_per_step_inactive" in r else ""))


if __name__ == "__main__":
    main()

"""The exported decoder computes what transformers' Phi4MultimodalForCausalLM + PEFT computes."""

import numpy as np
import pytest

from phi4mm_edge.runtime import Phi4MMEdge
from conftest import prompt_ids
from reference_steps import max_relative_error, paired_logits, relative_l2, runtime_logits

ADAPTERS = ("none", "vision", "speech")
# fp32 export vs fp32 reference: the same math in a different order (fused attention, MLAS GEMMs).
# Rounding differences are ~1e-6 of the logit scale; 1e-4 is the bound and leaves 10x room.
FP32_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def fp32_models(artifacts):
    return {layout: Phi4MMEdge.load(artifacts[f"fp32-{layout}"]) for layout in ("native", "original")}


@pytest.mark.parametrize("layout", ["native", "original"])
@pytest.mark.parametrize("adapter", ADAPTERS)
def test_fp32_prefill_and_decode_match_reference(fp32_models, reference, layout, adapter):
    prefill, ref_prefill, decode, ref_decode = paired_logits(fp32_models[layout], reference, adapter, prompt_ids(20))
    assert max_relative_error(prefill, ref_prefill) <= FP32_TOLERANCE
    for step, (ours, theirs) in enumerate(zip(decode, ref_decode)):
        assert max_relative_error(ours, theirs) <= FP32_TOLERANCE, f"decode step {step}"


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_prompt_past_longrope_switch_matches_reference(fp32_models, reference, adapter):
    model = fp32_models["native"]
    switch = model.text.original_max_position_embeddings
    ids = prompt_ids(switch + 37, seed=2)  # every position uses the long factors
    prefill, ref_prefill, decode, ref_decode = paired_logits(model, reference, adapter, ids)
    assert max_relative_error(prefill, ref_prefill) <= FP32_TOLERANCE
    assert max(max_relative_error(a, b) for a, b in zip(decode, ref_decode)) <= FP32_TOLERANCE


def test_adapters_change_the_output(fp32_models):
    """Each adapter visibly moves the logits (a swap that silently did nothing would pass parity
    tests only if the reference also ignored it, so check the effect directly)."""
    model, ids = fp32_models["native"], prompt_ids(12)
    logits = {}
    for adapter in ADAPTERS:
        model.decoder.activate(adapter)
        logits[adapter] = model.decoder.prefill(model.decoder.embed(ids))[0]
    for adapter in ("vision", "speech"):
        assert max_relative_error(logits[adapter], logits["none"]) > 0.05
    assert max_relative_error(logits["vision"], logits["speech"]) > 0.05


def test_generation_across_the_switch_matches_cache_free_reference(fp32_models, reference):
    """Decoding from below original_max_position_embeddings to above it. The model's output there
    is defined by running the whole sequence with the long factors; we recompute the cache at the
    crossing. The oracle is the reference run without any cache at every step: transformers
    5.23's generate() drops its cache at the crossing but then feeds only the newest token, so it
    is not a valid oracle here (see the README)."""
    import torch

    model = fp32_models["native"]
    switch = model.text.original_max_position_embeddings
    ids = model.prompt_ids("x " * switch)[: switch - 4]
    steps = 10
    generation = model.generate_from_ids(ids, max_new_tokens=steps, adapter="none")
    generation.text()
    sequence = list(ids)
    with torch.no_grad(), reference.disable_adapter():
        for _ in range(steps):
            sequence.append(int(reference(input_ids=torch.tensor([sequence])).logits[0, -1].argmax()))
    assert generation.result.token_ids == sequence[len(ids):]
    assert len(sequence) > switch + 1


# int4, accuracy level 0 (fp32 activations): the artifact must compute exactly the reference
# whose base weights were replaced by their dequantized int4 values; only summation order
# differs, so the fp32 bound applies.
@pytest.mark.parametrize("adapter", ADAPTERS)
def test_int4_weights_are_exactly_the_dequantized_reference(artifacts, int4_reference, adapter):
    model = Phi4MMEdge.load(artifacts["int4-exact"])
    prefill, ref_prefill, decode, ref_decode = paired_logits(model, int4_reference, adapter, prompt_ids(20))
    assert max_relative_error(prefill, ref_prefill) <= FP32_TOLERANCE
    assert max(max_relative_error(a, b) for a, b in zip(decode, ref_decode)) <= FP32_TOLERANCE


# The same holds for adapters built into the graph as int4 constants: at level 0 the artifact
# computes the reference whose LoRA A and B are their dequantized int4 values.
@pytest.mark.parametrize("adapter", ADAPTERS)
def test_int4_adapters_are_exactly_the_dequantized_lora(artifacts, int4_lora_reference, adapter):
    model = Phi4MMEdge.load(artifacts["int4-exact-lora"])
    prefill, ref_prefill, decode, ref_decode = paired_logits(model, int4_lora_reference, adapter, prompt_ids(20))
    assert max_relative_error(prefill, ref_prefill) <= FP32_TOLERANCE
    assert max(max_relative_error(a, b) for a, b in zip(decode, ref_decode)) <= FP32_TOLERANCE


# What storing the adapters at int4 or int8 costs, against fp32 adapters on the same int4 base
# (all at level 0: only weight rounding differs), as the relative L2 error of the logits over a
# 40-token prompt and 8 decode steps. The yardstick is what int4 storage already costs the base:
# the same int4 base, its token table plain int4 too (not rescored), against the fp32 model, with
# fp32 adapters. The tiny model's random weights
# have no structure, so 4-bit rounding moves their logits a lot (measured median ~43%), and its
# random LoRA (B ~ N(0, 1/r), scale 2) changes the logits by more than their own size, far beyond
# a trained adapter's share; a real checkpoint's errors are smaller on both sides. Measured: int4
# adapters 36-40% (below the base's own 39-45%: fewer weights, the same rounding); int8 adapters
# 2.2-2.6% (8-bit blocks round ~16x finer). Bounds: int4 adapters at most 1.2x the base's
# rounding error, int8 adapters at most 0.15x; a wrong scale, transpose or adapter gives ~100%.
INT4_ADAPTERS_VS_BASE = 1.2
INT8_ADAPTERS_VS_BASE = 0.15


def median_logits_error(model, reference_model, adapter) -> float:
    ids = prompt_ids(40, seed=7)
    tokens = np.random.default_rng(3).integers(0, 199_000, 8).tolist()
    ours, theirs = runtime_logits(model, adapter, ids, tokens), runtime_logits(reference_model, adapter, ids, tokens)
    return float(np.median([relative_l2(a, b) for a, b in zip([*ours[0], *ours[1]], [*theirs[0], *theirs[1]])]))


@pytest.mark.parametrize("adapter", ["vision", "speech"])
def test_quantized_adapters_cost_no_more_than_the_int4_base_does(artifacts, adapter):
    fp32_adapters = Phi4MMEdge.load(artifacts["int4-exact"])
    base_error = median_logits_error(Phi4MMEdge.load(artifacts["int4-exact-table4"]),
                                     Phi4MMEdge.load(artifacts["fp32-native"]), adapter)
    int4_error = median_logits_error(Phi4MMEdge.load(artifacts["int4-exact-lora"]), fp32_adapters, adapter)
    int8_error = median_logits_error(Phi4MMEdge.load(artifacts["int4-exact-lora8"]), fp32_adapters, adapter)
    print(f"{adapter}: int4 base {base_error:.4f}, int4 adapters {int4_error:.4f}, int8 adapters {int8_error:.4f}")
    assert int4_error <= INT4_ADAPTERS_VS_BASE * base_error
    assert int8_error <= INT8_ADAPTERS_VS_BASE * base_error


# int4 as shipped (accuracy level 4): MatMulNBits also rounds each 32-wide activation block to
# int8, which costs ~0.55% relative error per matmul (test_quant measures it). The logits pass
# through 11 such matmuls in the tiny model (5 per layer x 2, plus lm_head); independent errors
# add in quadrature to ~1.8%. With an adapter, its two int4 matmuls per target round their
# activations too (16 more in the tiny model, whose random LoRA outweighs the base). Measured
# over 12 prompt/adapter runs of 128 logits vectors each: median 2.1% (none) to 3.7% (with an
# adapter), 95th percentile up to 6.6%. We bound the median by 4.5% and the 95th percentile by
# 8%; a packing, scale or adapter bug gives errors of order 100% on every vector, and the
# level-0 tests above pin the weights themselves to 1e-4.
INT4_MEDIAN_TOLERANCE = 0.045
INT4_P95_TOLERANCE = 0.08


# A 100-token prompt; chunks of 64 put a chunk boundary inside it (at 65: the tiny model's LongRoPE
# switch is at 64, and no chunk may end below it when the prompt goes past it).
@pytest.mark.parametrize("chunk", [None, 64])
@pytest.mark.parametrize("adapter", ADAPTERS)
def test_int4_as_shipped_stays_close_to_the_dequantized_reference(artifacts, int4_lora_reference, adapter, chunk):
    model = Phi4MMEdge.load(artifacts["int4"], prefill="int4", prefill_chunk=chunk)
    prefill, ref_prefill, decode, ref_decode = paired_logits(model, int4_lora_reference, adapter, prompt_ids(100))
    errors = [relative_l2(prefill[i], ref_prefill[i]) for i in range(len(prefill))]
    errors += [relative_l2(ours, theirs) for ours, theirs in zip(decode, ref_decode)]
    assert np.median(errors) <= INT4_MEDIAN_TOLERANCE
    assert np.percentile(errors, 95) <= INT4_P95_TOLERANCE


# The int8 prompt graph (7-bit per-channel weights from the checkpoint, uint8 activations per
# row) approximates the float model, not the int4 one. Its prompt logits must be at least as
# faithful to the float reference as the int4 path's, and its decode steps (int4 weights over the
# int8-made cache) no further from it than the int4 path's own decode steps, with 20% slack for the
# different roundings: a wrong scale, transpose or layer would be off by order 100%, far beyond.
# Chunks of 64 run the first 65 positions through the int8 prompt graph and the other 35 through the
# decode graph (runs shorter than INT8_MIN_POSITIONS take the int4 kernels).
@pytest.mark.parametrize("chunk", [None, 64])
@pytest.mark.parametrize("adapter", ADAPTERS)
def test_int8_prefill_is_as_faithful_to_the_float_reference_as_int4(artifacts, reference, adapter, chunk):
    errors = {}
    for path in ("int4", "int8"):
        model = Phi4MMEdge.load(artifacts["int4"], prefill=path, prefill_chunk=chunk if path == "int8" else None)
        assert model.decoder.prefill_precision == path
        prefill, ref_prefill, decode, ref_decode = paired_logits(model, reference, adapter, prompt_ids(100))
        errors[path] = (np.median([relative_l2(p, r) for p, r in zip(prefill, ref_prefill)]),
                        np.median([relative_l2(d, r) for d, r in zip(decode, ref_decode)]))
    assert errors["int8"][0] <= errors["int4"][0], errors
    assert errors["int8"][1] <= 1.2 * errors["int4"][1], errors


# The int8 prompt graph rounds each activation row on its own fixed grid (export/graph_blocks.
# row_scaled_int8_matmul), so a position's result depends on its own row and the cache only: a
# 200-token prompt run as two runs of 100 (both through the int8 graph, each >= INT8_MIN_POSITIONS)
# gives the same logits bit for bit as one run of 200. With the grid taken per run (ONNX Runtime's
# DynamicQuantizeMatMul) the two differ in every logit.
@pytest.mark.parametrize("adapter", ADAPTERS)
def test_int8_prompt_logits_do_not_depend_on_how_the_prompt_is_split_into_runs(artifacts, adapter):
    ids = prompt_ids(200)
    logits = {}
    for chunk in (None, 100):
        model = Phi4MMEdge.load(artifacts["int4"], prefill="int8", prefill_chunk=chunk)
        model.decoder.activate(adapter)
        logits[chunk] = model.decoder.prefill(model.decoder.embed(ids), 0)[0]
    np.testing.assert_array_equal(logits[100], logits[None])



# The built-in adapters' LoRA products in the int8 prompt graph run on its int8 GEMM, from int8
# copies of the checkpoint's A and B (export/graph_adapters.py, `<name>.lora_prompt.data`, read by
# that graph only). What the adapter adds to the prompt's logits (adapter minus none) must be as
# faithful to the reference's as through the int4 kernels, with 20% slack for the different
# roundings (measured: int8 35-37%, int4 51-57%: on the tiny random model an adapter's term is small
# next to the base's rounding). A missing LoRA term would be off by exactly 100% and a wrong scale,
# transpose or adapter by order 100%, hence the 75% bound.
def test_the_int8_prompt_graph_runs_the_adapters_on_int8_copies_as_faithfully_as_int4(artifacts, reference):
    import onnx

    from phi4mm_edge.export.onnx_graph import every_graph
    from phi4mm_edge.manifest import read_manifest

    folder = artifacts["int4"]
    manifest = read_manifest(folder)
    assert {"vision.lora_prompt.data", "speech.lora_prompt.data"} <= set(manifest.graph_data["decoder_prefill.onnx"])
    assert not any(name.endswith(".lora_prompt.data") for name in manifest.graph_data["decoder.onnx"])
    graph = onnx.load(folder / "decoder_prefill.onnx", load_external_data=False).graph
    lora_kernels = {node.op_type for subgraph in every_graph(graph) for node in subgraph.node
                    if ".lora." in node.name and node.op_type in ("MatMulIntegerToFloat", "MatMulNBits")}
    assert lora_kernels == {"MatMulIntegerToFloat"}
    ids = prompt_ids(100)
    errors = {}
    for path in ("int4", "int8"):
        model = Phi4MMEdge.load(folder, prefill=path)
        none, ref_none, _, _ = paired_logits(model, reference, "none", ids, steps=1)
        for adapter in ("vision", "speech"):
            ours, ref, _, _ = paired_logits(model, reference, adapter, ids, steps=1)
            errors[path, adapter] = float(np.median([relative_l2(o - n, r - rn)
                                                     for o, n, r, rn in zip(ours, none, ref, ref_none)]))
    for adapter in ("vision", "speech"):
        assert errors["int8", adapter] <= 1.2 * errors["int4", adapter], errors
    assert max(errors["int8", adapter] for adapter in ("vision", "speech")) < 0.75, errors

"""The runtime: greedy ids equal the reference's, adapter swaps are exact, bad input is refused."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from phi4mm_edge import Phi4MMError
from phi4mm_edge.runtime import Phi4MMEdge
from conftest import prompt_ids
from reference_steps import reference_adapter

PROMPT = "Tell me a short story about a robot who learns to listen."


def phi4mm_edge(*args, check=True):
    """Run the installed console command; returns the completed process."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "phi4mm_edge.cli", *map(str, args)], capture_output=True,
                          text=True, env=env, check=check, timeout=300)


def reference_greedy(reference, adapter, ids, count, eos_ids):
    import torch

    with torch.no_grad(), reference_adapter(reference, adapter):
        out = reference.generate(torch.tensor([ids]), max_new_tokens=count, do_sample=False,
                                 eos_token_id=sorted(eos_ids), pad_token_id=199999)
    return out[0, len(ids):].tolist()


@pytest.mark.parametrize("adapter", ["none", "vision", "speech"])
def test_run_json_greedy_ids_equal_the_reference(artifacts, reference, adapter):
    result = json.loads(phi4mm_edge("run", artifacts["fp32-native"], "--prompt", PROMPT, "--max-new-tokens", 32,
                                    "--adapter", adapter, "--json").stdout)
    model = Phi4MMEdge.load(artifacts["fp32-native"])
    ids = model.prompt_ids(PROMPT)
    assert len(ids) + 32 < model.text.original_max_position_embeddings  # stays on one side of the switch
    assert result["token_ids"] == reference_greedy(reference, adapter, ids, 32, model.stop_ids)
    assert result["adapter"] == adapter and result["prompt_tokens"] == len(ids)
    assert set(result["timings"]) == {"load_ms", "ttft_ms", "decode_tokens_per_s"}
    assert result["text"] == model.tokenizer.decode(result["token_ids"])


def test_prompt_ids_equal_transformers_chat_template(artifacts, checkpoints):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoints["native"])
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROMPT}]
    expected = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    expected = expected["input_ids"] if isinstance(expected, dict) or hasattr(expected, "keys") else expected
    model = Phi4MMEdge.load(artifacts["int4"])
    assert model.prompt_ids(messages) == list(expected)
    assert model.tokenizer.render(messages) == "<|system|>Be brief.<|end|><|user|>" + PROMPT + "<|end|><|assistant|>"


def _answer(model, adapter):
    """Prefill logits and greedy ids of one request."""
    ids = prompt_ids(16, seed=5)
    model.decoder.activate(adapter)
    logits = model.decoder.prefill(model.decoder.embed(ids))[0]
    generation = model.generate_from_ids(ids[0].tolist(), max_new_tokens=12, adapter=adapter)
    generation.text()
    return logits, generation.result.token_ids


def test_swapping_adapters_gives_exactly_what_fresh_loads_give(artifacts):
    fresh = {adapter: _answer(Phi4MMEdge.load(artifacts["int4"]), adapter) for adapter in ("none", "speech", "vision")}
    model = Phi4MMEdge.load(artifacts["int4"])
    for adapter in ("none", "speech", "vision", "none"):
        logits, ids = _answer(model, adapter)
        np.testing.assert_array_equal(logits, fresh[adapter][0])
        assert ids == fresh[adapter][1]


def test_streamed_pieces_add_up_to_the_answer(artifacts):
    model = Phi4MMEdge.load(artifacts["int4"])
    generation = model.generate(PROMPT, max_new_tokens=20)
    pieces = list(generation)
    assert len(pieces) > 1 and "".join(pieces) == generation.result.text


def test_sampling_is_seeded_and_top_k_1_is_greedy(artifacts):
    model = Phi4MMEdge.load(artifacts["int4"])

    def ids(**options):
        generation = model.generate(PROMPT, max_new_tokens=16, **options)
        generation.text()
        return generation.result.token_ids

    sampled = ids(temperature=1.0, top_p=0.9, seed=3)
    assert sampled == ids(temperature=1.0, top_p=0.9, seed=3)
    assert sampled != ids(temperature=1.0, top_p=0.9, seed=4)
    assert ids(temperature=0.7, top_k=1, seed=9) == ids()


def test_auto_routes_text_to_no_adapter(artifacts):
    model = Phi4MMEdge.load(artifacts["int4"])
    generation = model.generate(PROMPT, max_new_tokens=2)
    generation.text()
    assert generation.result.adapter == "none"


def test_runtime_needs_no_torch_transformers_or_export(artifacts):
    code = (
        "import sys\n"
        "from phi4mm_edge.runtime import Phi4MMEdge\n"
        f"m = Phi4MMEdge.load({str(artifacts['int4'])!r})\n"
        "m.generate('hi', max_new_tokens=3, adapter='speech').text()\n"
        "bad = [n for n in sys.modules if n.split('.')[0] in ('torch', 'transformers', 'peft', 'onnx')"
        " or n.startswith('phi4mm_edge.export')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# -- bad input -----------------------------------------------------------------------------------
@pytest.fixture()
def artifact_copy(artifacts, tmp_path):
    target = tmp_path / "artifact"
    shutil.copytree(artifacts["int4"], target)
    return target


def test_modified_artifact_is_refused(artifact_copy):
    Phi4MMEdge.load(artifact_copy)  # a first load records the verified state
    data = artifact_copy / "decoder.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    with pytest.raises(Phi4MMError, match="no longer matches the sha256"):
        Phi4MMEdge.load(artifact_copy)


def test_missing_or_truncated_artifact_files_are_refused(artifact_copy, tmp_path):
    with pytest.raises(Phi4MMError, match="does not exist"):
        Phi4MMEdge.load(tmp_path / "nowhere")
    (artifact_copy / "speech.lora.data").write_bytes(b"")
    with pytest.raises(Phi4MMError, match="truncated or was replaced"):
        Phi4MMEdge.load(artifact_copy)
    (artifact_copy / "decoder.onnx").unlink()
    with pytest.raises(Phi4MMError, match="missing"):
        Phi4MMEdge.load(artifact_copy)


def test_adapter_file_from_another_model_is_refused(artifacts, tmp_path):
    import onnxruntime as ort

    from phi4mm_edge.export.convert import export
    from phi4mm_edge.export.options import ExportOptions
    from phi4mm_edge.export.reference_checkpoint import tiny_config, write_reference

    config = tiny_config()
    config["intermediate_size"] = 256  # same names, other shapes
    other = export(write_reference(tmp_path / "ckpt", config=config), tmp_path / "other",
                   ExportOptions(adapter_precision="fp32"), show_progress=False)
    assert other.adapters
    model = Phi4MMEdge.load(artifacts["int4"])
    with pytest.raises(Phi4MMError, match="the adapter is from another model"):
        model.load_adapter("custom", tmp_path / "other" / "speech.onnx_adapter")
    # Same shapes, wrong names: e.g. an adapter exported for another graph.
    parameters = ort.AdapterFormat.read_adapter(str(artifacts["int4-exact"] / "speech.onnx_adapter")).get_parameters()
    renamed = ort.AdapterFormat()
    renamed.set_parameters({name.replace("lora.", "lora_"): value for name, value in parameters.items()})
    renamed.export_adapter(str(tmp_path / "renamed.onnx_adapter"))
    with pytest.raises(Phi4MMError, match="does not belong to this model"):
        model.load_adapter("custom", tmp_path / "renamed.onnx_adapter")
    with pytest.raises(Phi4MMError, match="cannot read adapter file"):
        model.load_adapter("custom", tmp_path / "nowhere.onnx_adapter")


def test_custom_adapter_file_is_usable(artifacts):
    # A user's adapter file runs through the decoder's fp32 LoRA inputs: on an artifact whose own
    # adapters are fp32 files it computes exactly what the built-in one does.
    model = Phi4MMEdge.load(artifacts["int4-exact"])
    model.load_adapter("my-speech", artifacts["int4-exact"] / "speech.onnx_adapter")
    ids = prompt_ids(10)[0].tolist()
    ours = model.generate_from_ids(ids, max_new_tokens=6, adapter="my-speech")
    builtin = model.generate_from_ids(ids, max_new_tokens=6, adapter="speech")
    ours.text(), builtin.text()
    assert ours.result.token_ids == builtin.result.token_ids
    # On an artifact with built-in int4 adapters it takes the same input path; its logits are the
    # level-0 fp32-adapter artifact's up to the int4 base's activation rounding (~2%, see test_parity).
    shipped = Phi4MMEdge.load(artifacts["int4"])
    shipped.load_adapter("my-speech", artifacts["int4-exact"] / "speech.onnx_adapter")
    logits = {}
    for name, m in (("shipped", shipped), ("exact", model)):
        m.decoder.activate("my-speech")
        logits[name] = m.decoder.prefill(m.decoder.embed(prompt_ids(10)))[0]
    error = np.linalg.norm(logits["shipped"] - logits["exact"]) / np.linalg.norm(logits["exact"])
    assert error < 0.08


def test_prompt_longer_than_the_context_is_refused(artifacts):
    model = Phi4MMEdge.load(artifacts["int4"], context_length=32)
    with pytest.raises(Phi4MMError, match="the context holds 32"):
        model.generate("word " * 40)
    with pytest.raises(Phi4MMError, match="outside 1..4096"):
        Phi4MMEdge.load(artifacts["int4"], context_length=10**6)


def test_generation_stops_at_the_context_end(artifacts):
    model = Phi4MMEdge.load(artifacts["int4"], context_length=24)
    ids = prompt_ids(20)[0].tolist()
    generation = model.generate_from_ids(ids, max_new_tokens=50)
    generation.text()
    assert generation.result.finish_reason == "length" and len(generation.result.token_ids) == 4


def test_bad_requests_are_refused(artifacts):
    model = Phi4MMEdge.load(artifacts["int4"])
    with pytest.raises(Phi4MMError, match="not in this artifact"):
        model.generate("hi", adapter="music")
    with pytest.raises(Phi4MMError, match="bad message"):
        model.generate([{"role": "robot", "content": "hi"}])
    with pytest.raises(Phi4MMError, match="max_new_tokens"):
        model.generate("hi", max_new_tokens=0)


def test_cli_reports_errors_without_a_traceback(tmp_path):
    process = phi4mm_edge("run", tmp_path / "nowhere", "--prompt", "hi", check=False)
    assert process.returncode == 2
    assert "phi4mm-edge: error:" in process.stderr and "Traceback" not in process.stderr


# -- prefill path and threads --------------------------------------------------------------------
def test_prefill_path_is_chosen_from_the_cpu_and_can_be_forced(artifacts):
    from phi4mm_edge.runtime.cpu import choose_prefill_precision, int8_weight_bits_for

    # auto: int8 where MLAS has a wide integer GEMM (AVX2, ARM dotprod), else the portable int4 path
    assert choose_prefill_precision("auto", True, {"AVX2": True, "AVX512F": False}) == "int8"
    assert choose_prefill_precision("auto", True, {"ASIMD": True, "ASIMDDP": True}) == "int8"
    assert choose_prefill_precision("auto", True, {"SSE42": True, "AVX2": False}) == "int4"
    assert choose_prefill_precision("auto", True, {"ASIMD": True, "ASIMDDP": False}) == "int4"
    assert choose_prefill_precision("auto", False, {"AVX2": True}) == "int4"  # no int8 graph in the artifact
    assert choose_prefill_precision("int4", True, {"AVX2": True}) == "int4"
    with pytest.raises(Phi4MMError, match="re-export it with `--prefill int8`"):
        choose_prefill_precision("int8", False, {"AVX2": True})
    with pytest.raises(Phi4MMError, match="not one of"):
        choose_prefill_precision("fast", True, {})
    # A graph with 8-bit weights: only where integer dot products accumulate in 32 bits.
    avx2, vnni = {"AVX2": True, "AVX512VNNI": False}, {"AVX2": True, "AVX512F": True, "AVX512VNNI": True}
    assert choose_prefill_precision("auto", True, avx2, int8_weight_bits=8) == "int4"
    assert choose_prefill_precision("auto", True, vnni, int8_weight_bits=8) == "int8"
    assert choose_prefill_precision("auto", True, {"AVX2": True, "avx_vnni": True}, int8_weight_bits=8) == "int8"
    assert choose_prefill_precision("auto", True, {"AVX2": True, "amx_int8": True}, int8_weight_bits=8) == "int8"
    assert choose_prefill_precision("auto", True, {"ASIMD": True, "ASIMDDP": True}, int8_weight_bits=8) == "int8"
    assert choose_prefill_precision("auto", True, vnni, int8_weight_bits=7) == "int8"  # 7 bits run everywhere
    # The width export's `auto` stores: 8 exactly where such a graph runs its int8 prompts.
    for features in (avx2, vnni, {"AVX2": True, "avx_vnni": True}, {"AVX2": True, "amx_int8": True},
                     {"ASIMD": True, "ASIMDDP": True}, {"SSE42": True}):
        bits = int8_weight_bits_for(features)
        assert bits == (8 if choose_prefill_precision("auto", True, features, int8_weight_bits=8) == "int8"
                        else 7), features
    with pytest.raises(Phi4MMError, match="8-bit weights, which need a CPU with VNNI"):
        choose_prefill_precision("int8", True, avx2, int8_weight_bits=8)
    # Forced paths load the graphs they name; the int4-only artifact refuses int8.
    assert Phi4MMEdge.load(artifacts["int4"], prefill="int8").decoder.int8_prompt is not None
    assert Phi4MMEdge.load(artifacts["int4"], prefill="int4").decoder.int8_prompt is None
    with pytest.raises(Phi4MMError, match="no int8 prompt graph"):
        Phi4MMEdge.load(artifacts["int4-exact"], prefill="int8")


def test_int8_prefill_answers_a_long_prompt_through_the_cli(artifacts):
    """`run --prefill int8` on a prompt past INT8_MIN_POSITIONS takes the int8 graph and answers
    with the same first tokens as the int4 path (both approximate the same float model; random
    weights give the greedy argmax margins that make 4 tokens a fair check)."""
    from phi4mm_edge.runtime.decoder import INT8_MIN_POSITIONS

    prompt = " ".join(["listen"] * (INT8_MIN_POSITIONS + 16))
    answers = {}
    for path in ("int4", "int8"):
        out = phi4mm_edge("run", artifacts["int4"], "--prompt", prompt, "--max-new-tokens", 4, "--prefill", path,
                          "--prefill-chunk", 70, "--json")
        answers[path] = json.loads(out.stdout)
    assert answers["int8"]["prompt_tokens"] >= INT8_MIN_POSITIONS
    assert answers["int8"]["token_ids"][0] == answers["int4"]["token_ids"][0]


def test_threads_default_to_the_physical_cores(artifacts):
    from phi4mm_edge.runtime.cpu import logical_cpus, physical_cores
    from phi4mm_edge.runtime.providers import session_options

    assert session_options().intra_op_num_threads == physical_cores() >= 1
    assert session_options(1).intra_op_num_threads == 1
    with pytest.raises(Phi4MMError, match=r"give 1\.\."):
        session_options(0)
    with pytest.raises(Phi4MMError, match="logical CPUs"):  # 512 threads took 107 s for 2 tokens
        session_options(logical_cpus() + 1)

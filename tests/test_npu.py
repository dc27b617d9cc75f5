"""The NPU artifact end to end (export --target npu, runtime/npu_decoder.py, the one-crop vision
and windowed speech graphs): on ONNX Runtime's CPU EP against the CPU artifact and the PyTorch
reference, and on Qualcomm's QNN HTP simulator (onnxruntime-qnn) with CPU fallback disabled.

The simulator is slow (~8 s per decoder run of the tiny model, whose 200064-token lm_head
dominates), so the HTP half runs every route once in a module fixture and the tests read it:
112-pixel crops (conftest), a 16-token audio window, one decode step.
"""

import time

import numpy as np
import pytest
from PIL import Image

from phi4mm_edge import Phi4MMError
from phi4mm_edge.export.convert import export
from phi4mm_edge.export.options import ExportOptions
from phi4mm_edge.export.graph_blocks import Precision
from phi4mm_edge.manifest import read_manifest
from phi4mm_edge.runtime import Phi4MMEdge, qnn
from test_speech import espeak, reference_greedy
from reference_steps import relative_l2

CONTEXT = 256  # positions of the NPU graphs' KV cache: the prompts here take at most ~130
AUDIO_WINDOW = 16  # tokens (1.28 s): the espeak clip fits one window
INT4_EXACT = Precision(weights="int4", block_size=32, accuracy_level=0)  # fp32 activations on the CPU EP
FP32 = Precision(weights="fp32")
QUESTION = "Describe what you see and hear."
ROUTES = {  # route -> (adapter, with image, with audio)
    "none": ("none", False, False),
    "vision": ("vision", True, False),
    "speech": ("speech", False, True),
    "audio+image": ("vision", True, True),
}


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    folder = tmp_path_factory.mktemp("npu_media")
    rng = np.random.default_rng(5)
    image = Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).resize((200, 150), Image.BILINEAR)
    return image, espeak("Hello there.", folder / "hello.wav")


@pytest.fixture(scope="module")
def npu_artifacts(small_crop_checkpoint, tmp_path_factory):
    """NPU exports at int4 (as shipped, but fp32 activations on the CPU EP) and fp32, and the
    fp32 CPU export of the same checkpoint."""
    root = tmp_path_factory.mktemp("npu_artifacts")
    made = {}
    for name, precision, target in (("npu-int4", INT4_EXACT, "npu"), ("npu-fp32", FP32, "npu"),
                                    ("cpu-fp32", FP32, "cpu")):
        npu_shapes = dict(npu_context=CONTEXT, npu_audio_window=AUDIO_WINDOW) if target == "npu" else {}
        export(small_crop_checkpoint, root / name, ExportOptions(precision, target=target, **npu_shapes),
               show_progress=False)
        made[name] = root / name
    return made


def route_logits(model: Phi4MMEdge, route: str, media, steps: int) -> tuple[list[np.ndarray], list[int]]:
    """Logits of the prompt's last position and of `steps` greedy steps, and the greedy ids."""
    adapter, with_image, with_audio = ROUTES[route]
    image, clip = media
    content = ("<|image_1|>" if with_image else "") + ("<|audio_1|>" if with_audio else "") + QUESTION
    prompt = model.prompt([{"role": "user", "content": content}], [image] if with_image else [],
                          [clip] if with_audio else [])
    model.decoder.activate(adapter)
    embeds = model.decoder.embed(np.array([prompt.token_ids]), prompt.image_features, prompt.audio_features)
    logits = [model.decoder.prefill(embeds, keep=1)[0, -1].copy()]
    ids = [int(np.argmax(logits[-1]))]
    for _ in range(steps):
        logits.append(model.decoder.step(ids[-1]).copy())
        ids.append(int(np.argmax(logits[-1])))
    return logits, ids


# -- on the CPU EP: the NPU graphs compute the CPU artifact's model --------------------------------
@pytest.mark.parametrize("route", list(ROUTES))
def test_npu_graphs_on_the_cpu_compute_what_the_cpu_artifact_does(npu_artifacts, media, route):
    # Same fp32 weights; what differs: the NPU embedding's token table is fp16 (the HTP has no
    # block-quantized gather), which holds a bf16 checkpoint's values exactly; vision and speech
    # run per crop and per window, attention is plain ops over a fixed-length cache, summed in
    # another order. Measured relative L2 of logits: 1.2e-6 to 1.6e-6 over the routes; 1e-4
    # leaves 60x room, and a wrong position, mask or adapter moves logits by 10-100%.
    npu = Phi4MMEdge.load(npu_artifacts["npu-fp32"], provider="cpu")
    cpu = Phi4MMEdge.load(npu_artifacts["cpu-fp32"])
    npu_logits, npu_ids = route_logits(npu, route, media, steps=7)
    cpu_logits, cpu_ids = route_logits(cpu, route, media, steps=7)
    errors = [relative_l2(a, b) for a, b in zip(npu_logits, cpu_logits)]
    print(route, "relative L2, max over positions", f"{max(errors):.2e}")
    assert max(errors) < 1e-4, errors
    assert npu_ids == cpu_ids


@pytest.mark.parametrize("adapter", ["none", "vision", "speech"])
def test_npu_graphs_on_the_cpu_give_the_references_greedy_ids(npu_artifacts, reference, adapter):
    # The PyTorch reference (fp32, transformers + PEFT) on a text prompt with each adapter forced:
    # the fp16 token table moves logits by ~1e-3 relative, far from the random model's margins.
    model = Phi4MMEdge.load(npu_artifacts["npu-fp32"], provider="cpu")
    ids = model.prompt_ids(QUESTION)
    generation = model.generate(QUESTION, max_new_tokens=12, adapter=adapter)
    generation.text()
    assert generation.result.token_ids == reference_greedy(reference, adapter, ids, 12)


# -- on the HTP simulator ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def htp(npu_artifacts, media):
    """Every route once on the HTP, the same on the CPU EP, and a fresh load's speech route."""
    try:
        import onnxruntime_qnn  # noqa: F401
    except ImportError:
        pytest.skip("onnxruntime-qnn is not installed here (pip install onnxruntime-qnn; CI installs it)")
    folder = npu_artifacts["npu-int4"]
    started = time.perf_counter()
    model = Phi4MMEdge.load(folder, provider="qnn", preload_encoders=True)
    first_load = time.perf_counter() - started
    compiled = qnn.compilations
    # One decode step on the text route only: a simulated int4 decoder run costs ~8 s.
    runs = {route: route_logits(model, route, media, steps=int(route == "none"))
            for route in ROUTES}  # none -> vision -> speech -> vision
    swaps_compiled = qnn.compilations - compiled
    started = time.perf_counter()
    again = Phi4MMEdge.load(folder, provider="qnn", preload_encoders=True)
    second_load = time.perf_counter() - started
    fresh_speech = route_logits(again, "speech", media, steps=0)
    cpu = Phi4MMEdge.load(folder, provider="cpu")
    on_cpu = {route: route_logits(cpu, route, media, steps=int(route == "none")) for route in ROUTES}
    return dict(model=model, runs=runs, on_cpu=on_cpu, first_load=first_load, second_load=second_load,
                swaps_compiled=swaps_compiled, fresh_compiled=qnn.compilations - compiled - swaps_compiled,
                fresh_speech=fresh_speech)


def test_every_npu_graph_runs_on_the_htp(htp):
    # Each session was created with CPU fallback disabled: one node the HTP cannot take and the
    # load would have raised. Five graphs: embedding, prompt, decode, vision crop, speech window.
    model = htp["model"]
    assert model.provider == "qnn" and "QNN HTP" in model.provider_note
    for graph in ("embedding_npu.onnx", "decoder_npu.onnx", "decoder_prompt_npu.onnx", "vision_crop.onnx",
                  "audio_window.onnx"):
        assert qnn.cached_context(model.folder / graph, model.manifest.data_hashes(graph)) is not None, graph
    print(f"HTP simulator: first load (compiles) {htp['first_load']:.1f} s, second (EP context) "
          f"{htp['second_load']:.1f} s")


@pytest.mark.parametrize("route", list(ROUTES))
def test_htp_logits_stay_within_fp16_of_the_cpu(htp, route):
    # The HTP runs the int4 graphs with fp16 activations; the CPU EP runs the same graphs with
    # fp32 activations. Measured relative L2 of logits (prompt's last position, one step):
    # none 0.19/0.21%, vision 0.17/0.26%, speech 0.35/0.78%, audio+image 1.15/0.35% (the longest
    # prompt, two encoders in fp16 before it). HTP_BOUND holds 2.6x room over the worst; greedy
    # ids equal (the random model's top-2 margins are far above that).
    htp_logits, htp_ids = htp["runs"][route]
    cpu_logits, cpu_ids = htp["on_cpu"][route]
    errors = [relative_l2(a, b) for a, b in zip(htp_logits, cpu_logits)]
    print(route, "relative L2 per position", [f"{e:.2e}" for e in errors])
    assert max(errors) < HTP_BOUND, errors
    assert htp_ids == cpu_ids


HTP_BOUND = 0.03


def test_adapter_swaps_on_the_htp_recompile_nothing_and_match_a_fresh_load(htp):
    # The routes ran none -> vision -> speech -> vision on one load: rebinding A/B inputs only.
    # A second load (from the cached EP contexts) running speech first gives the same bits.
    assert htp["swaps_compiled"] == 0 and htp["fresh_compiled"] == 0
    for swapped, fresh in zip(htp["runs"]["speech"][0], htp["fresh_speech"][0]):
        np.testing.assert_array_equal(swapped, fresh)
    assert htp["second_load"] < htp["first_load"]


# -- choosing the provider ---------------------------------------------------------------------
def test_a_cpu_artifact_is_refused_on_qnn_and_auto_says_what_it_took(artifacts, npu_artifacts, monkeypatch):
    with pytest.raises(Phi4MMError, match="--target npu"):
        Phi4MMEdge.load(artifacts["int4"], provider="qnn")
    assert Phi4MMEdge.load(artifacts["int4"]).provider == "cpu"
    monkeypatch.setattr(qnn, "_registered", False)  # as on a machine without onnxruntime-qnn
    with pytest.raises(Phi4MMError, match="pip install onnxruntime-qnn"):
        Phi4MMEdge.load(npu_artifacts["npu-int4"], provider="qnn")
    model = Phi4MMEdge.load(npu_artifacts["npu-int4"])  # auto: the NPU graphs on the CPU, said so
    assert model.provider == "cpu" and "onnxruntime-qnn" in model.provider_note
    with pytest.raises(Phi4MMError, match="--provider"):
        Phi4MMEdge.load(artifacts["int4"], provider="gpu")


def test_an_npu_artifact_records_its_target_and_shapes(npu_artifacts):
    manifest = read_manifest(npu_artifacts["npu-int4"])
    assert manifest.target == "npu" and manifest.npu.context == CONTEXT and manifest.npu.lora_rank >= max(
        a.rank for a in manifest.adapters.values())
    assert {a.precision for a in manifest.adapters.values()} == {"fp16"}
    assert read_manifest(npu_artifacts["cpu-fp32"]).target == "cpu"
    with pytest.raises(Phi4MMError, match="context"):
        Phi4MMEdge.load(npu_artifacts["npu-int4"], provider="cpu", context_length=CONTEXT + 1)


def test_npu_speech_route_on_the_cpu_gives_the_references_greedy_ids(npu_artifacts, reference, media):
    # A spoken clip through the audio window graph and the static decoder with the speech
    # adapter, against transformers + PEFT fed the same log-mel features (the 112-pixel
    # checkpoint's text and audio weights are the reference's). fp32 throughout; the NPU path
    # differs from the CPU artifact by 1.6e-6 (above), far inside the random model's margins.
    import torch

    model = Phi4MMEdge.load(npu_artifacts["npu-fp32"], provider="cpu")
    _, clip = media
    prompt = "<|audio_1|>Transcribe the audio clip into text."
    generation = model.generate(prompt, audios=[clip], max_new_tokens=12)
    generation.text()
    assert generation.result.adapter == "speech"
    audio = model.audio.prepare(clip)
    expected = reference_greedy(reference, "speech", model.prompt(prompt, audios=[clip]).token_ids,
                                12, audio_input_features=torch.from_numpy(audio.features[None]),
                                audio_embed_sizes=torch.tensor([audio.num_tokens]))
    assert generation.result.token_ids == expected

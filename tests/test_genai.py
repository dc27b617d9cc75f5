"""onnxruntime-genai 0.18 runs the files export writes for it (export/genai.py) and gives our ids.

Text through the decoder-only overlay (genai_text.json) with og.Adapters, for every adapter and
every way adapters are stored; images and audio through genai's phi4mm pipeline, compared with
our runtime fed genai's own preprocessed inputs (genai's preprocessing is not transformers', a
documented difference measured here); and the genai limitations found, pinned so that a new
genai version that lifts one fails its test and gets noticed.
"""

import dataclasses
import json

import numpy as np
import onnx
import onnxruntime as ort
import onnxruntime_genai as og
import pytest
import soundfile
from PIL import Image

from phi4mm_edge import Phi4MMError
from phi4mm_edge.export import adapter_format, genai, genai_graphs
from phi4mm_edge.export.convert import export
from phi4mm_edge.export.options import ExportOptions
from phi4mm_edge.export.graph_blocks import Precision
from phi4mm_edge.export.onnx_graph import every_graph
from phi4mm_edge.manifest import read_manifest
from phi4mm_edge.runtime import Phi4MMEdge
from phi4mm_edge.runtime.audio import load_audio, log_mel_spectrogram
from phi4mm_edge.runtime.image import load_image, preprocess
from reference_steps import relative_l2

og.disable_telemetry_events()

PROMPT = "Hello, tell me a story"
TOKENS = 32
ADAPTERS = ("none", "vision", "speech")
RATE = 16000


# -- artifacts, media and the two runtimes ------------------------------------------------------
@pytest.fixture(scope="module")
def exports(checkpoints, tmp_path_factory):
    """The default int4 export (adapters built into the decoder graph) and two with adapter files
    (fp32, fp16), which genai reads through other routes."""
    root = tmp_path_factory.mktemp("genai")
    made = {}
    for adapters in ("int4", "fp32", "fp16"):
        export(checkpoints["native"], root / adapters,
               ExportOptions(Precision(weights="int4", block_size=32), adapter_precision=adapters), show_progress=False)
        made[adapters] = root / adapters
    return made


def noise_image(width, height, seed):
    """Smooth noise, like a photo: a small random image upscaled."""
    small = np.random.default_rng(seed).integers(0, 256, (max(1, height // 16), max(1, width // 16), 3), dtype=np.uint8)
    return Image.fromarray(small).resize((width, height), Image.BILINEAR)


def tone(seconds, seed=0, rate=RATE):
    """A voice-like signal: two harmonics with vibrato, plus a little noise."""
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.3 * np.sin(2 * np.pi * (180 + 20 * np.sin(2 * np.pi * 3 * t)) * t) + 0.1 * np.sin(2 * np.pi * 900 * t)
    return (wave + 0.02 * np.random.default_rng(seed).standard_normal(t.size)).astype(np.float32)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    folder = tmp_path_factory.mktemp("genai_media")
    noise_image(900, 450, seed=1).save(folder / "wide.png")  # a 1x2 grid of tiles
    noise_image(500, 700, seed=2).save(folder / "tall.png")  # 2x2
    for name, seconds, seed in (("short.wav", 1.2, 0), ("speech.wav", 3.0, 1), ("long.wav", 45.0, 2)):
        soundfile.write(folder / name, tone(seconds, seed), RATE, subtype="PCM_16")
    soundfile.write(folder / "tone44k.wav", tone(3.0, seed=3, rate=44100), 44100, subtype="PCM_16")
    return folder


@pytest.fixture(scope="module")
def ours(exports):
    loaded = {}

    def load(kind):
        if kind not in loaded:
            loaded[kind] = Phi4MMEdge.load(exports[kind], context_length=4096)
        return loaded[kind]

    return load


@pytest.fixture(scope="module")
def genai_models(exports):
    """og.Model per (artifact, overlay file or None: the folder's own genai_config.json)."""
    loaded = {}

    def load(kind, overlay=None):
        if (kind, overlay) not in loaded:
            config = og.Config(str(exports[kind]))
            if overlay:
                config.overlay((exports[kind] / overlay).read_text())
            loaded[kind, overlay] = og.Model(config)
        return loaded[kind, overlay]

    return load


def adapter_file(folder, name) -> str:
    """What og.Adapters loads: `<name>.genai_adapter` (adapter_index only) for an adapter built into
    the decoder graph, else the artifact's own `.onnx_adapter`."""
    index_only = folder / f"{name}{genai_graphs.INDEX_ADAPTER_SUFFIX}"
    return str(index_only if index_only.exists() else folder / read_manifest(folder).adapters[name].file)


def genai_greedy(model, ids=None, inputs=None, adapters=None, adapter=None, feeds=None, count=TOKENS) -> list[int]:
    """`count` greedy ids from genai for prompt `ids` (or a processor's `inputs`)."""
    length = len(ids) if ids is not None else inputs["input_ids"].as_numpy().shape[1]
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=length + count)
    generator = og.Generator(model, params)
    kept = []  # set_model_input wraps the numpy buffer without copying: each must outlive the generator
    for name, value in (feeds or {}).items():
        kept.append(value)
        generator.set_model_input(name, value)
    if adapter not in (None, "none"):
        generator.set_active_adapter(adapters, adapter)
    if inputs is not None:
        generator.set_inputs(inputs)
    else:
        generator.append_tokens(np.array([ids], np.int32))
    out = []
    while not generator.is_done() and len(out) < count:
        generator.generate_next_token()
        out.append(int(generator.get_next_tokens()[0]))
    return out


def our_greedy(model, ids, adapter, image_features=None, audio_features=None, count=TOKENS) -> list[int]:
    generation = model.generate_from_ids(ids, max_new_tokens=count, adapter=adapter, image_features=image_features,
                                         audio_features=audio_features)
    for _ in generation:
        pass
    return generation.result.token_ids


def chat(text: str) -> str:
    return f"<|user|>{text}<|end|><|assistant|>"


# -- what export writes -------------------------------------------------------------------------
def test_export_writes_genai_files_from_the_manifest_without_copying_weights(exports):
    folder = exports["int4"]
    manifest = read_manifest(folder)
    names = {genai.GENAI_CONFIG, genai.VISION_PROCESSOR, genai.SPEECH_PROCESSOR, genai.DECODER, genai.SPEECH_DECODER,
             genai.TEXT, genai.VISION, genai.AUDIO, genai.TEXT_OVERLAY, genai.SPEECH_OVERLAY,
             "vision.genai_adapter", "speech.genai_adapter"}
    assert names <= set(manifest.files)  # listed, so sha256-checked like every exported file
    config = json.loads((folder / genai.GENAI_CONFIG).read_text())["model"]
    text = manifest.model
    assert (config["eos_token_id"], config["context_length"], config["vocab_size"]) == \
           (text.eos_token_ids, text.max_position_embeddings, text.vocab_size)
    assert (config["decoder"]["num_hidden_layers"], config["decoder"]["hidden_size"]) == \
           (text.num_layers, text.hidden_size)
    vision = json.loads(
        (folder / genai.VISION_PROCESSOR).read_text())["processor"]["transforms"][1]["operation"]["attrs"]
    assert vision == {"dynamic_hd": manifest.vision.max_crops, "dyhd_base_resolution": manifest.vision.crop_size}
    # No weight twice: every genai graph names only data files the artifact already had (its
    # graphs' data and its adapter files), and holds nothing inline above the exporter's inline
    # limit (small constants).
    for kind in exports:
        manifest = read_manifest(exports[kind])
        existing = ({name for files in manifest.graph_data.values() for name in files}
                    | {a.file for a in manifest.adapters.values()})
        for name in (genai.DECODER, genai.SPEECH_DECODER, genai.TEXT, genai.VISION, genai.AUDIO):
            tensors = initializers(onnx.load(str(exports[kind] / name), load_external_data=False).graph)
            locations = {e.value for t in tensors for e in t.external_data if e.key == "location"}
            assert locations and locations <= existing, (kind, name)
            assert max(len(t.raw_data) for t in tensors) <= 65536, (kind, name)


def initializers(graph) -> list:
    """A graph's initializers and those of its subgraphs (If branches, Loop bodies), however deep."""
    return [tensor for nested in every_graph(graph) for tensor in nested.initializer]


def test_only_the_cpu_target_gets_genai_files(exports, tmp_path):
    """The NPU and DirectML graphs do not fit genai's pipeline (genai.write_genai_files)."""
    manifest = read_manifest(exports["int4"])
    for target in ("npu", "dml"):
        assert genai.write_genai_files(tmp_path, dataclasses.replace(manifest, target=target)) == []
    assert not list(tmp_path.iterdir())


def test_a_damaged_adapter_file_gets_a_clear_error(exports, tmp_path):
    """Export reads an fp32/fp16 adapter file's index to point the pipeline decoders into it."""
    assert set(adapter_format.adapter_tensors(exports["fp32"] / "vision.onnx_adapter")) == set(
        ort.AdapterFormat.read_adapter(str(exports["fp32"] / "vision.onnx_adapter")).get_parameters())
    for damaged in (b"", b"not an adapter file at all", (exports["fp32"] / "vision.onnx_adapter").read_bytes()[:200]):
        (tmp_path / "vision.onnx_adapter").write_bytes(damaged)
        with pytest.raises(Phi4MMError, match="not an adapter file"):
            adapter_format.adapter_tensors(tmp_path / "vision.onnx_adapter")


# -- text: the decoder-only overlay with og.Adapters --------------------------------------------
@pytest.mark.parametrize("kind", ["int4", "fp32", "fp16"])
def test_text_greedy_ids_equal_ours_with_every_adapter(exports, ours, genai_models, kind):
    model = genai_models(kind, genai.TEXT_OVERLAY)
    assert model.type == "phi3"
    ids = ours(kind).prompt_ids(PROMPT)
    assert list(og.Tokenizer(model).encode(chat(PROMPT))) == ids  # genai's tokenizer, our chat template
    assert len(ids) + TOKENS <= ours(kind).text.original_max_position_embeddings  # see the LongRoPE test
    adapters = og.Adapters(model)
    for name in ADAPTERS[1:]:
        adapters.load(adapter_file(exports[kind], name), name)
    expected = {name: our_greedy(ours(kind), ids, name) for name in ADAPTERS}
    # the adapters change the answer: the test can tell them apart
    assert len({tuple(v) for v in expected.values()}) == 3
    for name in (*ADAPTERS, "none"):  # and back to none: one model, adapters switched per generator
        assert genai_greedy(model, ids, adapters=adapters, adapter=name) == expected[name], name


# -- images and audio: genai's phi4mm pipeline --------------------------------------------------
def vision_features(folder, inputs) -> np.ndarray:
    """Our vision.onnx on genai's preprocessed images, one image at a time, its own crops only."""
    session = ort.InferenceSession(str(folder / "vision.onnx"))
    pixels, masks, sizes = (inputs[k].as_numpy() for k in ("pixel_values", "image_attention_mask", "image_sizes"))
    crop = read_manifest(folder).vision.crop_size
    features = []
    for pixel_values, mask, size in zip(pixels, masks, sizes):
        grid = size // crop
        crops = 1 + int(grid.prod())
        features.append(session.run(None, {"pixel_values": pixel_values[:crops], "attention_mask": mask[:crops],
                                           "crop_grid": grid})[0])
    return np.concatenate(features)


def audio_features(folder, inputs, with_image: bool) -> np.ndarray:
    """Our audio.onnx on genai's log-mel features, one clip at a time, its own frames only."""
    session = ort.InferenceSession(str(folder / "audio.onnx"))
    embeds, mask = inputs["audio_embeds"].as_numpy(), inputs["audio_attention_mask"].as_numpy()
    return np.concatenate([session.run(None, {"input_features": clip[None, :frames.sum()],
                                              "vision_mode": np.array(with_image)})[0]
                           for clip, frames in zip(embeds, mask)])


MEDIA_PROMPTS = {  # (images, clips, text, overlay, the adapter built into that config)
    "one image": (["wide.png"], [], "Describe the image.", None, "vision"),
    "two images": (["wide.png", "tall.png"], [], "Compare the images.", None, "vision"),
    "one clip": ([], ["short.wav"], "Transcribe.", genai.SPEECH_OVERLAY, "speech"),
    # Two clips, and a longer text: the prompt starts past the tiny model's LongRoPE switch (64).
    "two clips": ([], ["short.wav", "speech.wav"], "Transcribe both clips, word for word, and say which is longer.",
                  genai.SPEECH_OVERLAY, "speech"),
    "45 s clip": ([], ["long.wav"], "Transcribe.", genai.SPEECH_OVERLAY, "speech"),  # > 30 s, > 500 tokens
    "image and clip": (["tall.png"], ["short.wav"], "What is said about the image?", None, "vision"),
}


@pytest.mark.parametrize("case", list(MEDIA_PROMPTS))
def test_media_prompts_equal_ours_fed_genais_preprocessing(exports, ours, genai_models, media, case):
    """genai's prompt ids equal ours; then our runtime, given genai's pixel values / log-mel
    features and the adapter that config builds in, picks the very same 32 greedy ids: the
    encoders' Loop over images and clips, the projection mode, the features' placement and the
    built-in adapter are exact."""
    images, clips, text, overlay, adapter = MEDIA_PROMPTS[case]
    folder = exports["int4"]
    model = genai_models("int4", overlay)
    tags = ("".join(f"<|image_{i + 1}|>" for i in range(len(images)))
            + "".join(f"<|audio_{i + 1}|>" for i in range(len(clips))))
    inputs = model.create_multimodal_processor()(
        chat(tags + text), images=og.Images.open(*[str(media / i) for i in images]) if images else None,
        audios=og.Audios.open(*[str(media / c) for c in clips]) if clips else None)
    ids = inputs["input_ids"].as_numpy()[0].tolist()
    prompt = ours("int4").prompt(tags + text, images=[media / i for i in images], audios=[media / c for c in clips])
    assert ids == prompt.token_ids
    if clips:
        assert inputs["audio_projection_mode"].as_numpy().tolist() == [3 if images else 2]
    got = genai_greedy(model, inputs=inputs)
    expected = our_greedy(ours("int4"), ids, adapter, vision_features(folder, inputs) if images else None,
                          audio_features(folder, inputs, bool(images)) if clips else None)
    assert got == expected


@pytest.mark.parametrize("kind", ["fp32", "fp16"])
def test_adapter_files_are_built_into_the_pipeline_decoders_in_place(exports, ours, genai_models, kind):
    """An fp32/fp16 artifact's pipeline decoders read the adapter's A/B from its .onnx_adapter file
    (external data pointing into it: no copy): text prompts through the folder's config run the
    vision adapter, through genai_speech.json the speech adapter."""
    ids = ours(kind).prompt_ids(PROMPT)
    assert genai_greedy(genai_models(kind), ids) == our_greedy(ours(kind), ids, "vision")
    assert genai_greedy(genai_models(kind, genai.SPEECH_OVERLAY), ids) == our_greedy(ours(kind), ids, "speech")


def test_genai_image_preprocessing_differs_from_ours_by_a_measured_amount(exports, genai_models, media):
    """genai's image preprocessing is its own (ONNX Runtime extensions' C++), not transformers',
    which ours equals (test_vision.py). Measured on 0.18 (this image): the tiles equal within float
    rounding (another image was one uint8 step, 2/255, off), the bicubic global view up to 0.32
    off, 0.85% relative overall. The bounds are those figures with ~2x margin; the lower bound
    fails the test when genai's preprocessing changes (then re-measure)."""
    manifest = read_manifest(exports["int4"])
    processor = genai_models("int4").create_multimodal_processor()
    theirs = processor(chat("<|image_1|>Describe."),
                       images=og.Images.open(str(media / "tall.png")))["pixel_values"].as_numpy()[0]
    mine = preprocess(load_image(media / "tall.png"), manifest.vision).pixel_values
    assert theirs.shape == mine.shape
    tiles, overall = np.abs(theirs[1:] - mine[1:]).max(), np.abs(theirs - mine).max()
    print(f"\npixel values: relative L2 {relative_l2(theirs, mine):.4f}, "
          f"max abs {overall:.3f}, tiles max abs {tiles:.4f}")
    assert tiles <= 2 * 2 / 255
    assert 1e-3 < relative_l2(theirs, mine) < 0.02 and overall < 0.7


@pytest.mark.parametrize("clip,measured", [("speech.wav", 1.4e-4), ("tone44k.wav", 1.3e-2)])
def test_genai_audio_preprocessing_differs_from_ours_by_a_measured_amount(exports, genai_models, media, clip, measured):
    """genai's log-mel (SpeechLib's, in ONNX Runtime extensions) is within 1.4e-4 relative of ours
    (= transformers', test_speech.py) on this 16 kHz clip (max 0.06 on values of 4..27), but other
    rates are resampled differently (a Butterworth low-pass and a Kaiser window there, soxr here):
    1.3e-2 relative on this 44.1 kHz clip, up to 4.4 in the quiet top mel bins, where log(max(x, 1))
    magnifies small stop-band differences (a noiseless tone measured 0.2 relative). Bounds: 2x the
    measured figure, and above a tenth of it (so a change in genai's features is noticed)."""
    manifest = read_manifest(exports["int4"])
    processor = genai_models("int4").create_multimodal_processor()
    theirs = processor(chat("<|audio_1|>Transcribe."),
                       audios=og.Audios.open(str(media / clip)))["audio_embeds"].as_numpy()[0]
    mine = log_mel_spectrogram(load_audio(media / clip), manifest.audio.mel_bins)
    assert theirs.shape == mine.shape
    print(f"\n{clip} log-mel: relative L2 {relative_l2(theirs, mine):.2e}, max abs {np.abs(theirs - mine).max():.3f}")
    assert measured / 10 < relative_l2(theirs, mine) < 2 * measured


# -- genai 0.18's limitations, pinned -----------------------------------------------------------
def test_phi4mm_pipeline_ignores_og_adapters_and_model_inputs(exports, ours, genai_models):
    """The phi4mm pipeline runs its decoder with only inputs_embeds, the mask and the KV cache:
    og.Adapters + set_active_adapter and set_model_input("adapter_index") are accepted without an
    error and change nothing (the vision adapter built into decoder_genai.onnx still runs). Why the
    speech adapter has its own config (genai_speech.json). Fails when genai starts applying them."""
    model = genai_models("int4")
    ids = ours("int4").prompt_ids(PROMPT)
    built_in = our_greedy(ours("int4"), ids, "vision")
    adapters = og.Adapters(model)
    adapters.load(adapter_file(exports["int4"], "speech"), "speech")
    assert genai_greedy(model, ids) == built_in
    assert genai_greedy(model, ids, adapters=adapters, adapter="speech") == built_in
    assert genai_greedy(model, ids, feeds={"adapter_index": np.array([2], np.int64)}) == built_in
    assert built_in != our_greedy(ours("int4"), ids, "speech")


def test_genai_does_not_recompute_the_cache_at_the_longrope_switch(genai_models):
    """Past original_max_position_embeddings (4096 at full size, 64 here) the long rotary factors
    apply to every position. Our runtime then recomputes the cached positions, as transformers
    does, which gives the logits of a fresh run over the whole sequence; genai keeps the keys it
    cached with the short factors. So genai's step equals a fresh run up to the switch (within the
    int8 activation rounding of accuracy level 4, measured <= 1.5e-2 of the largest logit) and not
    past it (measured 1.3): answers longer than the switch differ from ours from there on."""
    model = genai_models("int4", genai.TEXT_OVERLAY)
    switch = 64  # the tiny model's original_max_position_embeddings
    ids = np.random.default_rng(0).integers(0, 199_000, switch + 2).tolist()

    def generator():
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(ids) + 1)
        return og.Generator(model, params)

    stepwise = generator()
    stepwise.append_tokens(np.array([ids[:switch - 2]], np.int32))
    for length in range(switch - 1, switch + 2):  # one token at a time, across the switch
        stepwise.append_tokens(np.array([[ids[length - 1]]], np.int32))
        fresh = generator()
        fresh.append_tokens(np.array([ids[:length]], np.int32))
        difference = np.abs(stepwise.get_logits() - fresh.get_logits()).max() / np.abs(fresh.get_logits()).max()
        assert (difference > 0.5) if length > switch else (difference < 0.1), (length, difference)


def test_a_config_in_a_subfolder_cannot_name_the_artifacts_graphs(exports):
    """Why the other configs are overlays: genai refuses graph paths with '..' (and ONNX Runtime
    refuses external data through symlinks), so a second genai_config.json cannot sit in a
    subfolder of the artifact."""
    folder = exports["int4"] / "genai_text_subfolder"
    folder.mkdir()
    config = json.loads((exports["int4"] / genai.GENAI_CONFIG).read_text())
    config["model"]["decoder"]["filename"] = f"../{genai.DECODER}"
    (folder / genai.GENAI_CONFIG).write_text(json.dumps(config))
    with pytest.raises(RuntimeError, match="path traversal"):
        og.Model(str(folder))


def test_adapter_files_cannot_hold_a_scalar(exports, genai_models, tmp_path):
    """Why `.genai_adapter` holds adapter_index as [1] and the graphs squeeze it: ONNX Runtime's
    adapter loader refuses rank-0 parameters."""
    adapter = ort.AdapterFormat()
    adapter.set_adapter_version(1)
    adapter.set_model_version(1)
    adapter.set_parameters({"adapter_index": ort.OrtValue.ortvalue_from_numpy(np.array(2, np.int64))})
    adapter.export_adapter(str(tmp_path / "scalar.onnx_adapter"))
    with pytest.raises(RuntimeError, match="dims is missing or empty"):
        og.Adapters(genai_models("int4", genai.TEXT_OVERLAY)).load(str(tmp_path / "scalar.onnx_adapter"), "speech")

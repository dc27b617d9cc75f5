"""manifest.json as a typed contract: what export writes, the runtime reads back field for field,
and a damaged manifest is refused naming the field, before any graph is opened."""

import json
import shutil

import pytest

from phi4mm_edge import Phi4MMError
from phi4mm_edge.manifest import Manifest, read_manifest
from phi4mm_edge.runtime import Phi4MMEdge


def test_the_manifest_reads_back_as_written(artifacts):
    manifest = read_manifest(artifacts["int4"])
    assert isinstance(manifest, Manifest)
    assert manifest.to_json() == json.loads((artifacts["int4"] / "manifest.json").read_text())
    assert manifest.graphs.prefill_int8 == "decoder_prefill.onnx" and read_manifest(artifacts["int4-exact"]).graphs.prefill_int8 is None
    # The runtime preprocesses with the artifact's geometry and feature sizes, never constants of its own.
    model = Phi4MMEdge.load(artifacts["int4"])
    assert model.vision.geometry is not None and model.vision.geometry == manifest.vision
    assert model.audio.entry == manifest.audio and manifest.audio.mel_bins == manifest.audio.encoder["input_size"]


def damaged(manifest: dict, change) -> dict:
    copy = json.loads(json.dumps(manifest))
    change(copy)
    return copy


CASES = {  # what is broken -> the field the error must name
    "files is a list": (lambda m: m.update(files=[]), "files must be an object"),
    "a file entry is a string": (lambda m: m["files"].update({"decoder.onnx": "abc"}), "files['decoder.onnx'] must be an object"),
    "a file entry lacks its size": (lambda m: m["files"]["decoder.onnx"].pop("size"), "files['decoder.onnx'].size is missing"),
    "no model": (lambda m: m.pop("model"), "model is missing"),
    "negative layers": (lambda m: m["model"].update(num_layers=-1), "model.num_layers is -1"),
    "absurd vocabulary": (lambda m: m["model"].update(vocab_size=10**12), "model.vocab_size is 1000000000000"),
    "hidden size as text": (lambda m: m["model"].update(hidden_size="3072"), "model.hidden_size must be a whole number"),
    "adapters as a list": (lambda m: m.update(adapters=["vision"]), "adapters must be an object"),
    "zero crop size": (lambda m: m["vision"].update(crop_size=0), "vision.crop_size is 0"),
    "NaN rope theta": (lambda m: m["model"].update(rope_theta=float("nan")), "model.rope_theta is nan"),
    "eos outside the vocabulary": (lambda m: m["model"].update(eos_token_ids=[10**6]), "special token ids outside the vocabulary"),
    "a list at the top": (lambda m: (m.clear()), "not a phi4mm-edge manifest"),
    "an older format": (lambda m: m.update(format_version=2), "format version 2"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_damaged_manifest_is_refused_naming_the_field(artifacts, tmp_path, case):
    change, message = CASES[case]
    folder = tmp_path / "artifact"
    shutil.copytree(artifacts["int4-exact"], folder)
    original = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps(damaged(original, change)))
    with pytest.raises(Phi4MMError) as refused:
        Phi4MMEdge.load(folder)
    assert message in str(refused.value)
    assert "re-export" in str(refused.value)  # and it says what to do

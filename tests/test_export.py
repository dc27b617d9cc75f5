"""Export writes a complete, self-describing artifact, and refuses bad checkpoints clearly."""

import json
import re
import shutil
from pathlib import Path

import pytest

from phi4mm_edge import Phi4MMError
from phi4mm_edge.artifact import sha256_of
from phi4mm_edge.export.convert import export
from phi4mm_edge.export.options import ExportOptions
from phi4mm_edge.export.reference_checkpoint import tiny_config, write_reference

GRAPH_FILES = ("embedding.onnx", "decoder.onnx", "embed_tokens.onnx.data", "decoder.onnx.data")


def test_artifact_layout_and_manifest(artifacts):
    folder = artifacts["int4"]
    manifest = json.loads((folder / "manifest.json").read_text())
    for name in ("embedding.onnx", "decoder.onnx", "vision.lora.data", "speech.lora.data",
                 "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (folder / name).is_file(), name
    on_disk = {p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")} - {"manifest.json"}
    assert set(manifest["files"]) == on_disk
    for name, entry in manifest["files"].items():
        assert entry["size"] == (folder / name).stat().st_size
        assert entry["sha256"] == sha256_of(folder / name)
    assert manifest["adapters"]["vision"]["rank"] != manifest["adapters"]["speech"]["rank"]
    assert manifest["model"]["num_kv_heads"] < manifest["model"]["num_heads"]
    assert manifest["precision"] == {"weights": "int4", "block_size": 32, "symmetric": True, "accuracy_level": 4,
                                     "adapters": "int4", "token_table_bits": 4, "token_table_rescored_top": 32,
                                     "norm_gains_folded": True}
    assert len(manifest["source"]["config_sha256"]) == 64


def _graph_bytes(folder):
    return sum((folder / name).stat().st_size for name in GRAPH_FILES if (folder / name).exists())


def test_int4_graph_weights_are_at_most_a_fifth_of_fp32(artifacts):
    # 4-bit codes plus one fp32 scale per 32 weights is 5 bits a weight: 15.6% of fp32 at best
    # (the token table plain int4: the rescored one adds its residual, next test).
    assert _graph_bytes(artifacts["int4-exact-table4"]) <= 0.20 * _graph_bytes(artifacts["fp32-native"])


def test_a_rescored_token_table_is_the_int4_table_and_its_residual_in_one_file(checkpoints, artifacts):
    # The default CPU table: int4 codes + fp32 scales per 32, twice (table and residual): 10/32 of
    # fp32, in the one data file both graphs read; the plain int4 table is half of it.
    config = json.loads((checkpoints["native"] / "config.json").read_text())
    table_weights = config["vocab_size"] * config["hidden_size"]
    assert (artifacts["int4"] / "embed_tokens.onnx.data").stat().st_size == table_weights * 10 // 8
    assert (artifacts["int4-exact-table4"] / "embed_tokens.onnx.data").stat().st_size == table_weights * 5 // 8


def test_an_8_bit_token_table_is_one_copy_read_by_both_graphs(checkpoints, tmp_path):
    # --token-table int8: 8-bit codes plus one fp32 scale per 32 weights, 9/32 of fp32, in the one
    # data file the embedding's GatherBlockQuantized and the tied lm_head's MatMulNBits both read.
    import onnx

    out = tmp_path / "int8-table"
    export(checkpoints["native"], out, ExportOptions(token_table="int8"), show_progress=False)
    config = json.loads((checkpoints["native"] / "config.json").read_text())
    table_weights = config["vocab_size"] * config["hidden_size"]
    assert (out / "embed_tokens.onnx.data").stat().st_size == table_weights * 9 // 8
    bits = {}
    for name, op in (("embedding.onnx", "GatherBlockQuantized"), ("decoder.onnx", "MatMulNBits")):
        graph = onnx.load(str(out / name), load_external_data=False).graph
        node = next(n for n in graph.node if n.op_type == op and n.name in ("embed_tokens", "lm_head"))
        bits[name] = next(a.i for a in node.attribute if a.name == "bits")
    assert bits == {"embedding.onnx": 8, "decoder.onnx": 8}


def test_tied_lm_head_shares_the_embedding_bytes(artifacts):
    import onnx

    for name in ("int4", "fp32-native"):
        decoder = onnx.load(str(artifacts[name] / "decoder.onnx"), load_external_data=False)
        embedding = onnx.load(str(artifacts[name] / "embedding.onnx"), load_external_data=False)

        def shared(model):
            return {(e.value for e in t.external_data if e.key == "offset").__next__()
                    for t in model.graph.initializer
                    if any(e.key == "location" and e.value == "embed_tokens.onnx.data" for e in t.external_data)}

        assert shared(decoder) and shared(decoder) == shared(embedding)


@pytest.mark.parametrize("dtype", ["F16", "F32"])
def test_fp16_and_fp32_checkpoints_export_like_bf16(tmp_path, dtype):
    # Values are drawn in fp32 and stored rounded; the export only has to read each width.
    checkpoint = write_reference(tmp_path / "ckpt", dtype=dtype)
    manifest = export(checkpoint, tmp_path / "out", show_progress=False)
    assert manifest.model.vocab_size == 200064


def test_untied_checkpoint_exports_its_own_lm_head(tmp_path):
    config = tiny_config()
    config["tie_word_embeddings"] = False
    checkpoint = write_reference(tmp_path / "ckpt", config=config)
    manifest = export(checkpoint, tmp_path / "out", show_progress=False)
    assert manifest.model.tie_word_embeddings is False


@pytest.fixture()
def broken_copy(checkpoints, tmp_path):
    def copy():
        target = tmp_path / "broken"
        shutil.copytree(checkpoints["native"], target)
        return target
    return copy


def test_missing_checkpoint(tmp_path):
    with pytest.raises(Phi4MMError, match="does not exist"):
        export(tmp_path / "nowhere", tmp_path / "out", show_progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(Phi4MMError, match="no config.json"):
        export(tmp_path / "empty", tmp_path / "out", show_progress=False)


def test_corrupt_weights(broken_copy, tmp_path):
    folder = broken_copy()
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(Phi4MMError, match="truncated"):
        export(folder, tmp_path / "out", show_progress=False)
    weights.write_bytes(b"not a safetensors file")
    with pytest.raises(Phi4MMError, match="not a readable safetensors"):
        export(folder, tmp_path / "out", show_progress=False)


def test_missing_weights(broken_copy, tmp_path):
    folder = broken_copy()
    (folder / "model.safetensors").unlink()
    with pytest.raises(Phi4MMError, match="no .safetensors weights"):
        export(folder, tmp_path / "out", show_progress=False)


def test_checkpoint_of_another_architecture(broken_copy, tmp_path):
    folder = broken_copy()
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "llama"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(Phi4MMError, match="'llama' model, not Phi-4-multimodal"):
        export(folder, tmp_path / "out", show_progress=False)


def test_weights_that_do_not_fit_the_config(broken_copy, tmp_path):
    folder = broken_copy()
    config = json.loads((folder / "config.json").read_text())
    config["intermediate_size"] *= 2
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(Phi4MMError, match="do not belong to this config"):
        export(folder, tmp_path / "out", show_progress=False)


def test_adapter_folder_from_another_model(broken_copy, tmp_path):
    config = tiny_config()
    config["intermediate_size"] = 256
    other = write_reference(tmp_path / "other", config=config)
    folder = broken_copy()
    shutil.rmtree(folder / "speech-lora")
    shutil.copytree(other / "speech-lora", folder / "speech-lora")
    with pytest.raises(Phi4MMError, match="the adapter does not belong to this model"):
        export(folder, tmp_path / "out", show_progress=False)


def test_bad_options(checkpoints, tmp_path):
    with pytest.raises(Phi4MMError, match="adapter precision"):
        export(checkpoints["native"], tmp_path / "out", ExportOptions(adapter_precision="int3"), show_progress=False)


def test_token_table_bits_follow_the_target_and_refuse_what_it_cannot_run():
    from phi4mm_edge.export.graph_blocks import Precision

    from types import SimpleNamespace

    tied, untied = SimpleNamespace(tie_word_embeddings=True), SimpleNamespace(tie_word_embeddings=False)
    assert ExportOptions().token_table_bits == 4 and ExportOptions().table == "int4-rescored"
    assert ExportOptions().rescore_top(tied) == 32 and ExportOptions().rescore_top(untied) == 0
    assert ExportOptions(token_table="int4").rescore_top(tied) == 0
    assert ExportOptions(token_table="int8").token_table_bits == 8
    assert ExportOptions(target="npu").token_table_bits == 4 and ExportOptions(target="npu").rescore_top(tied) == 0
    for table in ("int8", "int4-rescored"):
        with pytest.raises(Phi4MMError, match=f"--token-table {table}: the NPU's graphs take int4"):
            ExportOptions(target="npu", token_table=table)
    with pytest.raises(Phi4MMError, match="fp32 export keeps it in fp32"):
        ExportOptions(precision=Precision(weights="fp32"), token_table="int8")


def test_every_target_is_one_export_row_that_agrees_with_the_manifest():
    """A target is a row (export/targets.py): one per name the manifest knows, its static shapes
    as the manifest records them, and no target names compared anywhere else in export/."""
    from phi4mm_edge.export.targets import EXPORT_TARGETS
    from phi4mm_edge.manifest import STATIC_SHAPES, TARGETS

    assert tuple(EXPORT_TARGETS) == TARGETS
    assert {name: row.static_shapes for name, row in EXPORT_TARGETS.items()} == STATIC_SHAPES
    export_folder = Path(__file__).resolve().parents[1] / "export"
    comparisons = [f"{path.name}:{number}" for path in sorted(export_folder.glob("*.py")) if path.name != "targets.py"
                   for number, line in enumerate(path.read_text().splitlines(), 1)
                   if re.search(r"target\s*[!=]=|[!=]=\s*\"(cpu|npu|dml)\"", line)]
    assert comparisons == []


@pytest.mark.parametrize("options", [ExportOptions(prefill="int8"), ExportOptions(target="npu"),
                                     ExportOptions(target="dml")], ids=["cpu", "npu", "dml"])
def test_every_graph_input_and_output_name_is_one_artifact_py_knows(checkpoints, tmp_path, options):
    """artifact.py is the one home of the graphs' names: export writes no other, so the runtime,
    which binds by those names, cannot drift from it."""
    import onnx

    from phi4mm_edge import artifact

    manifest = export(checkpoints["native"], tmp_path / "out", options, show_progress=False)
    for graph_file in manifest.graph_files():
        graph = onnx.load(str(tmp_path / "out" / graph_file), load_external_data=False).graph
        unknown = [value.name for value in [*graph.input, *graph.output] if not artifact.is_graph_name(value.name)]
        assert unknown == [], graph_file

"""The trained reference model: `make-reference --trained` writes it from the shipped compact files
without torch, in both layouts with identical weights; the PyTorch reference answers its held-out
questions; its held-out task set travels into the artifact and refuses any other model; and the
training is deterministic."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from phi4mm_edge.errors import Phi4MMError
from phi4mm_edge.export import architecture
from phi4mm_edge.export.checkpoint import Checkpoint
from phi4mm_edge.export.reference_checkpoint import write_reference
from phi4mm_edge.export.trained_reference import DATA, TOKENIZER, read_model
from phi4mm_edge.tasks import catalog, scenes, text_tasks, world
from phi4mm_edge.tasks.items import is_heldout
from phi4mm_edge.tasks.task_set import load_task_set

TORCH_MODULES = ("torch", "transformers", "peft", "torchvision")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """{'native': path, 'original': path}, written by the command line in a fresh process that
    must not have imported torch (or transformers, peft) when it is done."""
    root = tmp_path_factory.mktemp("trained")
    folders = {layout: root / layout for layout in ("native", "original")}
    code = textwrap.dedent(f"""
        import sys
        from phi4mm_edge.cli import main
        for layout, folder in {({k: str(v) for k, v in folders.items()})!r}.items():
            try:
                main(["make-reference", "--trained", "--layout", layout, folder])
            except SystemExit as done:
                assert not done.code, done.code
        loaded = sorted(n for n in sys.modules if n.split(".")[0] in {TORCH_MODULES!r})
        assert not loaded, loaded
    """)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300, capture_output=True)
    return folders


def test_both_layouts_hold_identical_weights(trained):
    native, original = Checkpoint(trained["native"]), Checkpoint(trained["original"])
    assert (native.layout, original.layout) == ("native", "original")
    assert native.text == original.text and native.vision == original.vision and native.audio == original.audio
    config = json.loads((trained["native"] / "config.json").read_text())
    config["lora"] = {}
    for name in architecture.all_tensors(config):
        np.testing.assert_array_equal(native.tensor(name), original.tensor(name), err_msg=name)
    for adapter in ("vision", "speech"):
        for (key, a, b), (key2, a2, b2) in zip(native.lora(adapter).pairs(), original.lora(adapter).pairs()):
            assert key == key2
            np.testing.assert_array_equal(a, a2)
            np.testing.assert_array_equal(b, b2)


def test_the_shipped_weights_are_the_stored_ones_and_untrained_rows_are_tiny(trained):
    """The trained token rows come back exactly (bf16 in, bf16 out) and every other row is
    below 0.01: far from the trained rows' scale, so no untrained row ever wins an argmax."""
    model = read_model()
    table = Checkpoint(trained["native"]).tensor("model.embed_tokens.weight")
    trained_rows = np.zeros(len(table), bool)
    trained_rows[model["token_ids"]] = True
    assert table.shape == (200064, model["config"]["hidden_size"])
    assert np.abs(table[~trained_rows]).max() < 0.01
    assert np.linalg.norm(table[trained_rows], axis=1).min() > 10 * np.linalg.norm(table[~trained_rows], axis=1).max()


def test_the_task_set_is_bound_to_the_trained_model_and_refuses_others(trained, tmp_path):
    tasks = load_task_set(trained["native"])
    assert {t.kind for t in tasks.tasks} == set(catalog.KINDS)
    assert load_task_set(trained["original"]).tasks == tasks.tasks
    random = write_reference(tmp_path / "random")
    with pytest.raises(Phi4MMError, match=r"no held-out task set.*make-reference --trained"):
        load_task_set(random)
    for name in ("heldout_tasks.json", "heldout_media.zip"):  # the trained set copied beside another model
        (random / name).write_bytes((trained["native"] / name).read_bytes())
    with pytest.raises(Phi4MMError, match="not the trained reference model"):
        load_task_set(random)
    with pytest.raises(Phi4MMError, match="not the trained reference model"):
        load_task_set(trained["native"], model_folder=random)


def test_export_carries_the_task_set_into_the_artifact(trained, tmp_path):
    from phi4mm_edge.export.convert import export
    from phi4mm_edge.manifest import read_manifest

    manifest = export(trained["native"], tmp_path / "artifact", show_progress=False)
    assert {"heldout_tasks.json", "heldout_media.zip"} <= set(manifest.files)
    assert load_task_set(tmp_path / "artifact").tasks == load_task_set(trained["native"]).tasks
    export(write_reference(tmp_path / "random"), tmp_path / "random-artifact", show_progress=False)
    assert "heldout_tasks.json" not in read_manifest(tmp_path / "random-artifact").files
    with pytest.raises(Phi4MMError, match="no held-out task set"):
        load_task_set(tmp_path / "random-artifact")


def test_training_never_sees_a_held_out_item():
    rng = np.random.default_rng(0)
    for kind in catalog.KINDS.values():
        if kind.modality != "text" and kind.name not in ("vision_digits", "vision_shape"):
            continue  # rendering and speaking are slow; the split rule is one function for every kind
        assert not any(is_heldout(kind.generate(rng, False).key) for _ in range(50)), kind.name
        assert all(is_heldout(kind.generate(rng, True).key) for _ in range(5)), kind.name


def test_every_held_out_fact_phrasing_has_its_fact_trained_in_another():
    for person in world.PEOPLE:
        for relation, phrasings in world.FACT_QUESTIONS.items():
            keys = [f"facts:{person}:{relation}:{i}" for i in range(len(phrasings))]
            assert not all(is_heldout(key) for key in keys), (person, relation)


def test_the_crop_layouts_give_the_runtimes_token_counts():
    """hd_token_count (training) places as many image tokens as the runtime's preprocessing for
    every picture size the tasks draw, at the trained model's crop size."""
    pytest.importorskip("transformers")
    from phi4mm_edge.manifest import VisionEntry
    from phi4mm_edge.runtime.image import preprocess
    from phi4mm_edge.training.batches import Preprocessor, Vocabulary

    config = read_model()["config"]
    vision = config["vision_config"]
    entry = VisionEntry(graph="vision.onnx", crop_size=vision["crop_size"], patch_size=vision["patch_size"],
                        max_crops=36,
                        mean=0.5, std=0.5, encoder={})
    preprocessor = Preprocessor(Vocabulary((DATA / TOKENIZER).read_text()), config)
    for width, height in scenes.SIZES:
        picture = scenes.render(scenes.Scene(width, height))
        assert preprocessor.image_inputs([picture])[1] == preprocess(picture, entry).num_tokens, (width, height)


def test_text_generators_give_exact_answers():
    rng = np.random.default_rng(3)
    task = text_tasks.reverse(rng, False)
    assert task.answer.split() == task.prompt.removeprefix("Reverse: ").split()[::-1]
    task = text_tasks.add(rng, False)
    a, b = (int(x) for x in task.prompt.removeprefix("What is ").removesuffix("?").split(" plus "))
    assert task.answer == str(a + b)


def test_training_is_deterministic():
    """A few steps of each stage, twice in one process: the same weights bit for bit."""
    pytest.importorskip("peft")
    from phi4mm_edge.training import stages
    from phi4mm_edge.training.model import build_model, trained_tensors
    from phi4mm_edge.training.train_reference import MODEL_SEED, train

    schedule = (stages.Stage("text", 2, 4, 1e-3), stages.Stage("vision", 1, 2, 1e-3),
                stages.Stage("speech", 1, 2, 1e-3))
    tokenizer = (DATA / TOKENIZER).read_text()
    runs = []
    for _ in range(2):
        model, vocabulary, config, _, _ = train(schedule, pool_per_kind=1, log=None, look=False,
                                                tokenizer_json=tokenizer,
                                                encoder_pretraining={"vision": (1, 2, 3e-3), "audio": (2, 2, 3e-3)})
        runs.append(trained_tensors(model, config))
    assert runs[0].keys() == runs[1].keys()
    for name, values in runs[0].items():
        np.testing.assert_array_equal(values, runs[1][name], err_msg=name)
    untrained = trained_tensors(build_model(config, vocabulary, MODEL_SEED), config)
    for part in ("model.layers.0.mlp.down_proj.weight",
                 "model.embed_tokens_extend.image_embed.img_projection_up.weight",
                 "model.embed_tokens_extend.audio_embed.up_proj_for_speech.weight"):
        assert not np.array_equal(runs[0][part], untrained[part]), f"{part}: the stage did not train"

"""Answer quality of exports of the trained reference model, measured by eval on a few held-out
items of each kind (the quality table in benchmarks/RESULTS.md runs all of them): the fp32 export
answers as the PyTorch reference does, the default export keeps its accuracy, the outlier variant
is the same function in float, and eval refuses what it cannot score."""

import json
import subprocess
import sys

import numpy as np
import pytest

from phi4mm_edge.errors import Phi4MMError
from phi4mm_edge.export.convert import export
from phi4mm_edge.export.graph_blocks import Precision
from phi4mm_edge.export.options import ExportOptions
from phi4mm_edge.export.trained_reference import OUTLIER_FACTOR, outlier_channels, write_trained_reference
from phi4mm_edge.benchmarks.evaluate import evaluate
from phi4mm_edge.export.checkpoint import Checkpoint
from phi4mm_edge.runtime import Phi4MMEdge
from phi4mm_edge.tasks import catalog
from phi4mm_edge.tasks.reference import read_reference
from phi4mm_edge.tasks.task_set import load_task_set

LIMIT = 2  # items of each of the 16 kinds: 32 items, ~20 s per eval here


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("quality")
    return {"trained": write_trained_reference(root / "trained"),
            "outliers": write_trained_reference(root / "outliers", outliers=True), "root": root}


@pytest.fixture(scope="module")
def exports(trained):
    root = trained["root"]
    made = {}

    def make(model: str, name: str, options: ExportOptions | None = None):
        if (model, name) not in made:
            export(trained[model], root / f"{model}-{name}", options or ExportOptions(), show_progress=False)
            made[model, name] = root / f"{model}-{name}"
        return made[model, name]
    return make


FP32 = ExportOptions(precision=Precision(weights="fp32"))


@pytest.mark.parametrize("model", ["trained", "outliers"])
def test_the_fp32_export_answers_as_the_pytorch_reference(exports, model):
    """Goal (issue 25): the same answers as the PyTorch reference on >= 99% of items, KL < 1e-4.
    fp32 graphs differ from PyTorch only by summation order (~1e-6 relative on logits)."""
    result = evaluate(exports(model, "fp32", FP32), "cpu", limit=LIMIT, progress=False)
    assert result["all"]["items"] == LIMIT * len(catalog.KINDS)
    assert result["all"]["agreement"] >= 0.99, result["all"]
    assert result["all"]["mean_kl"] < 1e-4, result["all"]


# The default export's accuracy per modality, as a share of the fp32 export's on the same items.
# Bound from the measurement (benchmarks/RESULTS.md, all 500 held-out items: the default keeps
# 1.00 of fp32's accuracy on every modality of both models, KL 5.78e-4, 93% of answers token for
# token the reference's); on 2 items per kind one item of a modality's 8-12 can still flip (7% of
# answers differ somewhere from the reference's), so the bound here is fp32's count minus one item.
def test_the_default_export_keeps_the_fp32_accuracy_per_modality(exports):
    fp32 = evaluate(exports("trained", "fp32", FP32), "cpu", limit=LIMIT, progress=False)
    default = evaluate(exports("trained", "default"), "cpu", limit=LIMIT, progress=False)
    for modality, scores in fp32["modalities"].items():
        right = scores["accuracy"] * scores["items"]
        assert default["modalities"][modality]["accuracy"] * scores["items"] >= right - 1 - 1e-9, modality
    assert default["all"]["mean_kl"] > fp32["all"]["mean_kl"]  # int4 is measured, not free


@pytest.mark.parametrize("table", ["int4-rescored", "int8"])
def test_a_rescored_or_8_bit_token_table_brings_the_answers_closer_to_the_reference(exports, table):
    """The plain int4 table is the int4 export's largest single loss (quant_sensitivity). Measured
    on all 500 items with the norm gains folded: KL 2.67e-3 with it, 5.78e-4 rescored (the
    default), 6.10e-4 with --token-table int8; agreement 78% against 93%. On these 32 items the
    margin is smaller but the order must hold: under 0.75x the int4 table's KL, agreement not lower."""
    table4 = evaluate(exports("trained", "table4", ExportOptions(token_table="int4")), "cpu", limit=LIMIT,
                      progress=False)
    better = evaluate(exports("trained", table, ExportOptions(token_table=table)), "cpu", limit=LIMIT, progress=False)
    assert better["all"]["mean_kl"] < 0.75 * table4["all"]["mean_kl"], (better["all"], table4["all"])
    assert better["all"]["agreement"] >= table4["all"]["agreement"]


def test_folded_norm_gains_are_the_same_function_in_float(exports, trained):
    """--norm-gains fold on an fp32 export of the outlier variant: the gains move into the qkv and
    gate_up columns, the adapter files stay as the checkpoint has them and the decoder scales
    their input back. Teacher-forced logits on text, image and audio items equal the unfolded
    export's up to fp32 summation order (1e-4 relative: the logits' own run-to-run wobble across
    graphs is ~1e-6, a wrong or missing scale moves them by tens of percent)."""
    plain = Phi4MMEdge.load(exports("outliers", "fp32", FP32), provider="cpu")
    folded_artifact = exports("outliers", "fp32-folded", ExportOptions(precision=Precision(weights="fp32"),
                                                                       norm_gains="fold"))
    folded = Phi4MMEdge.load(folded_artifact, provider="cpu")
    assert folded.manifest.precision.norm_gains_folded and not plain.manifest.precision.norm_gains_folded
    task_set, reference = load_task_set(folded_artifact), read_reference(folded_artifact)
    for task in [t for t in task_set.tasks if t.kind in ("add", "vision_colour", "speech_word")][::12]:
        images = [task_set.media(n) for n in task.images]
        audios = [task_set.media(n) for n in task.audios]
        ids = [int(i) for i in reference.answers[task.id]]
        logits = [m.forced_logits(m.prompt(task.messages, images, audios), ids) for m in (plain, folded)]
        assert np.linalg.norm(logits[1] - logits[0]) < 1e-4 * np.linalg.norm(logits[0]), task.id


def test_folding_the_norm_gains_removes_the_outlier_variants_int4_loss(exports):
    """The default int4 export folds the gains (norm_gains.py); `keep` is the export before it (both
    with the plain int4 token table here, as measured). Measured on all 500 items of the outlier
    variant: KL 2.67e-3 folded against 9.01e-3 kept
    (the trained model's own default: 2.86e-3), 0.30x. On these 32 items it measured 0.56x
    (1.86e-3 against 3.32e-3); the bound, 0.7x, leaves room for the few items' spread while a fold
    that did nothing (1.0x) or a wrong one (larger) fails."""
    folded = evaluate(exports("outliers", "folded-table4", ExportOptions(token_table="int4")), "cpu", limit=LIMIT,
                      progress=False)
    kept = evaluate(exports("outliers", "kept-table4", ExportOptions(norm_gains="keep", token_table="int4")), "cpu",
                    limit=LIMIT, progress=False)
    assert folded["all"]["mean_kl"] < 0.7 * kept["all"]["mean_kl"], (folded["all"], kept["all"])


def test_the_outlier_variant_is_the_same_function_with_128x_channels(trained):
    """RMSNorm gains of the chosen channels x128, the columns reading them /128: in float the
    product is unchanged (exactly: powers of two in bf16), and the norm outputs carry 128x channels."""
    plain, spiky = Checkpoint(trained["trained"]), Checkpoint(trained["outliers"])
    hidden = plain.text.hidden_size
    channels = outlier_channels(hidden)
    x = np.random.default_rng(0).standard_normal((4, hidden)).astype(np.float32)
    for norm, reader in (("input_layernorm", "self_attn.qkv_proj"), ("post_attention_layernorm", "mlp.gate_up_proj")):
        for layer in range(plain.text.num_layers):
            gains = [c.tensor(f"model.layers.{layer}.{norm}.weight") for c in (plain, spiky)]
            weights = [c.tensor(f"model.layers.{layer}.{reader}.weight") for c in (plain, spiky)]
            np.testing.assert_array_equal(gains[1][channels], gains[0][channels] * OUTLIER_FACTOR)
            np.testing.assert_array_equal((x * gains[1]) @ weights[1].T, (x * gains[0]) @ weights[0].T)
    for adapter in ("vision", "speech"):
        for ((_, target), a, b), (_, a2, b2) in zip(plain.lora(adapter).pairs(), spiky.lora(adapter).pairs()):
            if target.endswith(("qkv_proj", "gate_up_proj")):
                np.testing.assert_array_equal(a2[:, channels] * OUTLIER_FACTOR, a[:, channels])
            np.testing.assert_array_equal(b, b2)


def test_forced_logits_are_the_logits_generation_chooses_from(exports, trained):
    """Teacher forcing with the model's own greedy answer gives back, at every position, logits
    whose argmax is the token greedy generation chose (same graphs, cache and steps)."""
    artifact = exports("trained", "default")
    model = Phi4MMEdge.load(artifact, provider="cpu")
    task_set = load_task_set(artifact)
    for task in [t for t in task_set.tasks if t.kind in ("facts", "vision_colour", "speech_word")][::10]:
        images = [task_set.media(n) for n in task.images]
        audios = [task_set.media(n) for n in task.audios]
        generation = model.generate(task.messages, images, audios, max_new_tokens=16, temperature=0)
        generation.text()
        ids = generation.result.token_ids
        model.clear_cache()
        logits = model.forced_logits(model.prompt(task.messages, images, audios), ids)
        assert logits.shape == (len(ids), model.text.vocab_size)
        assert logits.argmax(axis=-1).tolist() == ids, task.id
    with pytest.raises(Phi4MMError, match="forced ids"):
        model.forced_logits(model.prompt("Hi"), [])


def run_eval(*args):
    return subprocess.run([sys.executable, "-m", "phi4mm_edge.cli", "eval", *map(str, args), "--quiet"],
                          capture_output=True, text=True, timeout=600)


def test_eval_refuses_what_it_cannot_score(exports, trained, artifacts, tmp_path):
    """An artifact without a task set (the random reference), a task file that does not parse, a
    damaged reference file, an artifact of another model: exit 2 and a line naming the fix."""
    done = run_eval(artifacts["int4"])
    assert done.returncode == 2 and "no held-out task set" in done.stderr and "make-reference --trained" in done.stderr
    artifact = exports("trained", "default")
    broken = tmp_path / "broken"
    broken.mkdir()
    for path in artifact.iterdir():
        (broken / path.name).symlink_to(path)
    (broken / "heldout_tasks.json").unlink()
    (broken / "heldout_tasks.json").write_text("{not json")
    done = run_eval(broken)
    assert done.returncode == 2 and "damaged" in done.stderr, done.stderr
    (broken / "heldout_tasks.json").unlink()
    (broken / "heldout_tasks.json").symlink_to(artifact / "heldout_tasks.json")
    (broken / "heldout_reference.npz").unlink()
    (broken / "heldout_reference.npz").write_bytes(b"PK\x03\x04 damaged")
    with pytest.raises(Phi4MMError, match="damaged"):
        read_reference(broken)
    data = json.loads((artifact / "heldout_tasks.json").read_text())
    data["model"]["config_sha256"] = "0" * 64
    other = tmp_path / "other"
    other.mkdir()
    (other / "heldout_tasks.json").write_text(json.dumps(data))
    (other / "heldout_media.zip").symlink_to(artifact / "heldout_media.zip")
    with pytest.raises(Phi4MMError, match="not the trained reference model"):
        load_task_set(other, artifact)

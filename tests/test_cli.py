"""The console command end to end: make-reference, export, run, demo; the NPU target and
provider options; and the packaging."""

import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from test_runtime import phi4mm_edge

from phi4mm_edge.export.convert import export
from phi4mm_edge.manifest import read_manifest

REPO = Path(__file__).resolve().parents[1]


def test_make_reference_export_run(tmp_path):
    phi4mm_edge("make-reference", tmp_path / "ckpt", "--layout", "original", "--seed", 3)
    assert (tmp_path / "ckpt" / "model.safetensors.index.json").is_file()
    out = phi4mm_edge("export", tmp_path / "ckpt", tmp_path / "art", "--block-size", 64, "--asymmetric",
                      "--adapter-precision", "fp16", "--quiet").stdout
    assert "adapters: vision, speech" in out
    manifest = json.loads((tmp_path / "art" / "manifest.json").read_text())
    assert manifest["precision"]["block_size"] == 64 and not manifest["precision"]["symmetric"]
    assert manifest["source"]["layout"] == "original"
    result = json.loads(phi4mm_edge("run", tmp_path / "art", "--prompt", "hello", "--system", "Be brief.",
                                    "--adapter", "speech", "--max-new-tokens", 5, "--json").stdout)
    assert result["adapter"] == "speech" and 1 <= len(result["token_ids"]) <= 5
    streamed = phi4mm_edge("run", tmp_path / "art", "--prompt", "hello", "--max-new-tokens", 5,
                           "--temperature", 0.8, "--top-p", 0.9, "--top-k", 50, "--seed", 1).stdout
    assert streamed.strip()


def test_export_target_npu_writes_the_static_shapes_asked_for(checkpoints, tmp_path):
    out = phi4mm_edge("export", checkpoints["native"], tmp_path / "npu", "--target", "npu", "--npu-context", 128,
                      "--npu-chunk", 16, "--quiet").stdout
    assert "128 positions of KV cache" in out
    manifest = read_manifest(tmp_path / "npu")
    assert manifest.target == "npu"
    assert (manifest.npu.context, manifest.npu.chunk) == (128, 16)


def test_export_refuses_options_that_do_not_fit_the_target_before_writing(checkpoints, tmp_path):
    npu_int8 = phi4mm_edge("export", checkpoints["native"], tmp_path / "a", "--target", "npu", "--prefill", "int8",
                           "--quiet", check=False)
    assert npu_int8.returncode == 2
    assert "phi4mm-edge: error: --prefill int8 is a CPU graph" in npu_int8.stderr
    cpu_shapes = phi4mm_edge("export", checkpoints["native"], tmp_path / "b", "--npu-chunk", 16, "--quiet", check=False)
    assert cpu_shapes.returncode == 2 and "add --target npu" in cpu_shapes.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_provider_qnn_with_a_cpu_artifact_says_to_export_for_the_npu(checkpoints, tmp_path):
    export(checkpoints["native"], tmp_path / "cpu", show_progress=False)  # ~1 s; the `artifacts` fixture makes six
    # Never a silent run on the CPU when the NPU was asked for (whether or not onnxruntime-qnn is installed).
    result = phi4mm_edge("run", tmp_path / "cpu", "--provider", "qnn", "--prompt", "hi", check=False)
    assert result.returncode == 2 and not result.stdout
    assert result.stderr.startswith("phi4mm-edge: error: --provider qnn:") and "--target npu" in result.stderr


def test_an_unknown_provider_is_refused_by_the_parser(tmp_path):
    result = phi4mm_edge("run", tmp_path, "--provider", "gpu", "--prompt", "hi", check=False)
    assert result.returncode == 2
    assert "argument --provider: invalid choice: 'gpu'" in result.stderr


def project_modules_after(parse: str) -> set[str]:
    """The phi4mm_edge modules a fresh interpreter has imported after running `parse`."""
    code = f"import sys; from phi4mm_edge.cli import build_parser; {parse}; print(' '.join(sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    return {m for m in loaded if m.startswith("phi4mm_edge.")}


def test_a_command_imports_only_its_own_module():
    """`run` works with the runtime's dependencies alone: parsing its command line imports no other
    command's module (export/, benchmarks/, the other apps), and `phi4mm-edge --help` imports none."""
    run = project_modules_after("build_parser('run').parse_args(['run', '--prompt', 'hi'])")
    assert "phi4mm_edge.apps.run" in run
    other_apps = {f"phi4mm_edge.apps.{app}" for app in ("demo", "chat", "transcribe", "camera", "serve")}
    others = ("phi4mm_edge.export", "phi4mm_edge.benchmarks")  # export_command too
    assert not {m for m in run if m in other_apps or m.startswith(others)}, run
    listing = project_modules_after("build_parser()")
    assert not {m for m in listing if m.startswith(("phi4mm_edge.runtime", "phi4mm_edge.export"))}, listing


def test_demo_asks_the_trained_model_with_each_adapter_and_marks_its_answers(tmp_path):
    """The demo answers a held-out text, picture and clip question with the bundled trained model,
    each routed to its adapter, and says of each answer whether it is the expected one."""
    first = phi4mm_edge("demo", "--cache-dir", tmp_path)
    out = first.stdout
    assert "trained on the project's synthetic tasks" in out and "exporting" in first.stderr  # progress on stderr
    for modality, adapter in (("text", "none"), ("image", "vision"), ("audio", "speech")):
        assert f"[{modality}, adapter: {adapter}]" in out
    verdicts = re.findall(r"-> '.*': (right|WRONG)", out)
    assert len(verdicts) == 3
    assert f"{verdicts.count('right')} of 3 right" in out
    again = phi4mm_edge("demo", "--cache-dir", tmp_path)
    assert "exporting" not in again.stderr + again.stdout  # the second run reuses the verified artifact
    assert again.stdout.count("right") == out.count("right")  # greedy: the same answers


def test_the_wheel_installs_only_the_phi4mm_edge_package(tmp_path):
    # Built from a copy: setuptools writes build/ next to the sources, which must stay clean.
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".git", ".venv*", "build", "*.egg-info", "__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(source)],
                   check=True, timeout=300)
    wheel = next(tmp_path.glob("phi4mm_edge-*.whl"))
    top_level = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert {n for n in top_level if not n.endswith(".dist-info")} == {"phi4mm_edge"}
    names = zipfile.ZipFile(wheel).namelist()
    for sub in ("export", "runtime", "quant", "apps", "benchmarks"):
        assert f"phi4mm_edge/{sub}/__init__.py" in names
    assert "phi4mm_edge/apps/web/index.html" in names  # serve's page is package data
    assert "phi4mm_edge/benchmarks/peer_scripts/genai_run.py" in names  # bench runs the peers from the wheel too
    assert "phi4mm_edge/export/data/dml_operators.json" in names  # export --target dml checks its graphs against it

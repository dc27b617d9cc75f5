"""The console command end to end: make-reference, export, run, demo; and the packaging."""

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from test_runtime import phi4mm_edge

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


def test_demo_answers_with_each_adapter_and_says_the_weights_are_random(tmp_path):
    first = phi4mm_edge("demo", "--cache-dir", tmp_path, "--max-new-tokens", 6)
    out = first.stdout
    assert "RANDOM weights" in out and "exporting" in first.stderr  # progress goes to stderr
    for adapter in ("none", "vision", "speech"):
        assert f"[adapter: {adapter}]" in out
    assert out.count("tokens/s") == 3
    again = phi4mm_edge("demo", "--cache-dir", tmp_path, "--max-new-tokens", 6)
    assert "exporting" not in again.stderr + again.stdout  # the second run reuses the verified artifact


def test_the_wheel_installs_only_the_phi4mm_edge_package(tmp_path):
    # Built from a copy: setuptools writes build/ next to the sources, which must stay clean.
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".git", ".venv*", "build", "*.egg-info", "__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(source)],
                   check=True, timeout=300)
    wheel = next(tmp_path.glob("phi4mm_edge-*.whl"))
    top_level = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert {n for n in top_level if not n.endswith(".dist-info")} == {"phi4mm_edge"}
    names = zipfile.ZipFile(wheel).namelist()
    for sub in ("export", "runtime", "quant", "apps", "benchmarks"):
        assert f"phi4mm_edge/{sub}/__init__.py" in names
    assert "phi4mm_edge/apps/web/index.html" in names  # serve's page is package data
    assert "phi4mm_edge/benchmarks/peer_scripts/genai_run.py" in names  # bench runs the peers from the wheel too

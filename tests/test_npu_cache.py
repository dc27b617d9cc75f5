"""Compiled NPU contexts (runtime/qnn.py) are used only when they were compiled from exactly
what is there now and are whole: the probe of issue 32 got silent wrong answers from a stale
context after a re-export (same .onnx bytes, other weights) and from a context binary overwritten
with noise (same size and mtime), and a traceback from two graphs' compiled files swapped."""

import os

import numpy as np
import pytest
from onnx import TensorProto

from phi4mm_edge.export.graph_files import write_graph
from phi4mm_edge.runtime import qnn
from phi4mm_edge.runtime.providers import session_options

ROWS, COLUMNS = 8, 256  # a weight large enough to live in the data file


def needs_qnn():
    if not qnn.available():
        pytest.fail("onnxruntime-qnn is part of the test environment (pip install -e '.[test]')")


def write_linear(folder, name: str, seed: int) -> dict:
    """y = x W for a seeded W stored in `<name>.data`; returns the graph's reads {data file: sha256}."""
    weight = np.random.default_rng(seed).standard_normal((COLUMNS, COLUMNS)).astype(np.float32)

    def build(graph):
        x = graph.input("x", TensorProto.FLOAT, [ROWS, COLUMNS])
        graph.op("MatMul", [x, graph.weight("w", weight)], outputs=["y"])
        graph.output("y", TensorProto.FLOAT, [ROWS, COLUMNS])

    write_graph(folder, f"{name}.onnx", build)
    from phi4mm_edge.artifact import sha256_of

    return {f"{name}.onnx.data": sha256_of(folder / f"{name}.onnx.data")}


def run(folder, name: str, reads: dict) -> tuple[np.ndarray, bool]:
    session, compiled = qnn.open_htp_session(folder / f"{name}.onnx", session_options, reads)
    x = np.linspace(-1, 1, ROWS * COLUMNS, dtype=np.float32).reshape(ROWS, COLUMNS)
    return session.run(None, {"x": x})[0], compiled


def binary_of(folder, name: str):
    return next(p for p in qnn.compiled_files(folder / f"{name}.onnx") if not p.name.endswith(".onnx"))


def test_a_compiled_context_is_reused_only_while_whole_and_from_the_same_inputs(tmp_path):
    needs_qnn()
    reads = write_linear(tmp_path, "a", seed=1)
    first, compiled = run(tmp_path, "a", reads)
    assert compiled
    again, compiled = run(tmp_path, "a", reads)
    assert not compiled
    np.testing.assert_array_equal(again, first)

    # The same .onnx bytes over other weights (a re-export of another checkpoint): compiled again.
    reads_b = write_linear(tmp_path, "a", seed=2)
    other, compiled = run(tmp_path, "a", reads_b)
    assert compiled and not np.allclose(other, first)

    # Noise written into the binary, same size and mtime: compiled again, the answer unchanged.
    binary = binary_of(tmp_path, "a")
    info = binary.stat()
    data = bytearray(binary.read_bytes())
    data[len(data) // 2:len(data) // 2 + 4096] = os.urandom(min(4096, len(data) - len(data) // 2))
    binary.write_bytes(bytes(data))
    os.utime(binary, ns=(info.st_atime_ns, info.st_mtime_ns))
    repaired, compiled = run(tmp_path, "a", reads_b)
    assert compiled
    np.testing.assert_array_equal(repaired, other)

    # Truncated, then deleted: compiled again each time.
    binary_of(tmp_path, "a").write_bytes(b"")
    assert run(tmp_path, "a", reads_b)[1]
    binary_of(tmp_path, "a").unlink()
    assert run(tmp_path, "a", reads_b)[1]


def test_two_graphs_compiled_files_swapped_are_compiled_again(tmp_path):
    needs_qnn()
    reads = {name: write_linear(tmp_path, name, seed) for name, seed in (("a", 1), ("b", 2))}
    expected = {name: run(tmp_path, name, reads[name])[0] for name in ("a", "b")}
    files = {name: qnn.compiled_files(tmp_path / f"{name}.onnx") for name in ("a", "b")}
    for path_a, path_b in zip(files["a"], files["b"]):
        swap = path_a.with_name("swap")
        path_a.rename(swap)
        path_b.rename(path_a)
        swap.rename(path_b)
    for name in ("a", "b"):
        output, compiled = run(tmp_path, name, reads[name])
        assert compiled
        np.testing.assert_array_equal(output, expected[name])


def test_an_export_into_a_previous_export_removes_the_contexts_compiled_from_it(checkpoints, tmp_path):
    """Contexts compiled from the previous export's graphs are the previous export's (the runtime
    would recompile them anyway: the first test)."""
    from phi4mm_edge.export.convert import export

    export(checkpoints["native"], tmp_path, show_progress=False)
    stale = [tmp_path / "decoder.qnn_ctx.onnx", tmp_path / "decoder.qnn_ctx_qnn.bin", tmp_path / "decoder.qnn_ctx.json"]
    for path in stale:
        path.write_bytes(b"compiled from the previous export")
    unrelated = tmp_path / "notes.qnn_ctx.txt"
    unrelated.write_text("not ours")
    export(checkpoints["native"], tmp_path, show_progress=False)
    assert not any(path.exists() for path in stale)
    assert unrelated.exists()

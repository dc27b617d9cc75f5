"""The NPU audio encoder (export/audio_encoder_npu.py, runtime/audio_npu.py): the static window
graph equals audio.onnx on the CPU, compiles for the QNN HTP with CPU fallback disabled, stays
close to the fp32 path in the HTP's fp16, and loads its cached compiled context the second time."""

from dataclasses import replace

import numpy as np
import onnx
import pytest

from phi4mm_edge import Phi4MMError
from phi4mm_edge.export.audio_encoder import MAX_CHUNK
from phi4mm_edge.export.audio_encoder_npu import WINDOW_GRAPH, WINDOW_TOKENS, build_audio_window_encoder
from phi4mm_edge.export.checkpoint import Checkpoint
from phi4mm_edge.export.graph_files import write_graph
from phi4mm_edge.export.graph_blocks import Precision
from phi4mm_edge.export.onnx_graph import IR_VERSION
from phi4mm_edge.manifest import read_manifest
from phi4mm_edge.runtime import qnn
from phi4mm_edge.runtime.audio import SAMPLE_RATE, load_audio
from phi4mm_edge.runtime.audio_encoder import AudioEncoder
from phi4mm_edge.runtime.audio_npu import ClipWindows
from phi4mm_edge.runtime.providers import session_options
from test_speech import espeak
from reference_steps import relative_l2

# The HTP simulator compiles and runs a 500-token window in ~7 s + ~13 s; a 16-token window
# (1.28 s of audio) takes well under a second each, so the HTP tests use it, with a clip that fits.
SHORT_WINDOW_TOKENS = 16
# Same math in the same fp32, summed in another order (plain-op attention with hidden keys vs the
# fused kernel): 1.8e-6 measured on features of magnitude ~2; 2e-5 leaves 10x room.
CPU_TOLERANCE = 2e-5
# The HTP runs the fp32 graph in fp16 (10-bit mantissa, ~5e-4 per rounding) through 2 conformer
# blocks and the projection: 0.31% (speech) and 0.27% (vision) relative L2 measured against fp32
# audio.onnx on the spoken clip; 1% bounds it with 3x room.
HTP_FP16_BOUND = 0.01
# The int4 graph on the HTP against the same int4 graph on the CPU at fp32 activations (accuracy
# level 0), so only the HTP's fp16 differs: 0.16% (speech) and 0.13% (vision) measured; 1% bounds it.
# (Against fp32 audio.onnx both are ~19%: the int4 rounding of the tiny random model's weights.)
HTP_INT4_BOUND = 0.01


@pytest.fixture(scope="module")
def audio_entry(artifacts):
    return read_manifest(artifacts["fp32-native"]).audio


@pytest.fixture(scope="module")
def windows(checkpoints, tmp_path_factory):
    """Window graphs, each in its own folder (its compiled HTP context is written beside it):
    "fp32" a whole reference chunk; "fp32-short" and "int4-short" SHORT_WINDOW_TOKENS tokens."""
    checkpoint = Checkpoint(checkpoints["native"])
    made = {}
    for name, precision, tokens in (("fp32", Precision(weights="fp32"), WINDOW_TOKENS),
                                    ("fp32-short", Precision(weights="fp32"), SHORT_WINDOW_TOKENS),
                                    ("int4-short", Precision(weights="int4", block_size=32, accuracy_level=0),
                                     SHORT_WINDOW_TOKENS)):
        folder = tmp_path_factory.mktemp(f"audio-window-{name}")
        write_graph(folder, WINDOW_GRAPH, lambda graph: build_audio_window_encoder(checkpoint, graph,
                                                                                   precision, tokens))
        made[name] = folder
    return made


def encoder(folder, entry, provider):
    """The NPU encoder over the window graph in `folder`, with the audio entry an NPU export
    writes for it (its window read off the graph's input)."""
    frames = (onnx.load(str(folder / WINDOW_GRAPH), load_external_data=False)
              .graph.input[0].type.tensor_type.shape.dim[1].dim_value)
    entry = replace(entry, graph=WINDOW_GRAPH, window_frames=frames - entry.compression_rate,
                    chunk_frames=MAX_CHUNK * entry.compression_rate)
    return AudioEncoder(folder, entry, session_options(), provider, graph=ClipWindows)


@pytest.fixture(scope="module")
def short_clip(tmp_path_factory):
    """~1 s of speech: 12 audio tokens, inside the short window."""
    return espeak("Hello there.", tmp_path_factory.mktemp("npu-audio") / "short.wav")


@pytest.fixture(scope="module")
def long_clip(short_clip):
    """45 s (563 tokens: two windows, the second one partly padding): the spoken clip at several
    gains, with a quiet gap after each."""
    speech = load_audio(short_clip)
    gap = np.zeros(SAMPLE_RATE // 4, np.float32)
    parts = [np.concatenate([speech * gain, gap]) for gain in np.linspace(0.2, 1.0, 37)]
    return np.concatenate(parts)[: 45 * SAMPLE_RATE], SAMPLE_RATE


@pytest.fixture(scope="module")
def htp(windows, audio_entry, short_clip):
    """The short window graphs opened on the HTP (compiled now: ~0.6 s each on the simulator) and
    the short clip's features in both projections ({name: (encoder, {vision_mode: features}, compiled)})."""
    pytest.importorskip("onnxruntime_qnn", reason="the QNN HTP plugin (pip install onnxruntime-qnn) is not installed")
    opened = {}
    for name in ("fp32-short", "int4-short"):
        before = qnn.compilations
        npu = encoder(windows[name], audio_entry, "qnn")
        audio = npu.prepare(short_clip)
        features = {mode: npu.features(audio, vision_mode=mode) for mode in (False, True)}
        opened[name] = npu, features, qnn.compilations - before  # graphs compiled by this open
    return opened


@pytest.mark.parametrize("vision_mode", [False, True])
def test_window_graph_equals_audio_onnx_on_the_cpu(artifacts, windows, audio_entry, short_clip, long_clip, vision_mode):
    """One window (the clip padded, the padding hidden) and two windows (a clip past one reference
    chunk) give audio.onnx's features, in both projections."""
    cpu = AudioEncoder(artifacts["fp32-native"], audio_entry, session_options(), "cpu")
    npu = encoder(windows["fp32"], audio_entry, "cpu")
    for clip in (short_clip, long_clip):
        audio = cpu.prepare(clip)
        expected, got = cpu.features(audio, vision_mode), npu.features(audio, vision_mode)
        assert got.shape == expected.shape == (audio.num_tokens, expected.shape[1])
        assert np.abs(got - expected).max() <= CPU_TOLERANCE
    assert audio.num_tokens > WINDOW_TOKENS  # the long clip did take two windows


def test_short_window_equals_audio_onnx_and_refuses_longer_clips(artifacts, windows, audio_entry,
                                                                 short_clip, long_clip):
    """A window shorter than the reference's chunk is exact for the clips it holds, and refuses
    longer ones with a message (its windows would not join: attention reaches across a chunk)."""
    cpu = AudioEncoder(artifacts["fp32-native"], audio_entry, session_options(), "cpu")
    npu = encoder(windows["fp32-short"], audio_entry, "cpu")
    audio = cpu.prepare(short_clip)
    assert np.abs(npu.features(audio) - cpu.features(audio)).max() <= CPU_TOLERANCE
    with pytest.raises(Phi4MMError, match="this NPU audio graph takes 1.28 s at most"):
        npu.features(npu.prepare(long_clip))


def test_window_graph_compiles_and_runs_on_the_htp(htp, windows):
    """Every node runs on the HTP: the session opens with CPU fallback disabled, fp32 and int4."""
    for name, (npu, features, compiled) in htp.items():
        assert compiled == 1
        assert onnx.load(str(windows[name] / WINDOW_GRAPH), load_external_data=False).ir_version == IR_VERSION
        for rows in features.values():
            assert rows.shape[0] == 12 and np.isfinite(rows).all()  # the clip's tokens, the window's padding trimmed


def test_htp_fp16_stays_close_to_the_cpu_fp32_path(htp, artifacts, windows, audio_entry, short_clip):
    cpu = AudioEncoder(artifacts["fp32-native"], audio_entry, session_options(), "cpu")
    int4_cpu = encoder(windows["int4-short"], audio_entry, "cpu")
    audio = cpu.prepare(short_clip)
    for mode in (False, True):
        assert relative_l2(htp["fp32-short"][1][mode], cpu.features(audio, mode)) <= HTP_FP16_BOUND
        assert relative_l2(htp["int4-short"][1][mode], int4_cpu.features(audio, mode)) <= HTP_INT4_BOUND


def test_second_open_loads_the_compiled_context_with_identical_features(htp, windows, audio_entry, short_clip):
    before = qnn.compilations
    again = encoder(windows["fp32-short"], audio_entry, "qnn")
    again.session.open()
    assert qnn.compilations == before  # the cached context, not a compile
    audio = again.prepare(short_clip)
    for mode in (False, True):
        assert np.array_equal(again.features(audio, mode), htp["fp32-short"][1][mode])

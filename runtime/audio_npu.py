"""The audio encoder of an NPU artifact (export/audio_encoder_npu.py): a clip -> audio_features
rows, through a static graph that takes one fixed window of feature frames per run.

Each window is fed with the time_reduction (= compression_rate) frames before it as context,
a frame mask (1 on the clip's frames) and a key mask (the rows attention may see). A clip up to
one window runs once, its padding hidden from attention; a longer clip runs window by window
when a window is exactly the reference's chunk (the reference encodes such chunks independently,
its last one zero-padded, and the padded rows are keys there); the windows' tokens are
concatenated and trimmed to the clip's. The graph returns both projections; `vision_mode` picks one.
"""

from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from ..artifact import FRAME_MASK, INPUT_FEATURES, KEY_MASK, SPEECH_FEATURES, VISION_SPEECH_FEATURES
from ..errors import Phi4MMError
from ..manifest import AudioEntry
from .audio import HOP_LENGTH, SAMPLE_RATE, token_count
from .audio_encoder import AudioInput
from .encoder_session import LazySession

OUTPUTS = {False: SPEECH_FEATURES, True: VISION_SPEECH_FEATURES}  # by vision_mode


@dataclass
class WindowFeed:
    """One run of the window graph: its inputs, and how many of its output rows are the clip's."""

    inputs: dict[str, np.ndarray]
    rows: int


def window_feeds(features: np.ndarray, window_frames: int, context: int, chunk_frames: int) -> list[WindowFeed]:
    """log-mel [frames, bins] -> the window graph's runs: window k covers frames
    [k * window_frames, (k + 1) * window_frames) with `context` frames before it. Several
    windows only when `window_frames` == `chunk_frames` (else the clip must fit one window)."""
    frames, bins = features.shape
    tokens, window_tokens = token_count(frames, context), window_frames // context
    count = -(-tokens // window_tokens)
    if count > 1 and window_frames != chunk_frames:
        raise Phi4MMError(f"the audio is {frames * HOP_LENGTH / SAMPLE_RATE:.1f} s long; this NPU audio graph takes "
                          f"{window_frames * HOP_LENGTH / SAMPLE_RATE:g} s at most: "
                          f"split the clip, or re-export with the "
                          f"default window ({chunk_frames * HOP_LENGTH / SAMPLE_RATE:g} s, any length)")
    feeds = []
    for k in range(count):
        start = k * window_frames - context  # the window's first input frame, in the clip
        first, end = max(start, 0), min(start + context + window_frames, frames)
        window = np.zeros((1, context + window_frames, bins), np.float32)
        frame_mask = np.zeros((1, context + window_frames), np.float32)
        window[0, first - start:end - start] = features[first:end]
        frame_mask[0, first - start:end - start] = 1.0
        rows = min(window_tokens, tokens - k * window_tokens)
        key_mask = np.zeros((1, window_tokens), np.float32)
        key_mask[0, :window_tokens if count > 1 else rows] = 1.0  # a chunked clip's zero rows are keys in the reference
        feeds.append(WindowFeed({INPUT_FEATURES: window, FRAME_MASK: frame_mask, KEY_MASK: key_mask}, rows))
    return feeds


class ClipWindows:
    """How AudioEncoder feeds the NPU's window graph (AudioEncoder(..., graph=ClipWindows)). `provider`
    "qnn" runs it on the HTP (CPU fallback disabled, the compiled context cached beside the graph),
    "cpu" on ONNX Runtime's CPU EP (providers.open_session). The window length comes from the
    artifact's audio entry (`window_frames`, `chunk_frames`)."""

    def __init__(self, entry: AudioEntry, provider: str):
        if provider not in ("qnn", "cpu"):
            raise Phi4MMError(f"provider {provider!r}: the NPU audio graph runs on 'qnn' (the HTP) or 'cpu'")
        self.context = entry.compression_rate  # one token's frames before each window
        if entry.window_frames is None or entry.chunk_frames is None:
            raise Phi4MMError(f"the artifact's audio entry names no window ({entry.graph} is not an NPU window graph): "
                              f"re-export with --target npu")
        self.window_frames, self.chunk_frames = entry.window_frames, entry.chunk_frames

    def _window(self, graph: ort.InferenceSession, name: str) -> int:
        """The graph's window in frames, checked against the entry's."""
        frames = graph.get_inputs()[0].shape[1] - self.context
        if frames != self.window_frames or frames % self.context:
            raise Phi4MMError(f"{name} takes windows of {frames} frames, the manifest says "
                              f"{self.window_frames}: re-export the artifact")
        return frames

    def features(self, session: LazySession, audio: AudioInput, vision_mode: bool) -> np.ndarray:
        """The clip's rows, window by window, from the projection `vision_mode` picks."""
        graph, output = session.open(), OUTPUTS[bool(vision_mode)]
        feeds = window_feeds(audio.features, self._window(graph, session.path.name), self.context, self.chunk_frames)
        return np.concatenate([graph.run([output], feed.inputs)[0][:feed.rows] for feed in feeds])

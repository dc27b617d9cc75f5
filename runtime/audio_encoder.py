"""The audio encoder of an artifact: a clip -> audio_features rows for the prompt.

The clip's log-mel features, its token count and the check of the rows are the same for every
artifact; how its graph is fed is the encoder's `graph`: WholeClip (audio.onnx, a clip per run) or
audio_npu.ClipWindows (the NPU's static graph, a fixed window of frames per run)."""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ..artifact import AUDIO_FEATURES, INPUT_FEATURES, VISION_MODE
from ..manifest import AudioEntry
from ..errors import Phi4MMError
from .audio import MAX_SECONDS, SAMPLE_RATE, frame_count, load_audio, log_mel_spectrogram, token_count
from .encoder_session import LazySession


@dataclass
class AudioInput:
    features: np.ndarray  # log-mel [frames, bins]
    num_tokens: int
    seconds: float


class ClipGraph(Protocol):
    """How an audio graph is fed: a prepared clip -> its rows [tokens, hidden] (`vision_mode`: the
    projection used with images)."""

    def features(self, session: LazySession, audio: AudioInput, vision_mode: bool) -> np.ndarray: ...


class WholeClip:
    """audio.onnx: the whole clip in one run, its `vision_mode` input picking the projection."""

    def __init__(self, entry: AudioEntry, provider: str):
        pass  # nothing to check: the graph takes clips of any length, on any provider

    def features(self, session: LazySession, audio: AudioInput, vision_mode: bool) -> np.ndarray:
        feeds = {INPUT_FEATURES: audio.features[None], VISION_MODE: np.array(vision_mode)}
        return session.run([AUDIO_FEATURES], feeds)[0]


class AudioEncoder:
    def __init__(self, folder, entry: AudioEntry, options, provider: str, max_seconds: float = MAX_SECONDS,
                 graph: Callable[[AudioEntry, str], ClipGraph] = WholeClip, reads: dict | None = None, check=None):
        """`graph(entry, provider)` makes how the artifact's audio graph is fed (a ClipGraph);
        `reads`: its data files' sha256 (Manifest.data_hashes); `check(session)` runs on it once opened."""
        if entry.sample_rate != SAMPLE_RATE:
            raise Phi4MMError(f"the artifact's audio encoder takes {entry.sample_rate} Hz features; "
                              f"this runtime computes "
                              f"them at {SAMPLE_RATE} Hz only: re-export from a {SAMPLE_RATE} Hz checkpoint")
        self.entry, self.max_seconds = entry, max_seconds
        self.session = LazySession(folder / entry.graph, options, provider, reads, check)
        self.graph = graph(entry, provider)

    def prepare(self, source, sample_rate: int | None = None) -> AudioInput:
        """A path, bytes, (array, rate) or an array with `sample_rate` -> log-mel and token count."""
        wave = load_audio(source, sample_rate, self.max_seconds)
        features = log_mel_spectrogram(wave, self.entry.mel_bins)
        tokens = token_count(frame_count(len(wave)), self.entry.compression_rate)
        return AudioInput(features, tokens, len(wave) / SAMPLE_RATE)

    def features(self, audio: AudioInput, vision_mode: bool = False) -> np.ndarray:
        """audio_features [num_tokens, hidden]; `vision_mode` picks the projection used with images."""
        features = self.graph.features(self.session, audio, vision_mode)
        if features.shape[0] != audio.num_tokens:
            raise Phi4MMError(f"{self.entry.graph} gave {features.shape[0]} tokens for audio that needs "
                              f"{audio.num_tokens}: re-export the artifact")
        return features

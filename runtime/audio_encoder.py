"""The audio encoder of an artifact: a clip -> audio_features rows for the prompt."""

from dataclasses import dataclass

import numpy as np

from ..manifest import AudioEntry
from ..errors import Phi4MMError
from .audio import MAX_SECONDS, SAMPLE_RATE, frame_count, load_audio, log_mel_spectrogram, token_count
from .encoder_session import LazySession


@dataclass
class AudioInput:
    features: np.ndarray  # log-mel [frames, bins]
    num_tokens: int
    seconds: float


class AudioEncoder:
    def __init__(self, folder, entry: AudioEntry, options, provider: str, max_seconds: float = MAX_SECONDS):
        if entry.sample_rate != SAMPLE_RATE:
            raise Phi4MMError(f"the artifact's audio encoder takes {entry.sample_rate} Hz features; this runtime computes "
                              f"them at {SAMPLE_RATE} Hz only: re-export from a {SAMPLE_RATE} Hz checkpoint")
        self.entry, self.max_seconds = entry, max_seconds
        self.session = LazySession(folder / entry.graph, options, provider)

    def prepare(self, source, sample_rate: int | None = None) -> AudioInput:
        """A path, bytes, (array, rate) or an array with `sample_rate` -> log-mel and token count."""
        wave = load_audio(source, sample_rate, self.max_seconds)
        features = log_mel_spectrogram(wave, self.entry.mel_bins)
        return AudioInput(features, token_count(frame_count(len(wave)), self.entry.compression_rate), len(wave) / SAMPLE_RATE)

    def features(self, audio: AudioInput, vision_mode: bool = False) -> np.ndarray:
        """audio_features [num_tokens, hidden]; `vision_mode` picks the projection used with images."""
        features = self.session.run(["audio_features"], {"input_features": audio.features[None], "vision_mode": np.array(vision_mode)})[0]
        if features.shape[0] != audio.num_tokens:
            raise Phi4MMError(f"{self.entry.graph} gave {features.shape[0]} tokens for audio that needs {audio.num_tokens}: re-export the artifact")
        return features

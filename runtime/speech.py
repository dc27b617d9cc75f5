"""The speech encoder of an artifact: audio -> audio_features rows for the prompt."""

from dataclasses import dataclass

import numpy as np

from ..artifact import SPEECH_GRAPH
from ..errors import Phi4MMError
from .audio import MAX_SECONDS, SAMPLE_RATE, frame_count, load_audio, log_mel_spectrogram, token_count
from .providers import open_session


@dataclass
class AudioInput:
    features: np.ndarray  # log-mel [frames, bins]
    num_tokens: int
    seconds: float


class SpeechEncoder:
    def __init__(self, folder, entry: dict, options, provider: str, max_seconds: float = MAX_SECONDS):
        self.session = open_session(folder / entry.get("graph", SPEECH_GRAPH), options, provider)
        self.max_seconds = max_seconds

    def prepare(self, source, sample_rate: int | None = None) -> AudioInput:
        """A path, bytes, (array, rate) or an array with `sample_rate` -> log-mel and token count."""
        wave = load_audio(source, sample_rate, self.max_seconds)
        features = log_mel_spectrogram(wave)
        return AudioInput(features, token_count(frame_count(len(wave))), len(wave) / SAMPLE_RATE)

    def features(self, audio: AudioInput, vision_mode: bool = False) -> np.ndarray:
        """audio_features [num_tokens, hidden]; `vision_mode` picks the projection used with images."""
        features = self.session.run(["audio_features"], {"input_features": audio.features[None], "vision_mode": np.array(vision_mode)})[0]
        if features.shape[0] != audio.num_tokens:
            raise Phi4MMError(f"speech.onnx gave {features.shape[0]} tokens for audio that needs {audio.num_tokens}: re-export the artifact")
        return features

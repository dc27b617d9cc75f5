"""Audio input for Phi-4-multimodal: decode, resample to 16 kHz mono, log-mel features.

The log-mel matches transformers' `Phi4MultimodalFeatureExtractor`: 25 ms Hamming frames
(non-periodic) every 10 ms, pre-emphasis inside each frame, 16-bit scaling, a 512-point FFT
power spectrum, Kaldi-style mel filters (80 for Phi-4-multimodal; 0-7690 Hz, triangles in mel
space), log(max(x, 1)). The frame and FFT constants below define the features at SAMPLE_RATE;
the number of mel bins and the frames per audio token are the artifact's (its `audio` entry).
"""

import functools
import io
import math
import re
from pathlib import Path

import numpy as np

from ..artifact import SAMPLE_RATE  # the rate the features are defined at (one home for it)
from ..errors import Phi4MMError

N_FFT = 512
WIN_LENGTH = 400  # 25 ms
HOP_LENGTH = 160  # 10 ms
PREEMPHASIS = 0.97
PCM_SCALE = 32768  # features are computed on 16-bit sample values
MEL_MIN_HZ, MEL_MAX_HZ = 0.0, 7690.0
MAX_SECONDS = 600.0  # default limit on one clip


def _kaldi_mel(hz):
    return 1127.0 * np.log(1.0 + np.asarray(hz, np.float64) / 700.0)


@functools.lru_cache(maxsize=4)
def mel_filters(n_mels: int, sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT) -> np.ndarray:
    """[n_fft/2 + 1, n_mels] triangular filters, equally spaced and triangular on the Kaldi mel scale."""
    edges = np.linspace(_kaldi_mel(MEL_MIN_HZ), _kaldi_mel(MEL_MAX_HZ), n_mels + 2)
    bins = _kaldi_mel(np.arange(n_fft // 2 + 1) * sample_rate / n_fft)[:, None]
    rising = (bins - edges[None, :-2]) / (edges[1:-1] - edges[:-2])
    falling = (edges[None, 2:] - bins) / (edges[2:] - edges[1:-1])
    return np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)


_WINDOW = np.hamming(WIN_LENGTH)  # symmetric ("non-periodic"), float64


def frame_count(samples: int) -> int:
    return (samples - WIN_LENGTH) // HOP_LENGTH + 1


def token_count(frames: int, compression_rate: int) -> int:
    """Audio placeholder tokens for a clip of `frames` feature frames: ceil(frames / compression_rate)."""
    return -(-frames // compression_rate)


def log_mel_spectrogram(wave: np.ndarray, n_mels: int) -> np.ndarray:
    """16 kHz mono float waveform in [-1, 1] -> log-mel features [frames, n_mels], float32."""
    frames = frame_count(len(wave))
    if frames < 1:
        raise Phi4MMError(f"the audio is {len(wave) / SAMPLE_RATE * 1000:.1f} ms long; at least "
                          f"{WIN_LENGTH / SAMPLE_RATE * 1000:.0f} ms are needed")
    wave = np.asarray(wave, np.float32)
    index = np.arange(WIN_LENGTH)[None, :] + HOP_LENGTH * np.arange(frames)[:, None]
    chunks = wave[index]
    # each frame's first sample is its own predecessor
    previous = np.concatenate([chunks[:, :1], chunks[:, :-1]], axis=1)
    chunks = (chunks - PREEMPHASIS * previous) * PCM_SCALE
    spectrum = np.fft.rfft(_WINDOW * chunks, n=N_FFT, axis=1).astype(np.complex64)
    power = np.abs(spectrum) ** 2
    return np.log(np.maximum(power @ mel_filters(n_mels), 1.0)).astype(np.float32)


# -- loading -------------------------------------------------------------------------------------
# float PCM is [-1, 1] (a hot recording a little more); beyond this it is damaged, and the 16-bit
# scaled power overflows float32
MAX_SAMPLE = 1e3
MAX_CHANNELS = 32  # more "channels" than this is a [channels, samples] array read the wrong way round
DECODE_BLOCK = 1 << 16  # frames decoded (and mixed down) at a time: memory stays one block wide
BYTESIO = re.compile(r"<_io\.BytesIO object at 0x[0-9a-f]+>")


class AudioTooLong(Phi4MMError):
    """A clip over the length limit. `seconds` is its length when `exact`, else how far decoding
    went before it stopped at the limit."""

    def __init__(self, seconds: float, limit: float, exact: bool = True):
        length = f"{seconds:.1f} s long" if exact else f"longer than {limit:g} s"
        super().__init__(f"the audio is {length}, the limit is {limit:g} s: split it, or raise the limit "
                         f"(max_audio_seconds=, --max-audio-seconds)")
        self.seconds, self.limit, self.exact = seconds, limit, exact

    def length(self) -> str:
        return f"{self.seconds:.1f} s long" if self.exact else f"longer than {self.limit:g} s"


def to_mono(samples: np.ndarray) -> np.ndarray:
    """[samples] or [samples, channels] int/float PCM -> float32 mono in [-1, 1]."""
    samples = np.asarray(samples)
    if samples.dtype.kind in "iu":
        info = np.iinfo(samples.dtype)
        samples = (samples.astype(np.float64) - (info.min + info.max + 1) / 2) / ((info.max - info.min + 1) / 2)
    elif samples.dtype.kind != "f":
        raise Phi4MMError(f"audio samples must be integer or float PCM, not {samples.dtype}")
    if samples.ndim == 2:
        if samples.shape[1] > MAX_CHANNELS:
            raise Phi4MMError(f"an audio array of shape {samples.shape} would have {samples.shape[1]} channels: pass "
                              f"[samples, channels] (transpose a [channels, samples] array)")
        samples = samples.mean(axis=1)  # stereo (or more) mixed down
    elif samples.ndim != 1:
        raise Phi4MMError(f"audio must be [samples] or [samples, channels], got shape {samples.shape}")
    return samples.astype(np.float32)


def resample(samples: np.ndarray, rate: int, target: int = SAMPLE_RATE) -> np.ndarray:
    if rate == target:
        return samples
    import soxr

    return soxr.resample(samples, rate, target, quality="HQ").astype(np.float32)


def _sample_rate(value) -> int:
    """A sample rate given with an array: a whole number of Hz above 0."""
    try:
        rate = float(value)
    except (TypeError, ValueError):
        rate = float("nan")
    if not (math.isfinite(rate) and rate > 0 and rate == int(rate)):
        raise Phi4MMError(f"sample rate {value!r} is not a whole number of Hz above 0")
    return int(rate)


def _decode(file, name: str, max_seconds: float) -> tuple[np.ndarray, int]:
    """Mono float32 samples and their rate, decoded a block at a time. The header's length is
    checked before any sample is decoded, and decoding stops past the limit whatever the header
    claimed, so neither a long recording nor a lying header costs more than the limit's memory."""
    import soundfile

    try:
        with soundfile.SoundFile(file) as audio:
            rate, channels = audio.samplerate, audio.channels
            if rate <= 0 or channels < 1:
                raise Phi4MMError(f"{name} has {channels} channel(s) at {rate} Hz: it is damaged")
            if channels > MAX_CHANNELS:
                raise Phi4MMError(f"{name} has {channels} channels; at most {MAX_CHANNELS} are taken")
            limit = math.floor(max_seconds * rate) if math.isfinite(max_seconds) else None
            if limit is not None and 0 < audio.frames < (1 << 62) and audio.frames > limit:
                raise AudioTooLong(audio.frames / rate, max_seconds)
            blocks, frames = [], 0
            for block in audio.blocks(blocksize=DECODE_BLOCK, dtype="float32", always_2d=True):
                blocks.append(block.mean(axis=1) if channels > 1 else block[:, 0].copy())
                frames += len(block)
                if limit is not None and frames > limit:  # the header said less, or nothing
                    raise AudioTooLong(frames / rate, max_seconds, exact=False)
    except Phi4MMError:
        raise
    except MemoryError:
        raise Phi4MMError(f"{name} is too large to decode: split it") from None
    except Exception as error:  # soundfile.LibsndfileError, RuntimeError, ValueError, ...: not audio it can read
        detail = BYTESIO.sub("the data", str(error))
        raise Phi4MMError(f"cannot decode {name} ({detail}): pass WAV, FLAC, OGG or MP3") from None
    return (np.concatenate(blocks) if blocks else np.zeros(0, np.float32)), rate


def load_audio(source, sample_rate: int | None = None, max_seconds: float = MAX_SECONDS) -> np.ndarray:
    """16 kHz mono float32 from a path or bytes (WAV, FLAC, OGG, MP3: libsndfile), or from a numpy
    array with its `sample_rate`, or an (array, rate) pair. Raises Phi4MMError for empty, NaN,
    undecodable or too long audio (AudioTooLong past `max_seconds`)."""
    if not max_seconds > 0:  # NaN too: a limit must be a number (inf: none)
        raise Phi4MMError(f"audio length limit {max_seconds}: give a number of seconds above 0")
    if isinstance(source, np.ndarray):
        if sample_rate is None:
            raise Phi4MMError("an audio array needs its sample rate: pass (array, rate) or sample_rate=")
        samples, rate = to_mono(source), _sample_rate(sample_rate)
    elif isinstance(source, tuple) and len(source) == 2:
        samples, rate = to_mono(np.asarray(source[0])), _sample_rate(source[1])
    elif isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise Phi4MMError(f"audio file {path} does not exist")
        if path.stat().st_size == 0:
            raise Phi4MMError(f"audio file {path} is empty (0 bytes)")
        samples, rate = _decode(str(path), f"audio file {path}", max_seconds)
    elif isinstance(source, (bytes, bytearray)):
        if not source:
            raise Phi4MMError("the audio is empty (0 bytes)")
        samples, rate = _decode(io.BytesIO(source), "the audio", max_seconds)
    else:
        raise Phi4MMError(f"unsupported audio input {type(source).__name__}: "
                          f"pass a path, bytes or (array, sample_rate)")
    if samples.size == 0:
        raise Phi4MMError("the audio has no samples")
    if not np.all(np.isfinite(samples)):
        raise Phi4MMError("the audio contains NaN or infinite samples")
    peak = float(np.abs(samples).max())
    if peak > MAX_SAMPLE:
        raise Phi4MMError(f"the audio's samples reach {peak:.3g}, far outside [-1, 1]: the file is damaged "
                          f"(float audio is scaled to [-1, 1])")
    if samples.size / rate > max_seconds:
        raise AudioTooLong(samples.size / rate, max_seconds)
    return resample(samples, rate)

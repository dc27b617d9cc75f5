"""Record from the default microphone with sounddevice (an optional dependency)."""

import numpy as np

from ..errors import Phi4MMError
from .audio import SAMPLE_RATE

BLOCK_FRAMES = 1600  # 100 ms reads


def record(seconds: float, sample_rate: int = SAMPLE_RATE) -> tuple[np.ndarray, int]:
    """(float32 mono samples, sample rate) from the default input device."""
    if not 0 < seconds <= 600:
        raise Phi4MMError(f"recording length {seconds} s is outside 0-600 s")
    try:
        import sounddevice
    except ImportError:
        raise Phi4MMError("recording needs sounddevice: pip install 'phi4mm-edge[mic]'") from None
    except OSError as error:  # sounddevice raises OSError when the PortAudio library is missing
        raise Phi4MMError(f"recording needs the PortAudio library ({error}): install it, e.g. apt-get install libportaudio2") from None
    wanted, blocks = int(seconds * sample_rate), []
    try:
        with sounddevice.InputStream(samplerate=sample_rate, channels=1, dtype="float32", blocksize=BLOCK_FRAMES) as stream:
            while sum(len(b) for b in blocks) < wanted:
                block, _overflowed = stream.read(min(BLOCK_FRAMES, wanted - sum(len(b) for b in blocks)))
                blocks.append(np.asarray(block).reshape(-1))
    except Exception as error:  # PortAudioError and friends: no device, device busy
        if isinstance(error, Phi4MMError):
            raise
        raise Phi4MMError(f"cannot record from the default microphone ({error}): check that an input device exists") from None
    return np.concatenate(blocks)[:wanted], sample_rate

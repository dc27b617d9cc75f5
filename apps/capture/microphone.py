"""Record from the default microphone with sounddevice (an optional dependency): a fixed-length
recording (`record`) or a continuous stream of blocks (`listen`)."""

import queue

import numpy as np

from ...errors import Phi4MMError
from ...runtime.audio import SAMPLE_RATE

BLOCK_FRAMES = 1600  # 100 ms reads
SILENT_DEVICE_SECONDS = 5.0  # a running stream delivers a block every 100 ms; this long without one means it stopped


def _sounddevice():
    try:
        import sounddevice
    except ImportError:
        raise Phi4MMError('recording needs sounddevice: pip install -e ".[mic]" in the phi4mm-edge folder') from None
    except OSError as error:  # sounddevice raises OSError when the PortAudio library is missing
        raise Phi4MMError(f"recording needs the PortAudio library ({error}): "
                          f"install it, e.g. apt-get install libportaudio2") from None
    return sounddevice


def check_microphone(sample_rate: int = SAMPLE_RATE) -> None:
    """Fail now, with the fix, when recording cannot work: sounddevice or PortAudio missing, or no
    input device that takes mono float32 at `sample_rate` (checked before any model is loaded)."""
    sounddevice = _sounddevice()
    check = getattr(sounddevice, "check_input_settings", None)
    if check is not None:
        try:
            check(samplerate=sample_rate, channels=1, dtype="float32")
        except Exception as error:  # PortAudioError, ValueError: no device, unsupported settings
            raise _device_error(error) from None


def _device_error(error: Exception) -> Phi4MMError:
    return Phi4MMError(f"cannot record from the default microphone ({error}): check that an input device exists")


def record(seconds: float, sample_rate: int = SAMPLE_RATE) -> tuple[np.ndarray, int]:
    """(float32 mono samples, sample rate) from the default input device."""
    if not 0 < seconds <= 600:  # NaN fails this too
        raise Phi4MMError(f"recording length {seconds} s is outside 0-600 s")
    sounddevice = _sounddevice()
    wanted, blocks = int(seconds * sample_rate), []
    try:
        with sounddevice.InputStream(samplerate=sample_rate, channels=1, dtype="float32",
                                     blocksize=BLOCK_FRAMES) as stream:
            while sum(len(b) for b in blocks) < wanted:
                block, _overflowed = stream.read(min(BLOCK_FRAMES, wanted - sum(len(b) for b in blocks)))
                blocks.append(np.asarray(block).reshape(-1))
    except Exception as error:  # PortAudioError and friends: no device, device busy
        if isinstance(error, Phi4MMError):
            raise
        raise _device_error(error) from None
    return np.concatenate(blocks)[:wanted], sample_rate


def listen(sample_rate: int = SAMPLE_RATE):
    """Yield float32 mono blocks (100 ms) from the default input device, without end; closing the
    generator closes the device. Blocks that arrive while the caller is busy (transcribing) are
    queued by sounddevice's callback thread, so no audio is lost in between."""
    sounddevice = _sounddevice()
    blocks = queue.Queue()

    def on_block(indata, frames, time, status):
        blocks.put(np.array(indata[:, 0], np.float32))

    try:
        stream = sounddevice.InputStream(samplerate=sample_rate, channels=1, dtype="float32", blocksize=BLOCK_FRAMES,
                                         callback=on_block)
        stream.start()
    except Exception as error:  # PortAudioError and friends: no device, device busy
        raise _device_error(error) from None
    try:
        while True:
            try:
                yield blocks.get(timeout=SILENT_DEVICE_SECONDS)
            except queue.Empty:
                raise Phi4MMError(f"the microphone delivered no audio for {SILENT_DEVICE_SECONDS:g} s: "
                                  "check that the input device is still connected") from None
    finally:
        stream.stop()
        stream.close()

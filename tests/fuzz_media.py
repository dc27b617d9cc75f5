"""Fuzz the media inputs: mutated images and audio files through the runtime's loading and
preprocessing. Every outcome must be an answer or a Phi4MMError; any other exception, a hang
(each case has an alarm) or running out of the memory cap is a failure.

    python tests/fuzz_media.py --count 3000 --memory-gb 2      # the long run
    (tests/test_fuzz.py runs a bounded count of it in the normal suite)

Prints one JSON line: counts per outcome, and the failures with their seed to replay them.
"""

import argparse
import io
import json
import random
import resource
import signal
import sys
import traceback

import numpy as np
import soundfile
from PIL import Image

from phi4mm_edge import Phi4MMError
from phi4mm_edge.manifest import VisionEntry
from phi4mm_edge.runtime.audio import load_audio, log_mel_spectrogram
from phi4mm_edge.runtime.image import load_image, preprocess

GEOMETRY = VisionEntry(graph="vision.onnx", crop_size=448, patch_size=14, max_crops=36, mean=0.5, std=0.5, encoder={})
MEL_BINS = 80
CASE_SECONDS = 20  # one case may take this long before it counts as a hang
INTERESTING = [0x00, 0xFF, 0x7F, 0x80, 0x01, 0xFE]


def image_seeds() -> list[bytes]:
    rng = np.random.default_rng(0)
    picture = Image.fromarray(rng.integers(0, 255, (40, 56, 3), np.uint8))
    seeds = []
    for fmt, mode in (("PNG", "RGB"), ("PNG", "RGBA"), ("JPEG", "RGB"), ("GIF", "P"), ("BMP", "RGB"), ("TIFF", "RGB"),
                      ("WEBP", "RGB")):
        buffer = io.BytesIO()
        picture.convert(mode).save(buffer, fmt)
        seeds.append(buffer.getvalue())
    return seeds


def audio_seeds() -> list[bytes]:
    t = np.arange(8000) / 8000
    wave = (0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)
    seeds = []
    for fmt, subtype, channels in (("WAV", "PCM_16", 1), ("WAV", "FLOAT", 2), ("FLAC", "PCM_16", 1), ("OGG", "VORBIS", 1),
                                   ("MP3", "MPEG_LAYER_III", 1)):
        buffer = io.BytesIO()
        data = np.stack([wave] * channels, axis=1) if channels > 1 else wave
        soundfile.write(buffer, data, 8000, format=fmt, subtype=subtype)
        seeds.append(buffer.getvalue())
    return seeds


def mutate(data: bytes, rng: random.Random) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        kind = rng.random()
        if not data:
            break
        position = rng.randrange(len(data))
        if kind < 0.35:  # flip a bit
            data[position] ^= 1 << rng.randrange(8)
        elif kind < 0.55:  # an interesting byte
            data[position] = rng.choice(INTERESTING)
        elif kind < 0.7:  # a large field value in the header region
            position = rng.randrange(min(len(data), 64))
            data[position:position + 4] = rng.choice([b"\xff\xff\xff\x7f", b"\x00\x00\x00\x80", b"\xff\xff\xff\xff"])
        elif kind < 0.8:  # truncate
            del data[rng.randrange(1, len(data) + 1):]
        elif kind < 0.9:  # duplicate a chunk
            end = min(len(data), position + rng.randint(1, 256))
            data[position:position] = data[position:end]
        else:  # delete a chunk
            del data[position:position + rng.randint(1, 64)]
    return bytes(data)


class SilentlyWrong(Exception):
    """An answer that is not one: NaN or infinite values handed on to the model."""


def run_image(data: bytes) -> None:
    image = preprocess(load_image(data), GEOMETRY)
    if not np.isfinite(image.pixel_values).all():
        raise SilentlyWrong("non-finite pixel values")


def run_audio(data: bytes) -> None:
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # an overflow is a failure (underflow to 0 is fine)
        features = log_mel_spectrogram(load_audio(data, max_seconds=600), MEL_BINS)
    if not np.isfinite(features).all():
        raise SilentlyWrong("non-finite log-mel features")


def _alarm(signum, frame):
    raise TimeoutError(f"a case ran over {CASE_SECONDS} s")


def fuzz(count: int, seed: int = 0) -> dict:
    """`count` mutated images and `count` mutated audio files; returns the outcome counts."""
    signal.signal(signal.SIGALRM, _alarm)
    outcomes = {"answered": 0, "refused": 0}
    failures = []
    for kind, seeds, run in (("image", image_seeds(), run_image), ("audio", audio_seeds(), run_audio)):
        for case in range(count):
            rng = random.Random(f"{seed}-{kind}-{case}")
            data = mutate(rng.choice(seeds), rng)
            signal.alarm(CASE_SECONDS)
            try:
                run(data)
                outcomes["answered"] += 1
            except Phi4MMError:
                outcomes["refused"] += 1
            except BaseException as error:  # noqa: BLE001  anything else is what the fuzzer looks for
                failures.append({"kind": kind, "case": case, "seed": seed, "error": f"{type(error).__name__}: {error}",
                                 "where": traceback.format_exc().strip().splitlines()[-3:]})
            finally:
                signal.alarm(0)
    return {**outcomes, "failures": failures, "count": 2 * count,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=300, help="mutated files of each kind")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--memory-gb", type=float, default=2.0, help="address-space cap for this process")
    args = parser.parse_args(argv)
    cap = int(args.memory_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    report = fuzz(args.count, args.seed)
    print(json.dumps(report))
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())

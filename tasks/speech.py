"""Spoken clips by espeak-ng, and the tasks on them: transcribe digits or a word, answer a
spoken question about the world, and answer a spoken question about a picture.

A clip is spoken in one of several voices, speeds and pitches, padded with silence to a whole
number of half seconds (clips of one length batch without padding masks in training) and stored
as Ogg Opus at 8, 16, 24 or 48 kHz: ~2.7 KB a second, so the held-out clips can ship in the
repository. Training decodes the same bytes the held-out files hold, so the codec is part of
the data, not a difference between training and evaluation.
"""

import io
import shutil
import subprocess
from dataclasses import dataclass

import numpy as np
import soundfile

from ..errors import Phi4MMError
from . import scenes, world
from .items import AUDIO, IMAGE_AUDIO, Task, draw

ESPEAK = "espeak-ng"
# Nine voices, two speeds, a pitch range and three stored rates. Measured: with six accents x six
# variants, 130-190 words a minute, pitches 30-70 and 8 kHz clips as well, the tiny conformer
# trained for ~10 minutes heard 4% of held-out clips right; the tasks ask for understanding the
# words, not for robustness to every voice.
BASE_VOICES = ("en-us", "en-gb", "en-gb-x-rp")
VARIANTS = ("", "+m3", "+f2")
SPEEDS = (150, 175)  # words per minute
PITCHES = (40, 60)
STORED_RATES = (16000, 24000, 48000)  # Hz: rates Opus stores as they are
# libsndfile's Opus setting: ~2.7 KB a second at every rate (its default is 3-8 KB by rate), the
# log-mel of speech frames within ~0.5 (natural log) of the uncoded clip's: measured on espeak-ng
# speech; the tasks' words stay clear, and training hears the same coding.
OPUS_COMPRESSION = 0.95
BUCKET_SECONDS = 0.5
TRANSCRIBE = "Transcribe the audio clip into text."
ANSWER = "Answer the question in the audio."
ANSWER_ABOUT_PICTURE = "Answer the question in the audio about the picture."
MIN_DIGITS, MAX_DIGITS = 3, 4


@dataclass(frozen=True)
class Voice:
    name: str  # espeak-ng voice + variant, e.g. "en-gb+f2"
    speed: int
    pitch: int
    rate: int  # the stored clip's sample rate


def random_voice(rng) -> Voice:
    name = BASE_VOICES[int(rng.integers(0, len(BASE_VOICES)))] + VARIANTS[int(rng.integers(0, len(VARIANTS)))]
    return Voice(name, int(rng.integers(SPEEDS[0], SPEEDS[1] + 1)), int(rng.integers(PITCHES[0], PITCHES[1] + 1)),
                 STORED_RATES[int(rng.integers(0, len(STORED_RATES)))])


def speak(text: str, voice: Voice) -> bytes:
    """`text` spoken by espeak-ng in `voice`: Ogg Opus bytes at voice.rate, a whole number of buckets long."""
    import soxr

    if shutil.which(ESPEAK) is None:
        raise Phi4MMError("making spoken clips needs espeak-ng (apt-get install espeak-ng); "
                          "the shipped held-out clips need nothing")
    command = [ESPEAK, "-v", voice.name, "-s", str(voice.speed), "-p", str(voice.pitch), "--stdout", text]
    wave, rate = soundfile.read(io.BytesIO(subprocess.run(command, capture_output=True, check=True).stdout),
                                dtype="float32")
    wave = soxr.resample(wave, rate, voice.rate, quality="HQ").astype(np.float32)
    bucket = int(BUCKET_SECONDS * voice.rate)
    wave = np.pad(wave, (0, -len(wave) % bucket))
    clip = io.BytesIO()
    soundfile.write(clip, wave, voice.rate, format="OGG", subtype="OPUS", compression_level=OPUS_COMPRESSION)
    return clip.getvalue()


def _choice(rng, options):
    return options[int(rng.integers(0, len(options)))]


def _spoken_task(kind: str, prompt: str, answer: str, key: str, text: str, voice: Voice) -> Task:
    return Task(kind, AUDIO, "<|audio_1|>" + prompt, answer, key, audios=[speak(text, voice)], transcript=text)


def speech_digits(rng, heldout: bool) -> Task:
    """The key is the digit string alone: a held-out string is never heard in training, in any voice."""
    def propose(rng):
        digits = "".join(str(d) for d in rng.integers(0, 10, int(rng.integers(MIN_DIGITS, MAX_DIGITS + 1))))
        voice = random_voice(rng)
        key = f"speech_digits:{digits}"
        return key, lambda: _spoken_task("speech_digits", TRANSCRIBE, digits, key, " ".join(digits), voice)
    return draw(rng, heldout, propose)


def speech_word(rng, heldout: bool) -> Task:
    def propose(rng):
        word, voice = _choice(rng, world.WORDS), random_voice(rng)
        key = f"speech_word:{word}:{voice!r}"
        return key, lambda: _spoken_task("speech_word", TRANSCRIBE, word, key, word, voice)
    return draw(rng, heldout, propose)


def speech_question(rng, heldout: bool) -> Task:
    """A spoken question about the world's facts. The key is (person, relation): a held-out
    question is never heard in training, so answering it needs the words understood and the
    text model's knowledge, not a memorized clip."""
    def propose(rng):
        person, relation = _choice(rng, world.PEOPLE), _choice(rng, ("town", "pet", "colour"))
        voice = random_voice(rng)
        key = f"speech_question:{person}:{relation}"
        text = world.SPOKEN_FACT_QUESTIONS[relation].format(p=person)
        return key, lambda: _spoken_task("speech_question", ANSWER, world.FACTS[person][relation], key, text, voice)
    return draw(rng, heldout, propose)


def audio_image(rng, heldout: bool) -> Task:
    """A picture of two or three shapes and a spoken "what colour is the <shape>"."""
    def propose(rng):
        width, height = scenes.pick_size(rng, scenes.ROOMY_SIZES)
        kinds = [world.SHAPES[i] for i in rng.permutation(len(world.SHAPES))[: int(rng.integers(2, 4))]]
        colours = [world.COLOURS[i] for i in rng.permutation(len(world.COLOURS))[: len(kinds)]]
        shapes = scenes.place_shapes(rng, width, height, list(zip(kinds, colours)), (0.12, 0.18))
        if shapes is None:
            return propose(rng)
        asked = int(rng.integers(0, len(kinds)))
        scene, voice = scenes.Scene(width, height, shapes), random_voice(rng)
        key = f"audio_image:{scene!r}:{asked}:{voice!r}"

        def make():
            question = f"what colour is the {kinds[asked]}"
            prompt = "<|image_1|><|audio_1|>" + ANSWER_ABOUT_PICTURE
            return Task("audio_image", IMAGE_AUDIO, prompt, colours[asked], key,
                        images=[scenes.render(scene)], audios=[speak(question, voice)], transcript=question)
        return key, make
    return draw(rng, heldout, propose)

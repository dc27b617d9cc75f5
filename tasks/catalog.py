"""Every task kind: its input modality, its generator and its chance level (the accuracy of
guessing uniformly among the answers a question of that kind can have)."""

from dataclasses import dataclass

import numpy as np

from . import scenes, speech, text_tasks, world
from .items import AUDIO, IMAGE, IMAGE_AUDIO, TEXT


@dataclass(frozen=True)
class Kind:
    name: str
    modality: str
    generate: object  # (numpy Generator, heldout: bool) -> Task
    chance: float
    chance_note: str


KINDS = {k.name: k for k in (
    Kind("add", TEXT, text_tasks.add, 1 / 99, "sums 0..98"),
    Kind("subtract", TEXT, text_tasks.subtract, 1 / 60, "differences 0..59"),
    Kind("count_letter", TEXT, text_tasks.count_letter, 1 / 5, "counts 0..4"),
    Kind("facts", TEXT, text_tasks.facts, 1 / 6, "six towns, pets or colours"),
    Kind("copy", TEXT, text_tasks.copy, 1 / 36, "3-6 letters, or 1-3 of 36 words: at most 1/36"),
    Kind("reverse", TEXT, text_tasks.reverse, 26.0 ** -3, "3-6 letters: at most 26^-3"),
    Kind("vision_shape", IMAGE, scenes.vision_shape, 1 / len(world.SHAPES), "four shapes"),
    Kind("vision_colour", IMAGE, scenes.vision_colour, 1 / len(world.COLOURS), "six colours"),
    Kind("vision_count", IMAGE, scenes.vision_count, 1 / scenes.MAX_COUNT, "counts 1..5"),
    Kind("vision_position", IMAGE, scenes.vision_position, 1 / len(world.POSITIONS), "left, right, top, bottom"),
    Kind("vision_digits", IMAGE, scenes.vision_digits, 1 / 990, "numbers 10..999"),
    Kind("vision_word", IMAGE, scenes.vision_word, 1 / len(world.WORDS), "22 words"),
    Kind("speech_digits", AUDIO, speech.speech_digits, 1e-3, "3-4 digits: at most 10^-3"),
    Kind("speech_word", AUDIO, speech.speech_word, 1 / len(world.WORDS), "22 words"),
    Kind("speech_question", AUDIO, speech.speech_question, 1 / 6, "six towns, pets or colours"),
    Kind("audio_image", IMAGE_AUDIO, speech.audio_image, 1 / len(world.COLOURS), "six colours"),
)}


def kinds_of(modality: str) -> list[Kind]:
    return [k for k in KINDS.values() if k.modality == modality]


# The shipped held-out set: items per kind of each modality (80 clips: ~0.4 MB in the repository).
HELDOUT_SEED = 2024
HELDOUT_PER_KIND = {TEXT: 40, IMAGE: 30, AUDIO: 20, IMAGE_AUDIO: 20}


def heldout_tasks(seed: int, per_kind: dict = HELDOUT_PER_KIND) -> list:
    """The held-out generator: items on the held-out side of the split, `per_kind[modality]` of
    each kind, drawn from `seed` (spoken kinds need espeak-ng)."""
    rng = np.random.default_rng([seed, 7])
    return [kind.generate(rng, True) for kind in KINDS.values() for _ in range(per_kind[kind.modality])]


def kinds_table() -> dict:
    return {k.name: {"modality": k.modality, "chance": k.chance, "chance_note": k.chance_note} for k in KINDS.values()}

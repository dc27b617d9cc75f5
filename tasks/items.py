"""One task item, the held-out split, and drawing items on either side of it.

An item's `key` names what its answer is computed from (the sum's operands, the spoken digit
string, the whole rendered scene): items whose key hashes into one bucket in HELDOUT_ONE_IN are
held out, and the training generators never produce them. A pure function of the key, so no
list of held-out items has to be kept in step with the generators.
"""

import zlib
from dataclasses import dataclass, field

HELDOUT_ONE_IN = 8

# Input kinds, as the runtime routes them: none -> no adapter, an image -> vision, audio alone -> speech.
TEXT, IMAGE, AUDIO, IMAGE_AUDIO = "text", "image", "audio", "image+audio"
MODALITIES = (TEXT, IMAGE, AUDIO, IMAGE_AUDIO)


@dataclass
class Task:
    """A question with one exact answer. `prompt` is the user message, media placeholders
    (`<|image_1|>`, `<|audio_1|>`) first; `images` are PIL images, `audios` encoded clip bytes,
    `transcript` what the clip says or the picture shows (the encoders' pretraining targets)."""

    kind: str
    modality: str
    prompt: str
    answer: str
    key: str
    images: list = field(default_factory=list)
    audios: list = field(default_factory=list)
    transcript: str = ""


def is_heldout(key: str) -> bool:
    return zlib.crc32(key.encode()) % HELDOUT_ONE_IN == 0


def draw(rng, heldout: bool, propose, attempts: int = 10_000):
    """`propose(rng)` -> (key, make); the first proposal on the wanted side of the split is made.
    Keys are proposed before anything is rendered, so rejected items cost nothing."""
    for _ in range(attempts):
        key, make = propose(rng)
        if is_heldout(key) == heldout:
            return make()
    raise RuntimeError(f"no {'held-out' if heldout else 'training'} item in {attempts} proposals")


def answer_matches(generated: str, expected: str) -> bool:
    """The accuracy rule: exact match after trimming surrounding white space."""
    return generated.strip() == expected

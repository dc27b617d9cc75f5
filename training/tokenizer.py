"""The trained reference model's tokenizer: a small byte-level BPE trained on the tasks' text.

Digits are split one per token (a number is its digits, so sums are learned digit by digit) and
the merges cover the questions' words, so prompts are short. `export/reference_tokenizer.py`'s
`fill_vocabulary` pads it to Phi-4-multimodal's 200064 entries with unreachable pseudo-words
and puts the special tokens at their real ids; the trained entries keep ids 0..n-1.
"""

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from ..tasks import catalog, scenes, speech, world
from ..tasks.items import TEXT

VOCABULARY = 640  # the trained part: 256 bytes + merges for the tasks' words
ITEMS_PER_TEXT_KIND = 2000
CORPUS_SEED = 12345


def corpus() -> list[str]:
    """Prompts and answers of every kind, media placeholders left out: text kinds drawn, the
    media kinds' fixed questions written out (drawing those would render and speak)."""
    rng = np.random.default_rng(CORPUS_SEED)
    lines = []
    for kind in catalog.kinds_of(TEXT):
        for _ in range(ITEMS_PER_TEXT_KIND):
            task = kind.generate(rng, False)
            lines += [task.prompt, task.answer]
    for shape in world.SHAPES:
        lines += [f"What colour is the {shape}?", f"How many {shape}s are there?", f"Where is the {shape}?"]
    lines += ["What shape is in the picture?", "What number is written in the picture?",
              "What word is written in the picture?", speech.TRANSCRIBE, speech.ANSWER, speech.ANSWER_ABOUT_PICTURE]
    lines += list(world.WORDS + world.POSITIONS) + [str(n) for n in range(scenes.MAX_COUNT + 1)]
    return lines


def train_tokenizer() -> str:
    """The trained part's tokenizer.json text (deterministic: a fixed corpus, one thread's merges)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                       pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCABULARY, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator(corpus(), trainer)
    return tokenizer.to_str()

"""A small byte-level BPE tokenizer with Phi-4-multimodal's vocabulary size and special ids.

The real tokenizer (o200k-based, 200k entries) cannot be downloaded here. This one is trained
in milliseconds on a few sentences, then its vocabulary is filled with unreachable pseudo-words
up to the first special id, so every id the model can emit decodes to something and every
special token sits at its real id.
"""

import json

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

# Real ids and strings of Phi-4-multimodal-instruct's added tokens.
ENDOFTEXT_ID = 199999
SPECIAL_TOKENS = {
    199999: "<|endoftext|>",
    200010: "<|endoftext10|>",  # image placeholder
    200011: "<|endoftext11|>",  # audio placeholder
    200018: "<|endofprompt|>",
    200019: "<|assistant|>",
    200020: "<|end|>",
    200021: "<|user|>",
    200022: "<|system|>",
    200023: "<|tool|>",
    200024: "<|/tool|>",
    200025: "<|tool_call|>",
    200026: "<|/tool_call|>",
    200027: "<|tool_response|>",
    200028: "<|tag|>",
}
# tokenizers numbers added tokens consecutively after the vocabulary, so the ids between the
# named ones must be filled: 200000 + N is `<|endoftextN|>` (hence 200010 = <|endoftext10|>).
for _n in range(18):
    SPECIAL_TOKENS.setdefault(200000 + _n, f"<|endoftext{_n}|>")

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' and 'tools' in message and message['tools'] is not none %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|tool|>' + message['tools'] + '<|/tool|>' + '<|end|>' }}"
    "{% else %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% else %}{{ eos_token }}{% endif %}"
)

_CORPUS = [
    "Transcribe the audio clip into text.",
    "Translate the audio to French. Describe the image in detail.",
    "What is shown in this picture? Summarize the conversation in one sentence.",
    "The quick brown fox jumps over the lazy dog while the weather stays calm and bright.",
    "Phi-4-multimodal runs offline on a laptop or a phone with int4 weights and two adapters.",
    "Hello! How are you today? Tell me a short story about a robot who learns to listen.",
    "Numbers 0 1 2 3 4 5 6 7 8 9 10 100 1000, punctuation: , . ; : ! ? ( ) [ ] { } ' \" - _ / \\",
]
_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"


def _pseudo_word(index: int) -> str:
    """A distinct pronounceable word per index, with a leading byte-level space."""
    syllables = []
    for _ in range(4):
        index, s = divmod(index, len(_CONSONANTS) * len(_VOWELS))
        syllables.append(_CONSONANTS[s // len(_VOWELS)] + _VOWELS[s % len(_VOWELS)])
        if index == 0:
            break
    return "\u0120" + "".join(syllables)  # \u0120 is the byte-level form of a space


def build_tokenizer_json() -> str:
    """tokenizer.json text: trained merges, vocabulary padded to id 199998, specials at real ids."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=2000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tokenizer.train_from_iterator(_CORPUS * 20, trainer)
    return fill_vocabulary(tokenizer.to_str())


def fill_vocabulary(trained: str) -> str:
    """A small trained BPE's tokenizer.json text -> Phi-4-multimodal's: the vocabulary padded with
    unreachable pseudo-words (no merge makes them) up to id 199998, the special tokens at their
    real ids. The trained entries keep their ids."""
    spec = json.loads(trained)
    vocab = spec["model"]["vocab"]
    index = 0
    while len(vocab) < ENDOFTEXT_ID:
        word = _pseudo_word(index)
        index += 1
        if word not in vocab:
            vocab[word] = len(vocab)
    spec["added_tokens"] = [
        {"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True}
        for i, s in sorted(SPECIAL_TOKENS.items())
    ]
    return json.dumps(spec, ensure_ascii=False)


def tokenizer_config() -> dict:
    return {
        "add_bos_token": False,
        "add_eos_token": False,
        "added_tokens_decoder": {
            str(i): {"content": s, "lstrip": False, "normalized": False, "rstrip": False,
                     "single_word": False, "special": True}
            for i, s in sorted(SPECIAL_TOKENS.items())
        },
        "bos_token": "<|endoftext|>",
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|endoftext|>",
        "model_max_length": 131072,
        "pad_token": "<|endoftext|>",
        "tokenizer_class": "GPT2Tokenizer",
        "unk_token": "<|endoftext|>",
    }

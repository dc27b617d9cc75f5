"""Tasks -> the reference model's inputs: token ids as the runtime builds them, pixels and
log-mel features from transformers' own processors (the oracles the parity tests use).

Ids are compact during training (the trained tokenizer's entries, then the special tokens the
prompts use): `Vocabulary` maps them to Phi-4-multimodal's real ids and back. A batch holds
items of one input kind, and of one picture size and one clip length, so no crop or audio frame
is padding (transformers' batched audio path adds its padding mask to the attention scores
rather than masking, which would make a padded clip differ from the same clip alone).
"""

import io
import re
from dataclasses import dataclass, field

import numpy as np
import soundfile
import torch
from tokenizers import Tokenizer

from ..artifact import SAMPLE_RATE
from ..export.reference_checkpoint import AUDIO_TOKEN_ID, IMAGE_TOKEN_ID
from ..tasks.items import Task

USER, ASSISTANT, END, SYSTEM, ENDOFTEXT = 200021, 200019, 200020, 200022, 199999
# The special tokens a prompt or an answer holds, in their compact order after the trained entries.
SPECIAL_IDS = (ENDOFTEXT, IMAGE_TOKEN_ID, AUDIO_TOKEN_ID, ASSISTANT, END, USER, SYSTEM)
PLACEHOLDER = re.compile(r"<\|(image|audio)_1\|>")
IGNORE = -100  # labels that carry no loss: the prompt and the padding


class Vocabulary:
    """The trained tokenizer's entries (ids 0..n-1 in both numberings) + SPECIAL_IDS."""

    def __init__(self, tokenizer_json: str):
        self.tokenizer = Tokenizer.from_str(tokenizer_json)
        trained = self.tokenizer.get_vocab_size()
        self.real_ids = list(range(trained)) + list(SPECIAL_IDS)  # compact id -> real id
        self.compact = {real: compact for compact, real in enumerate(self.real_ids)}

    def __len__(self) -> int:
        return len(self.real_ids)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, compact_ids) -> str:
        trained = [i for i in compact_ids if i < self.tokenizer.get_vocab_size()]
        return self.tokenizer.decode(trained)


def hd_token_count(attention_mask: np.ndarray, grid: tuple[int, int]) -> int:
    """Placeholder tokens of one image from its processor mask [crops + 1, p, p] and its sub crops'
    `grid` (rows, columns): the global crop's (p/2)^2 pooled tokens and p/2 row separators, the
    global/sub separator, and the real pooled rows of the HD grid, each ended by a separator.
    transformers' processor counts 256 + 16 for the global part whatever the crop size (right at
    448 pixels only); the model places this many."""
    rows, columns = grid
    p = attention_mask.shape[-1]
    layout = attention_mask[1: 1 + rows * columns].reshape(rows, columns, p, p).transpose(0, 2, 1, 3)
    layout = layout.reshape(rows * p, columns * p)[::2, ::2]
    useful_height, useful_width = int(layout[:, 0].sum()), int(layout[0, :].sum())
    pooled = p // 2
    return pooled * pooled + pooled + 1 + useful_height * (useful_width + 1)


@dataclass
class Batch:
    """One training step's inputs: ids [B, T], mask, labels (IGNORE where no loss), the
    processors' media tensors, and the adapter the batch runs with."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    adapter: str
    media: dict = field(default_factory=dict)
    transcripts: list = field(default_factory=list)  # each clip's words as compact ids (spaces left out)


class Preprocessor:
    """Tasks -> Batches for one model configuration."""

    def __init__(self, vocabulary: Vocabulary, config: dict):
        from transformers import Phi4MultimodalFeatureExtractor, Phi4MultimodalImageProcessor

        self.vocabulary = vocabulary
        vision = config["vision_config"]
        self.crop_size, self.patch_size = vision["crop_size"], vision["patch_size"]
        self.images = Phi4MultimodalImageProcessor(size={"height": self.crop_size, "width": self.crop_size},
                                                   patch_size=self.patch_size, dynamic_hd=36)
        self.features = Phi4MultimodalFeatureExtractor(feature_size=config["audio_config"]["input_size"])
        self.user, self.end, self.assistant = (vocabulary.compact[i] for i in (USER, END, ASSISTANT))
        self.image_id, self.audio_id = vocabulary.compact[IMAGE_TOKEN_ID], vocabulary.compact[AUDIO_TOKEN_ID]

    def prompt_ids(self, prompt: str, image_tokens: int = 0, audio_tokens: int = 0) -> list[int]:
        """<|user|> message <|end|><|assistant|>, each placeholder expanded; message text is
        encoded piece by piece between placeholders, as the runtime encodes it."""
        ids, position = [self.user], 0
        for match in PLACEHOLDER.finditer(prompt):
            ids += self.vocabulary.encode(prompt[position:match.start()])
            ids += [self.image_id] * image_tokens if match.group(1) == "image" else [self.audio_id] * audio_tokens
            position = match.end()
        return ids + self.vocabulary.encode(prompt[position:]) + [self.end, self.assistant]

    def answer_ids(self, answer: str) -> list[int]:
        return self.vocabulary.encode(answer) + [self.end]

    def image_inputs(self, images: list) -> tuple[dict, int]:
        """Processor tensors for same-sized pictures, and each one's placeholder count."""
        processed = self.images(images, return_tensors="pt")
        height, width = (int(v) for v in processed["image_sizes"][0])
        grid = (height // self.crop_size, width // self.crop_size)
        count = hd_token_count(processed["image_attention_mask"][0].numpy(), grid)
        media = {k: processed[k] for k in ("image_pixel_values", "image_sizes", "image_attention_mask")}
        return media, count

    def audio_inputs(self, clips: list[bytes]) -> tuple[dict, int]:
        """Log-mel features for clips of one length (decoded, resampled to 16 kHz as the runtime does)."""
        waves = [decode_clip(clip) for clip in clips]
        processed = self.features(waves, sampling_rate=SAMPLE_RATE, return_tensors="pt")
        sizes = processed["audio_embed_sizes"]
        media = {"audio_input_features": processed["audio_input_features"], "audio_embed_sizes": sizes}
        return media, int(sizes[0])

    def batch(self, tasks: list[Task]) -> Batch:
        """Tasks of one modality and one media shape -> a right-padded Batch."""
        media, image_tokens, audio_tokens = {}, 0, 0
        if tasks[0].images:
            image_media, image_tokens = self.image_inputs([t.images[0] for t in tasks])
            media.update(image_media)
        if tasks[0].audios:
            audio_media, audio_tokens = self.audio_inputs([t.audios[0] for t in tasks])
            media.update(audio_media)
        rows = []
        for task in tasks:
            prompt = self.prompt_ids(task.prompt, image_tokens, audio_tokens)
            answer = self.answer_ids(task.answer)
            rows.append((prompt + answer, [IGNORE] * len(prompt) + answer))
        length = max(len(ids) for ids, _ in rows)
        input_ids = torch.full((len(rows), length), self.end, dtype=torch.long)
        labels = torch.full((len(rows), length), IGNORE, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        for row, (ids, targets) in enumerate(rows):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            labels[row, : len(ids)] = torch.tensor(targets)
            attention_mask[row, : len(ids)] = 1
        adapter = "vision" if tasks[0].images else ("speech" if tasks[0].audios else "none")
        transcripts = [self.transcript_ids(task.transcript) for task in tasks] if tasks[0].transcript else []
        return Batch(input_ids, attention_mask, labels, adapter, media, transcripts)

    def transcript_ids(self, text: str) -> list[int]:
        """What a clip says as compact ids without the lone-space tokens (digit strings are
        spoken one digit at a time, "3 7 1"; their transcript is the digits)."""
        space = self.vocabulary.tokenizer.token_to_id("\u0120")
        return [i for i in self.vocabulary.encode(text) if i != space]


def decode_clip(clip: bytes) -> np.ndarray:
    """Encoded clip -> 16 kHz mono float32, as runtime/audio.py loads it (libsndfile, soxr HQ)."""
    import soxr

    wave, rate = soundfile.read(io.BytesIO(clip), dtype="float32", always_2d=True)
    wave = wave.mean(axis=1) if wave.shape[1] > 1 else wave[:, 0]
    return wave if rate == SAMPLE_RATE else soxr.resample(wave, rate, SAMPLE_RATE, quality="HQ").astype(np.float32)

"""A request's prompt: messages and media -> token ids plus the image and audio feature rows.

Media are referred to by `<|image_N|>` / `<|audio_N|>` placeholders, as the original processor
writes them, each expanded to one placeholder token per feature row. transformers' processor
spelling (`<|image|>`, `<|audio|>`, numbered in order of appearance) is accepted too. Media given
without any placeholder go before the text of the last user message.
"""

import re
from dataclasses import dataclass

import numpy as np

from ..manifest import TextConfig
from ..errors import Phi4MMError
from .audio_encoder import AudioEncoder
from .feature_cache import FeatureCache, content_key
from .kv_cache import item_row_keys
from .tokenizer import ChatTokenizer, check_message
from .vision_encoder import VisionEncoder

PLACEHOLDER = re.compile(r"<\|(image|audio)(?:_(\d+))?\|>")


def _number_bare(text: str, kind: str, counter: list) -> str:
    def replace(match):
        if match.group(1) != kind or match.group(2):
            return match.group(0)
        counter[0] += 1
        return f"<|{kind}_{counter[0]}|>"
    return PLACEHOLDER.sub(replace, text)


def place_media(messages: list[dict], images: int, audios: int) -> list[dict]:
    """Messages with every image/audio referenced by a numbered placeholder, checked."""
    messages = [dict(m) for m in messages]
    for kind, count in (("image", images), ("audio", audios)):
        counter = [0]
        for message in messages:
            message["content"] = _number_bare(message["content"], kind, counter)
        used = sorted({int(n) for m in messages for k, n in PLACEHOLDER.findall(m["content"]) if k == kind and n})
        if count and not used:
            users = [m for m in messages if m["role"] == "user"]
            if not users:
                raise Phi4MMError(f"{kind}s were given but there is no user message to attach them to")
            users[-1]["content"] = "".join(f"<|{kind}_{i}|>" for i in range(1, count + 1)) + users[-1]["content"]
            continue
        if used and (used[-1] > count or used[0] < 1):
            raise Phi4MMError(f"the prompt refers to <|{kind}_{used[-1]}|> but {count} {kind}(s) were given")
        missing = sorted(set(range(1, count + 1)) - set(used))
        if missing:
            raise Phi4MMError(f"{kind} {missing[0]} was given but the prompt has no "
                              f"<|{kind}_{missing[0]}|> placeholder (use one for every {kind}, or none at all)")
    return messages


def check_fits(prompt_tokens: int, context_length: int, text: TextConfig) -> None:
    if prompt_tokens >= context_length:
        raise Phi4MMError(
            f"the prompt is {prompt_tokens} tokens, the context holds {context_length}: shorten the prompt (or send "
            f"smaller images / shorter audio), or load with a larger context_length (--context, at most "
            f"{text.max_position_embeddings})"
        )


def check_text_fits(messages: list[dict], tokenizer: ChatTokenizer, context_length: int, text: TextConfig) -> None:
    """Refuse, before any tokenizing of it, message text that cannot fit the context (a 20 MB
    message once took the server's memory while being tokenized whole)."""
    content = "".join(message["content"] for message in messages)
    if tokenizer.text_exceeds(content, context_length):
        raise Phi4MMError(
            f"the messages hold {len(content)} characters, more than a context of {context_length} tokens holds: "
            f"shorten them, or load with a larger context_length (--context, at most {text.max_position_embeddings})")


@dataclass(frozen=True)
class Prompt:
    """A typed value that also unpacks: `ids, image_features, audio_features = prompt`."""

    token_ids: list[int]  # placeholders expanded: one image/audio token per feature row
    image_features: np.ndarray | None  # [image tokens, hidden], the images in prompt order
    audio_features: np.ndarray | None  # [audio tokens, hidden], the clips in prompt order
    # What each feature row is computed from, for the KV cache's position keys (kv_cache.py):
    # derived from the item's content key and the row's index, so rows are never hashed again.
    image_keys: np.ndarray | None = None
    audio_keys: np.ndarray | None = None

    def __iter__(self):
        return iter((self.token_ids, self.image_features, self.audio_features))


def as_messages(messages) -> list[dict]:
    """A string is one user message; a list of {role, content} dicts is checked and copied."""
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    if not isinstance(messages, (list, tuple)):
        raise Phi4MMError(f"messages must be a string or a list of {{'role', 'content'}} dicts, not "
                          f"{type(messages).__name__}")
    if not messages:
        raise Phi4MMError("there are no messages: give a prompt, or at least one {'role', 'content'} message")
    for message in messages:
        check_message(message)
    return [dict(m) for m in messages]


def as_media_list(media, kind: str) -> list:
    """`images=` / `audios=` as a list; a lone item (a path string, bytes, ...) is a mistake worth naming."""
    if media is None:
        return []
    if not isinstance(media, (list, tuple)):
        raise Phi4MMError(f"{kind}s must be a list, e.g. {kind}s=[{kind}], not a single {type(media).__name__}")
    return list(media)


def encode_parts(parts: list[tuple[str, bool]], tokenizer: ChatTokenizer, token_ids: dict[str, int],
                 counts: dict[str, list[int]]) -> tuple[list[int], dict[str, list[int]]]:
    """Token ids of the rendered parts, each `<|image_N|>` / `<|audio_N|>` placeholder replaced by
    its media token id repeated counts[kind][N-1] times; and the media numbers in prompt order."""
    ids, order = [], {kind: [] for kind in token_ids}
    for text, is_message_text in parts:
        encode = tokenizer.encode_text if is_message_text else tokenizer.encode
        position = 0
        for match in PLACEHOLDER.finditer(text):
            kind, number = match.group(1), match.group(2)
            if number is None or not 1 <= int(number) <= len(counts[kind]):
                # Message text was numbered and checked (place_media): this one was written by the
                # chat template itself, for media the request does not have.
                raise Phi4MMError(f"the chat template writes {match.group(0)} but the request has "
                                  f"{len(counts[kind])} {kind}(s): fix the artifact's chat template")
            number = int(number)
            ids += encode(text[position:match.start()]) + [token_ids[kind]] * counts[kind][number - 1]
            order[kind].append(number)
            position = match.end()
        ids += encode(text[position:])
    return ids, order


def build_prompt(messages, images, audios, tokenizer: ChatTokenizer, text: TextConfig,
                 vision: VisionEncoder | None, audio: AudioEncoder | None, context_length: int,
                 media_cache: FeatureCache | None = None, max_crops: int | None = None) -> Prompt:
    """Render the messages with the chat template, expand the media placeholders and encode every
    image and clip (each once, whatever the number of references). Message text is encoded as
    text (it cannot produce control tokens; see tokenizer.py). A prompt that cannot fit
    `context_length` with one token of answer is refused before any encoder runs. Features
    already in `media_cache` (same encoder input) are not computed again; `max_crops` caps the
    images' HD tiling."""
    messages = as_messages(messages)
    check_text_fits(messages, tokenizer, context_length, text)
    images, audios = as_media_list(images, "image"), as_media_list(audios, "audio")
    if images and vision is None:
        raise Phi4MMError("this artifact has no vision.onnx: re-export it from a checkpoint with the vision encoder")
    if audios and audio is None:
        raise Phi4MMError("this artifact has no audio.onnx: re-export it from a checkpoint with the audio encoder")
    prepared = {"image": [vision.prepare(image, max_crops) for image in images],
                "audio": [audio.prepare(clip) for clip in audios]}
    token_ids = {"image": text.image_token_id, "audio": text.audio_token_id}
    parts = tokenizer.render_parts(place_media(messages, len(images), len(audios)))
    counts = {kind: [item.num_tokens for item in items] for kind, items in prepared.items()}
    ids, order = encode_parts(parts, tokenizer, token_ids, counts)
    check_fits(len(ids), context_length, text)
    # Audio heard together with an image takes the vision-mode projection, as the reference does.
    cache = media_cache or FeatureCache(max_bytes=0)

    def image_features(image):
        key = content_key("image", image.pixel_values, image.attention_mask, np.array(image.crop_grid))
        return key, cache.features(key, lambda: vision.features(image))

    def audio_features(clip):
        vision_mode = bool(images)
        key = content_key(f"audio vision_mode={vision_mode}", clip.features)
        return key, cache.features(key, lambda: audio.features(clip, vision_mode=vision_mode))
    encode = {"image": image_features, "audio": audio_features}
    features, keys = {}, {}
    for kind, items in prepared.items():
        encoded = {n: encode[kind](items[n - 1]) for n in sorted(set(order[kind]))}
        features[kind] = np.concatenate([encoded[n][1] for n in order[kind]]) if items else None
        keys[kind] = np.concatenate([item_row_keys(*encoded[n]) for n in order[kind]]) if items else None
        expected = 0 if features[kind] is None else features[kind].shape[0]
        if ids.count(token_ids[kind]) != expected:  # the template itself wrote a media token
            raise Phi4MMError(f"the prompt holds {ids.count(token_ids[kind])} {kind} tokens for "
                              f"{expected} feature rows: "
                              f"the artifact's chat template writes {tokenizer.token_string(token_ids[kind])!r} itself")
    return Prompt(ids, features["image"], features["audio"], keys["image"], keys["audio"])

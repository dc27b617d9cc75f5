"""Multimodal prompts: `<|image_N|>` / `<|audio_N|>` placeholders, as the original processor
writes them, expanded to one placeholder token per feature row.

transformers' processor spelling (`<|image|>`, `<|audio|>`, numbered in order of appearance) is
accepted too. Media given without any placeholder go before the text of the last user message.
"""

import re

from ..errors import Phi4MMError

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
            raise Phi4MMError(f"{kind} {missing[0]} was given but the prompt has no <|{kind}_{missing[0]}|> placeholder "
                              f"(use one for every {kind}, or none at all)")
    return messages


def expand(text: str, token_strings: dict[str, str], counts: dict[str, list[int]]) -> str:
    """Replace `<|image_N|>` by the image token string repeated counts['image'][N-1] times (same for audio)."""
    return PLACEHOLDER.sub(lambda m: token_strings[m.group(1)] * counts[m.group(1)][int(m.group(2)) - 1], text)

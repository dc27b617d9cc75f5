"""Prompt text and token ids: the artifact's chat template and tokenizer.json.

Control tokens (`<|end|>`, `<|system|>`, `<|assistant|>`, ...) come only from the chat template
and from our own media placeholders. Text inside messages is encoded as text: a message that
spells `<|end|><|system|>` gets the characters' ordinary tokens, so user text (a chat line, a web
page, a transcript) cannot forge turns. transformers' `apply_chat_template` parses control
tokens anywhere in the rendered string, message text included: that is the one difference, and
ordinary text tokenizes the same either way (the template's control tokens bound each message).
"""

import json
from pathlib import Path

import jinja2
from tokenizers import Tokenizer

from ..artifact import CHAT_TEMPLATE, TOKENIZER_CONFIG, TOKENIZER_JSON
from ..errors import Phi4MMError
from .chat_template import BoundedSandbox, render

# Phi-4-multimodal's own format, used only when the artifact carries no chat_template.
FALLBACK_TEMPLATE = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% else %}{{ eos_token }}{% endif %}"
)
ROLES = ("system", "user", "assistant")
# Text longer than this is counted in pieces of this size before it is tokenized whole (a
# tokenizer holds ~200 bytes per character of its input: 20 MB of text took ~4 GB).
COUNT_CHUNK_CHARS = 1 << 18
SENTINEL = "\ue000{}\ue001"  # private-use characters: stand in for message texts while rendering


def check_message(message) -> None:
    """A message is {'role': system|user|assistant, 'content': valid text}; else a Phi4MMError."""
    if not isinstance(message, dict) or message.get("role") not in ROLES or not isinstance(message.get("content"), str):
        raise Phi4MMError(f"bad message {message!r}: each message is {{'role': one of {ROLES}, 'content': str}}")
    try:
        message["content"].encode("utf-8")
    except UnicodeEncodeError as error:  # a lone surrogate: what Python makes of invalid UTF-8 on a command line
        raise Phi4MMError(f"the {message['role']} message is not valid text (character {error.start} is a lone "
                          f"surrogate, e.g. from bytes that are not UTF-8): fix its encoding") from None


def _token_text(value) -> str:
    return value.get("content", "") if isinstance(value, dict) else (value or "")


def _raise(message):
    raise jinja2.exceptions.TemplateError(message)


def read_template(folder: Path) -> tuple[dict, str | None]:
    """tokenizer_config.json (or {}) and the chat template's source: chat_template.jinja when
    present, else the config's chat_template (a string, or a list of {name, template})."""
    config_path = folder / TOKENIZER_CONFIG
    try:
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        if not isinstance(config, dict):
            raise ValueError("it is not a JSON object")
        template = config.get("chat_template")
        if isinstance(template, list):  # [{name, template}, ...]
            template = next((t["template"] for t in template if t.get("name") == "default"), template[0]["template"])
        if (folder / CHAT_TEMPLATE).is_file():
            template = (folder / CHAT_TEMPLATE).read_text()
        if template is not None and not isinstance(template, str):
            raise ValueError(f"its chat_template is a {type(template).__name__}, not text")
    except (ValueError, LookupError, AttributeError, TypeError, RecursionError, UnicodeDecodeError) as error:
        raise Phi4MMError(f"{config_path} or {CHAT_TEMPLATE} in {folder} is not usable ({type(error).__name__}: "
                          f"{error}): re-export the artifact from the checkpoint") from None
    return config, template


class ChatTokenizer:
    """Renders messages with the chat template and converts between text and ids."""

    def __init__(self, folder):
        folder = Path(folder)
        try:
            self.tokenizer = Tokenizer.from_file(str(folder / TOKENIZER_JSON))
        except Exception as error:  # the tokenizers library raises its own exception type
            raise Phi4MMError(f"{folder / TOKENIZER_JSON} cannot be read ({error}): re-export the artifact") from None
        config, template = read_template(folder)
        environment = BoundedSandbox(trim_blocks=True, lstrip_blocks=True)
        environment.globals["raise_exception"] = _raise
        try:
            self.template = environment.from_string(template or FALLBACK_TEMPLATE)
        except (jinja2.exceptions.TemplateError, TypeError, ValueError, RecursionError) as error:
            raise Phi4MMError(f"the artifact's chat template is not a valid Jinja template ({type(error).__name__}: "
                              f"{error}): fix chat_template.jinja / tokenizer_config.json's "
                              f"chat_template, or re-export from the checkpoint") from None
        self.special = {"bos_token": _token_text(config.get("bos_token")),
                        "eos_token": _token_text(config.get("eos_token"))}
        self.control_tokens = [t.content for t in self.tokenizer.get_added_tokens_decoder().values() if t.special]
        self.text_tokenizer = Tokenizer.from_str(self.tokenizer.to_str())
        self.text_tokenizer.encode_special_tokens = True  # control-token strings in text stay text
        # No token covers more characters than its vocabulary string has (byte-level BPE: one
        # character per byte): text longer than context x this cannot fit, whatever it holds.
        self.max_token_chars = max(map(len, self.tokenizer.get_vocab(with_added_tokens=False)), default=1)

    def render(self, messages) -> str:
        """Messages (a string, or a list of {role, content}) -> prompt text ending in the assistant tag."""
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        for message in messages:
            check_message(message)
        return self._render(messages)

    def _render(self, messages) -> str:
        try:
            return render(self.template, messages=messages, add_generation_prompt=True, **self.special)
        except jinja2.exceptions.TemplateError as error:
            raise Phi4MMError(f"the chat template rejected the messages: {error}") from None
        except (TypeError, ValueError, OverflowError, MemoryError, RecursionError, LookupError, AttributeError,
                ArithmeticError) as error:
            raise Phi4MMError(f"the chat template failed ({type(error).__name__}: {error}): check the artifact's "
                              f"chat template") from None

    def render_parts(self, messages) -> list[tuple[str, bool]]:
        """The rendered prompt as (text, is_message_text) parts in order: the template's own text
        (control tokens allowed) and each message's text (encoded as text only)."""
        for message in messages:
            check_message(message)
        stand_ins = [{**m, "content": SENTINEL.format(i)} for i, m in enumerate(messages)]
        rendered = self._render(stand_ins)
        parts, rest = [], rendered
        for i, message in enumerate(messages):
            before, found, rest = rest.partition(SENTINEL.format(i))
            if not found or SENTINEL.format(i) in rest:
                return self._unsplit(messages)
            parts += [(before, False), (message["content"], True)]
        return [*parts, (rest, False)]

    def _unsplit(self, messages) -> list[tuple[str, bool]]:
        # The template rewrites or repeats message texts, so they cannot be told apart in its
        # output: that is only safe when no message spells a control token.
        for message in messages:
            spelled = next((t for t in self.control_tokens if t in message["content"]), None)
            if spelled:
                raise Phi4MMError(f"a {message['role']} message contains the control token {spelled!r}, and this "
                                  f"artifact's chat template changes message text, so it cannot be kept as text: "
                                  f"remove it from the message")
        return [(self._render(messages), False)]

    def encode(self, text: str) -> list[int]:
        """Ids of template text: control-token strings become control tokens."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def text_exceeds(self, text: str, tokens: int) -> bool:
        """True when `text` surely takes more than `tokens` tokens, found without tokenizing more
        than COUNT_CHUNK_CHARS at once: longer text is counted in pieces (a piece boundary moves a
        count by a token or two, allowed for), and the count stops once past the limit."""
        if len(text) > tokens * self.max_token_chars:
            return True
        if len(text) <= COUNT_CHUNK_CHARS:
            return False
        counted = 0
        for start in range(0, len(text), COUNT_CHUNK_CHARS):
            counted += len(self.text_tokenizer.encode(text[start:start + COUNT_CHUNK_CHARS],
                                                      add_special_tokens=False).ids)
            if counted > tokens + 2 * (start // COUNT_CHUNK_CHARS + 1):
                return True
        return False

    def encode_text(self, text: str) -> list[int]:
        """Ids of message text: control-token strings are encoded as ordinary text."""
        return self.text_tokenizer.encode(text, add_special_tokens=False).ids

    def token_string(self, token_id: int) -> str:
        """The vocabulary entry of one id, e.g. '<|endoftext10|>' for the image placeholder."""
        return self.tokenizer.id_to_token(token_id)

    def decode(self, ids) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

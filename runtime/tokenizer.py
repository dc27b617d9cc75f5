"""Prompt text and token ids: the artifact's chat template and tokenizer.json."""

import json
from pathlib import Path

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

from ..errors import Phi4MMError

# Phi-4-multimodal's own format, used only when the artifact carries no chat_template.
FALLBACK_TEMPLATE = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% else %}{{ eos_token }}{% endif %}"
)
ROLES = ("system", "user", "assistant")


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


class ChatTokenizer:
    """Renders messages with the chat template and converts between text and ids."""

    def __init__(self, folder):
        folder = Path(folder)
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        config_path = folder / "tokenizer_config.json"
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        template = config.get("chat_template")
        if isinstance(template, list):  # [{name, template}, ...]
            template = next((t["template"] for t in template if t.get("name") == "default"), template[0]["template"])
        if (folder / "chat_template.jinja").is_file():
            template = (folder / "chat_template.jinja").read_text()
        environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        environment.globals["raise_exception"] = _raise
        self.template = environment.from_string(template or FALLBACK_TEMPLATE)
        self.special = {"bos_token": _token_text(config.get("bos_token")), "eos_token": _token_text(config.get("eos_token"))}

    def render(self, messages) -> str:
        """Messages (a string, or a list of {role, content}) -> prompt text ending in the assistant tag."""
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        for message in messages:
            check_message(message)
        try:
            return self.template.render(messages=messages, add_generation_prompt=True, **self.special)
        except jinja2.exceptions.TemplateError as error:
            raise Phi4MMError(f"the chat template rejected the messages: {error}") from None

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def token_string(self, token_id: int) -> str:
        """The vocabulary entry of one id, e.g. '<|endoftext10|>' for the image placeholder."""
        return self.tokenizer.id_to_token(token_id)

    def decode(self, ids) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

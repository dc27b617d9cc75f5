"""Streaming detokenization: token ids in, text pieces out, as soon as they are whole characters."""

from .tokenizer import ChatTokenizer


class StreamingDetokenizer:
    """Decodes only a short window: the tokens since the last emitted piece plus the ones before
    them for context (a token's text can depend on its neighbour), and holds back while the window
    ends in an incomplete UTF-8 sequence."""

    def __init__(self, tokenizer: ChatTokenizer):
        self.tokenizer = tokenizer
        self.tokens: list[int] = []
        self.shown = ""
        self._prefix = self._read = 0  # window: tokens[_prefix:_read] were decoded for the last piece

    def add(self, token: int) -> str:
        """Take one token; return the new text it completes ('' while a character is incomplete)."""
        self.tokens.append(token)
        before = self.tokenizer.decode(self.tokens[self._prefix:self._read])
        after = self.tokenizer.decode(self.tokens[self._prefix:])
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""
        piece = after[len(before):]
        self.shown += piece
        self._prefix, self._read = self._read, len(self.tokens)
        return piece

    def finish(self) -> str:
        """The text not shown yet (the end of an incomplete window), once the tokens are all in."""
        text = self.tokenizer.decode(self.tokens)
        remainder = text[len(self.shown):] if text.startswith(self.shown) else ""
        self.shown += remainder
        return remainder

    @property
    def text(self) -> str:
        return self.tokenizer.decode(self.tokens)

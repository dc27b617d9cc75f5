"""What a request returns: a `Generation` that streams text pieces, then holds a `GenerationResult`."""

import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass

from ..errors import Phi4MMError


@dataclass(frozen=True)
class Timings:
    load_ms: float  # loading the artifact (once per model)
    ttft_ms: float  # request start (media decoding and encoding included) to the first token
    decode_tokens_per_s: float | None  # tokens after the first per second; None for one token


@dataclass(frozen=True)
class GenerationResult:
    text: str
    token_ids: list[int]  # every generated id, a final end-of-sequence id included
    adapter: str  # the adapter that answered: "none", "vision", "speech" or a loaded one
    prompt_tokens: int
    finish_reason: str  # "stop" (an end-of-sequence id) or "length" (max_new_tokens or the context)
    timings: Timings
    cached_prompt_tokens: int = 0  # leading prompt positions the KV cache already held (not prefilled again)

    def to_json(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        """'adapter: vision, ttft 12.3 ms, 210.5 tokens/s, 24 tokens'."""
        rate = self.timings.decode_tokens_per_s
        return (f"adapter: {self.adapter}, ttft {self.timings.ttft_ms:.1f} ms, "
                f"{rate if rate is not None else '-'} tokens/s, {len(self.token_ids)} tokens")


@dataclass
class Outcome:
    """What the streaming generators report back to their Generation. A separate object, so the
    generators never hold the Generation: dropping an unfinished Generation (a Ctrl-C between two
    pieces) frees its generators at once, and their `finally` gives the model back, instead of a
    reference cycle holding the model until the garbage collector runs."""
    cached_prompt_tokens: int = 0  # set when the prompt is prefilled
    result: GenerationResult | None = None
    stop_requested: bool = False  # Generation.stop(): end after the piece just yielded, keeping a result


class Generation:
    """An iterator over streamed text pieces. `.result` is None until the iteration ends; then it
    holds the GenerationResult. `.text()` runs to the end and returns the whole answer. An error
    the stream raised (a refusal, say) is raised again by every later use, never an empty answer."""

    def __init__(self, pieces: Iterator[str] | None = None, adapter: str | None = None, outcome: Outcome | None = None):
        self._pieces = pieces
        self.adapter = adapter  # the adapter answering (known before the first piece)
        self._outcome = outcome or Outcome()
        self._error: Phi4MMError | None = None

    @property
    def cached_prompt_tokens(self) -> int:
        return self._outcome.cached_prompt_tokens

    @property
    def result(self) -> GenerationResult | None:
        return self._outcome.result

    def __iter__(self):
        return self

    def __next__(self) -> str:
        if self._error is not None:
            raise self._error
        try:
            return next(self._pieces)
        except Phi4MMError as error:
            self._error = error
            raise

    def text(self) -> str:
        for _ in self:
            pass
        if self.result is None:
            raise Phi4MMError("this generation was closed before it finished, so it has no text: read the pieces "
                              "it streamed, or generate again")
        return self.result.text

    def stop(self) -> GenerationResult | None:
        """End the answer after the pieces read so far, as a stop sequence the caller matched does
        (finish_reason "stop"), give the model back, and return the result: its token_ids are the
        tokens generated so far, its text theirs in full (a caller that cut at a stop sequence
        keeps its own cut text)."""
        self._outcome.stop_requested = True
        for _ in self:
            pass  # the stream ends at its next step: what it still yields was not asked for
        return self.result

    def close(self) -> None:
        """Stop early and give the model back (a closed generation keeps no result; see stop())."""
        if self._pieces is not None:
            self._pieces.close()


def stream_text(outcome: Outcome, tokens: Iterator[int], detokenizer, stop_ids: set[int], adapter: str,
                prompt_tokens: int, load_ms: float, started: float) -> Iterator[str]:
    """Text pieces for `tokens` as they arrive; sets `outcome.result` when they end."""
    token_ids, first_token_at = [], None
    try:
        for token in tokens:
            if first_token_at is None:
                first_token_at = time.perf_counter()
            token_ids.append(token)
            if token in stop_ids:
                break  # an end-of-sequence id is kept in token_ids (it was generated) but never shown
            if piece := detokenizer.add(token):
                yield piece
                if outcome.stop_requested:
                    break
    finally:
        tokens.close()  # also when the consumer stops early: the token loop gives the model back
    finished = time.perf_counter()
    if remainder := detokenizer.finish():
        yield remainder
    decode_s = finished - first_token_at
    outcome.result = GenerationResult(
        text=detokenizer.text,
        token_ids=token_ids,
        adapter=adapter,
        prompt_tokens=prompt_tokens,
        finish_reason="stop" if outcome.stop_requested or token_ids[-1] in stop_ids else "length",
        cached_prompt_tokens=outcome.cached_prompt_tokens,
        timings=Timings(
            load_ms=round(load_ms, 2),
            ttft_ms=round((first_token_at - started) * 1000, 2),
            decode_tokens_per_s=(round((len(token_ids) - 1) / decode_s, 2) if len(token_ids) > 1 and decode_s > 0
                                 else None),
        ),
    )

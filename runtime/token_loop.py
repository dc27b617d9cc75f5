"""The token loop: prefill the prompt, then choose and append one token at a time."""

from collections.abc import Callable, Iterator

import numpy as np

from .sequence import TextDecoder, crosses_longrope_switch


def generate_tokens(decoder: TextDecoder, prompt_embeds: np.ndarray, prompt_keys: np.ndarray, reused: int,
                    choose: Callable[[np.ndarray], int], max_new_tokens: int, stop_ids: set[int]) -> Iterator[int]:
    """Yield token ids for a prompt's embeddings [1, n, hidden] whose first `reused` positions the
    KV cache already holds (TextDecoder.reusable_prefix): each chosen by `choose(logits)`, the last
    one a stop id, or the one that reaches `max_new_tokens` or fills the context."""
    prompt_length = prompt_embeds.shape[1]
    logits = decoder.prefill(prompt_embeds[:, reused:], start=reused, keep=1, keys=prompt_keys[reused:])[0, -1]
    generated = []
    while True:
        token = choose(logits)
        generated.append(token)
        yield token
        total = prompt_length + len(generated)
        if token in stop_ids or len(generated) >= max_new_tokens or total >= decoder.cache.capacity:
            return
        if crosses_longrope_switch(decoder.text, total - 1, total):
            # The long rotary factors now apply to every position: recompute from the start.
            all_embeds = np.concatenate([prompt_embeds, decoder.embed(np.array([generated], np.int64))], axis=1)
            logits = decoder.prefill(all_embeds, keep=1, keys=np.concatenate([prompt_keys, generated]))[0, -1]
        else:
            logits = decoder.step(token)

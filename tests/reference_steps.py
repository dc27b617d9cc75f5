"""Teacher-forced logits from the PyTorch reference and from our runtime, step by step."""

import contextlib

import numpy as np


@contextlib.contextmanager
def reference_adapter(model, adapter: str):
    """Run the PEFT reference with one adapter, or with none."""
    if adapter == "none":
        with model.disable_adapter():
            yield
    else:
        model.set_adapter(adapter)
        yield


def reference_logits(model, adapter: str, ids: np.ndarray, steps: int):
    """(prefill logits [n, vocab], [decode-step logits [vocab]] * steps, greedy tokens fed)."""
    import torch

    with torch.no_grad(), reference_adapter(model, adapter):
        out = model(input_ids=torch.from_numpy(ids), use_cache=True)
        prefill = out.logits[0].numpy()
        past, last, tokens, decode = out.past_key_values, prefill[-1], [], []
        for _ in range(steps):
            tokens.append(int(np.argmax(last)))
            out = model(input_ids=torch.tensor([[tokens[-1]]]), past_key_values=past, use_cache=True)
            past, last = out.past_key_values, out.logits[0, -1].numpy()
            decode.append(last)
    return prefill, decode, tokens


def runtime_logits(model, adapter: str, ids: np.ndarray, tokens):
    """Our prefill logits [n, vocab] and decode-step logits for the same fed tokens."""
    model.decoder.activate(adapter)
    prefill = model.decoder.prefill(model.decoder.embed(ids), 0)[0]
    return prefill, [model.decoder.step(t).copy() for t in tokens]


def paired_logits(model, reference, adapter: str, ids: np.ndarray, steps: int = 8):
    """Ours and the reference's, teacher-forced on the reference's greedy tokens:
    (prefill, reference prefill, decode steps, reference decode steps)."""
    ref_prefill, ref_decode, tokens = reference_logits(reference, adapter, ids, steps)
    prefill, decode = runtime_logits(model, adapter, ids, tokens)
    return prefill, ref_prefill, decode, ref_decode


def relative_l2(ours, reference) -> float:
    """|ours - reference| / |reference| (L2 norms, computed in float64)."""
    ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
    return float(np.linalg.norm(ours - reference) / np.linalg.norm(reference))


def max_relative_error(ours, reference) -> float:
    """max |ours - reference| / max |reference|: the error relative to the logit scale."""
    return float(np.abs(np.asarray(ours) - np.asarray(reference)).max() / np.abs(reference).max())

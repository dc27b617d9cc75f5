"""The PyTorch reference's answers to the held-out tasks: for each task its greedy answer's token
ids (real ids, `<|end|>` included) and, before each of those tokens, its next-token distribution,
as log-probabilities over the trained rows of the vocabulary plus one bin for all other rows.

Why binned: the full distribution is 200064 wide; the ~199.4k rows no training reached are
written tiny and near-uniform, so one bin holding their total mass keeps what matters for a
divergence (a KL over the bins is a lower bound of the full one, equal when the untrained rows
keep their relative sizes). Training writes the file (`python -m phi4mm_edge.training`); eval
reads it with numpy alone.
"""

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..artifact import HELDOUT_REFERENCE
from ..errors import Phi4MMError

ROWS = "rows"


@dataclass
class Reference:
    rows: np.ndarray  # [R] the real ids with a bin of their own; bin R is every other row
    answers: dict  # task id -> [n] the reference's greedy answer ids
    logprobs: dict  # task id -> [n, R + 1] log-probabilities before each answer token


def binned_logprobs(logits: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """[n, vocab] logits -> [n, R + 1] log-probabilities: the `rows`, then all others together."""
    logits = np.asarray(logits, np.float64)
    top = logits.max(axis=-1, keepdims=True)
    logp = logits - (top + np.log(np.exp(logits - top).sum(axis=-1, keepdims=True)))
    others = np.ones(logits.shape[-1], bool)
    others[rows] = False
    rest = logp[:, others]
    rest_top = rest.max(axis=-1, keepdims=True)
    rest_total = rest_top + np.log(np.exp(rest - rest_top).sum(axis=-1, keepdims=True))
    return np.concatenate([logp[:, rows], rest_total], axis=-1)


def kl_divergence(reference: np.ndarray, other: np.ndarray) -> np.ndarray:
    """KL(reference || other) per position, both [n, bins] log-probabilities."""
    return (np.exp(reference) * (reference - other)).sum(axis=-1)


def write_reference(folder, rows, answers: dict, logprobs: dict) -> None:
    arrays = {ROWS: np.asarray(rows, np.int64)}
    for task_id, ids in answers.items():
        arrays[f"answer/{task_id}"] = np.asarray(ids, np.int64)
        arrays[f"logprobs/{task_id}"] = np.asarray(logprobs[task_id], np.float32)
    np.savez_compressed(Path(folder) / HELDOUT_REFERENCE, **arrays)


def read_reference(folder) -> Reference | None:
    """The reference in `folder`, None when it has none (a task set drawn with another seed)."""
    path = Path(folder) / HELDOUT_REFERENCE
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            rows = data[ROWS]
            answers = {k.split("/", 1)[1]: data[k] for k in data.files if k.startswith("answer/")}
            logprobs = {k.split("/", 1)[1]: data[k] for k in data.files if k.startswith("logprobs/")}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
        raise Phi4MMError(f"{path} is damaged ({error}): make the trained reference again with "
                          f"`phi4mm-edge make-reference --trained DIR` and export it") from None
    if set(answers) != set(logprobs) or any(len(answers[k]) != len(logprobs[k]) or
                                            logprobs[k].shape[-1] != len(rows) + 1 for k in answers):
        raise Phi4MMError(f"{path} is inconsistent (answers and distributions do not pair up): make the trained "
                          f"reference again with `phi4mm-edge make-reference --trained DIR` and export it")
    return Reference(rows, answers, logprobs)

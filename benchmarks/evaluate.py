"""`phi4mm-edge eval ARTIFACT`: answer quality of an export of the trained reference model.

Runs the held-out tasks the artifact carries (tasks/task_set.py) through the runtime, greedy, and
prints per modality and per kind:
- accuracy: exact match with the expected answer (tasks/items.answer_matches);
- agreement: the same answer token ids as the PyTorch fp32 reference (tasks/reference.py);
- KL: the mean over answer positions of KL(reference || export) of the next-token distribution,
  teacher-forced on the reference's answer (the export is fed the reference's tokens, so a
  changed early token does not change what later positions are asked).

`--follow-up` runs each prompt as a follow-up question would: the prompt up to its last media
token (half of a text prompt) is run first, and the question is then prefilled from the cache.
`--seed N` draws a fresh held-out set (needs espeak-ng): accuracy only, the reference's answers
ship for the shipped set alone (computing them needs the PyTorch reference: `python -m
phi4mm_edge.training --heldout-seed N` writes the tasks, not the answers).
"""

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import Phi4MMError
from ..runtime import Phi4MMEdge
from ..runtime.options import GenerationOptions
from ..runtime.prompt import Prompt
from ..tasks.items import MODALITIES, answer_matches
from ..tasks.reference import binned_logprobs, kl_divergence, read_reference
from ..tasks.task_set import load_task_set

MAX_NEW_TOKENS = 16  # the longest answer is 11 tokens with <|end|>


@dataclass
class Scores:
    """Counts for one group of items (a kind or a modality)."""

    items: int = 0
    correct: int = 0
    agree: int = 0
    kl: list = field(default_factory=list)  # per answer position

    def add(self, correct: bool, agree: bool | None, kl: np.ndarray | None) -> None:
        self.items += 1
        self.correct += correct
        self.agree += bool(agree)
        if kl is not None:
            self.kl.extend(float(v) for v in kl)

    def summary(self, with_reference: bool) -> dict:
        result = {"items": self.items, "accuracy": self.correct / self.items}
        if with_reference:
            result.update(agreement=self.agree / self.items, mean_kl=float(np.mean(self.kl)) if self.kl else None)
        return result


def item_number(task) -> int:
    """A held-out item's number within its kind (ids are `<kind>-<number>`): `--limit N` keeps 0..N-1."""
    return int(task.id.rsplit("-", 1)[1])


def cut_point(prompt: Prompt, image_token: int, audio_token: int) -> int:
    """Where a follow-up's cached part ends: after the last media token, else half the prompt."""
    ids = np.asarray(prompt.token_ids)
    media = np.flatnonzero((ids == image_token) | (ids == audio_token))
    return int(media[-1]) + 1 if len(media) else len(ids) // 2


def run_from_cache(model: Phi4MMEdge, prompt: Prompt, follow_up: bool) -> None:
    """Start each run from an empty KV cache, or (follow-up) from one holding the prompt's first part."""
    model.clear_cache()
    if follow_up:
        cut = cut_point(prompt, model.text.image_token_id, model.text.audio_token_id)
        first = Prompt(prompt.token_ids[:cut], prompt.image_features, prompt.audio_features, prompt.image_keys,
                       prompt.audio_keys)
        model.forced_logits(first, [prompt.token_ids[cut]])


def evaluate(artifact, provider: str = "auto", seed: int | None = None, follow_up: bool = False,
             limit: int | None = None, progress: bool = True, threads: int | None = None) -> dict:
    """Scores of `artifact` on its held-out tasks (or a fresh set drawn with `seed`), as a dict."""
    artifact = Path(artifact)
    with tempfile.TemporaryDirectory() as scratch:
        task_set = load_task_set(artifact)  # refuses an artifact that is not the trained model's
        reference = read_reference(artifact)
        if seed is not None and seed != task_set.seed:
            task_set, reference = fresh_task_set(Path(scratch), artifact, seed), None
        return score(artifact, task_set, reference, provider, follow_up, limit, progress, threads)


def fresh_task_set(folder: Path, artifact: Path, seed: int):
    from ..tasks.catalog import heldout_tasks, kinds_table
    from ..tasks.task_set import stamp_model, write_task_set

    write_task_set(folder, heldout_tasks(seed), seed, kinds_table())
    stamp_model(folder, artifact)
    return load_task_set(folder, artifact)


def score(artifact: Path, task_set, reference, provider, follow_up, limit, progress, threads) -> dict:
    from tqdm import tqdm

    model = Phi4MMEdge.load(artifact, provider=provider, threads=threads)
    options = GenerationOptions(max_new_tokens=MAX_NEW_TOKENS, temperature=0.0)
    tasks = [t for t in task_set.tasks if limit is None or item_number(t) < limit]
    by_kind, by_modality, total, started = {}, {}, Scores(), time.perf_counter()
    answers = {}
    for task in tqdm(tasks, desc="eval", unit="item", disable=not progress, file=sys.stderr):
        images = [task_set.media(name) for name in task.images]
        audios = [task_set.media(name) for name in task.audios]
        prompt = model.prompt(task.messages, images, audios)
        run_from_cache(model, prompt, follow_up)
        generation = model.generate(task.messages, images, audios, options=options)
        text = generation.text()
        ids = list(generation.result.token_ids)
        agree = kl = None
        if reference is not None:
            expected = [int(i) for i in reference.answers[task.id]]
            agree = ids == expected
            run_from_cache(model, prompt, follow_up)
            logits = model.forced_logits(prompt, expected)
            kl = kl_divergence(reference.logprobs[task.id].astype(np.float64), binned_logprobs(logits, reference.rows))
        correct = answer_matches(text, task.answer)
        answers[task.id] = {"answer": text, "expected": task.answer, "correct": correct, "agrees": agree}
        for group, key in ((by_kind, task.kind), (by_modality, task.modality)):
            group.setdefault(key, Scores()).add(correct, agree, kl)
        total.add(correct, agree, kl)
    with_reference = reference is not None
    return {"artifact": str(artifact), "provider": model.provider, "seed": task_set.seed, "follow_up": follow_up,
            "reference": with_reference, "seconds": round(time.perf_counter() - started, 1),
            "all": total.summary(with_reference),
            "modalities": {m: by_modality[m].summary(with_reference) for m in MODALITIES if m in by_modality},
            "kinds": {k: s.summary(with_reference) for k, s in by_kind.items()}, "answers": answers}


def table(result: dict) -> str:
    """The scores as a text table: one row per kind, then per modality, then all."""
    with_reference = result["reference"]
    head = f"{'':16s} {'items':>5s} {'accuracy':>9s}" + (f" {'agree':>7s} {'mean KL':>9s}" if with_reference else "")
    lines = [head]

    def row(name, scores):
        line = f"{name:16s} {scores['items']:5d} {scores['accuracy']:9.1%}"
        if with_reference:
            kl = scores["mean_kl"]
            line += f" {scores['agreement']:7.1%} {kl:9.2e}" if kl is not None else f" {scores['agreement']:7.1%}"
        return line
    lines += [row(kind, scores) for kind, scores in result["kinds"].items()]
    lines += [row(modality, scores) for modality, scores in result["modalities"].items()]
    lines.append(row("all", result["all"]))
    if not with_reference:
        lines.append("(no reference answers for this task set: accuracy only)")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("artifact", help="an export of the trained reference (make-reference --trained, then export)")
    parser.add_argument("--seed", type=int,
                        help="draw a fresh held-out set with this seed instead of the shipped one (needs espeak-ng; "
                             "accuracy only)")
    parser.add_argument("--follow-up", action="store_true",
                        help="run each question as a follow-up: the prompt's media part from the cache, the question "
                             "prefilled after it")
    parser.add_argument("--limit", type=int, metavar="N", help="the first N items of each kind")
    parser.add_argument("--threads", type=int, help="ONNX Runtime threads (default: the runtime's choice)")
    parser.add_argument("--json", metavar="FILE", help="also write every score and answer to FILE")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def main(args) -> dict:
    if args.limit is not None and args.limit < 1:
        raise Phi4MMError(f"--limit {args.limit}: give 1 or more items per kind")
    result = evaluate(args.artifact, args.provider, args.seed, args.follow_up, args.limit, not args.quiet,
                      args.threads)
    print(f"{result['artifact']} on {result['provider']}, held-out seed {result['seed']}"
          f"{', follow-up' if result['follow_up'] else ''} ({result['seconds']} s)")
    print(table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return result

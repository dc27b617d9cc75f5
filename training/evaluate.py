"""Greedy answers of the PyTorch reference to tasks, and exact-match accuracy per kind.

Used twice: on the compact model while it trains (a quick look after each stage), and on the
expanded checkpoint (`make-reference --trained`'s weights, the 200064-row vocabulary, loaded as
the parity tests load the reference), where each step's argmax over all rows is compared with
the argmax over the trained rows: the untrained rows must never win.
"""

import contextlib
import io
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..tasks.items import answer_matches
from .batches import END, Preprocessor

MAX_NEW_TOKENS = 16  # the longest answer (six spaced letters) is 11 tokens with <|end|>


@dataclass
class Accuracy:
    """Exact-match counts per kind, and how often the full table's argmax left the trained rows."""

    correct: dict = field(default_factory=lambda: defaultdict(int))
    total: dict = field(default_factory=lambda: defaultdict(int))
    modality: dict = field(default_factory=dict)
    untrained_wins: int = 0
    steps: int = 0

    def add(self, kind: str, modality: str, right: bool) -> None:
        self.correct[kind] += right
        self.total[kind] += 1
        self.modality[kind] = modality

    def by_kind(self) -> dict[str, float]:
        return {kind: self.correct[kind] / self.total[kind] for kind in self.total}

    def by_modality(self) -> dict[str, float]:
        result = {}
        for modality in dict.fromkeys(self.modality.values()):
            kinds = [k for k, m in self.modality.items() if m == modality]
            result[modality] = sum(self.correct[k] for k in kinds) / sum(self.total[k] for k in kinds)
        return result

    def table(self) -> str:
        lines = [f"{kind:16s} {self.correct[kind]:4d}/{self.total[kind]:<4d} {value:6.1%}"
                 for kind, value in self.by_kind().items()]
        lines += [f"{modality:16s} {value:6.1%}" for modality, value in self.by_modality().items()]
        if self.steps:
            lines.append(f"untrained rows won {self.untrained_wins} of {self.steps} greedy steps")
        return "\n".join(lines)


@contextlib.contextmanager
def _adapter(model, name: str):
    if name == "none":
        with model.disable_adapter():
            yield
    else:
        model.set_adapter(name)
        yield


def greedy(model, ids: list[int], media: dict, adapter: str, end_id: int, trained_rows=None) -> tuple[list[int], int]:
    """Greedy ids after the prompt up to and including `end_id` (at most MAX_NEW_TOKENS), and
    how many steps' argmax over all rows fell outside `trained_rows` (a tensor of row ids)."""
    causal_lm = model.base_model.model
    generated, outside = [], 0
    with torch.no_grad(), _adapter(model, adapter):
        out = causal_lm(input_ids=torch.tensor([ids]), use_cache=True, logits_to_keep=1, **media)
        for _ in range(MAX_NEW_TOKENS):
            logits = out.logits[0, -1]
            token = int(torch.argmax(logits))
            if trained_rows is not None:
                best_trained = int(trained_rows[torch.argmax(logits[trained_rows])])
                outside += token != best_trained
                token = best_trained  # the answer the trained rows give; `outside` says if the full table differs
            generated.append(token)
            if token == end_id:
                break
            out = causal_lm(input_ids=torch.tensor([[token]]), cache=out.cache, use_cache=True, logits_to_keep=1)
    return generated, outside


def evaluate(model, preprocessor: Preprocessor, tasks: list, real_ids: bool = False, log=None) -> Accuracy:
    """Accuracy of greedy answers. `real_ids`: the model has the 200064-row vocabulary (the
    expanded checkpoint); otherwise the compact one."""
    vocabulary = preprocessor.vocabulary
    to_model = (lambda ids: [vocabulary.real_ids[i] for i in ids]) if real_ids else (lambda ids: ids)
    trained_rows = torch.tensor(vocabulary.real_ids) if real_ids else None
    end_id = END if real_ids else vocabulary.compact[END]
    accuracy = Accuracy()
    for number, task in enumerate(tasks):
        batch = preprocessor.batch([task])
        prompt = batch.input_ids[0][batch.labels[0] == -100].tolist()  # the prompt: everything without loss
        generated, outside = greedy(model, to_model(prompt), batch.media, batch.adapter, end_id, trained_rows)
        if real_ids:
            generated = [vocabulary.compact[i] for i in generated]
            accuracy.untrained_wins += outside
            accuracy.steps += len(generated)
        answer = vocabulary.decode(generated)
        accuracy.add(task.kind, task.modality, answer_matches(answer, task.answer))
        if log and number < 3:
            log(f"  {task.kind}: {task.prompt!r} -> {answer!r} (expected {task.answer!r})")
    return accuracy


def reference_answers(model, preprocessor: Preprocessor, task_set) -> tuple[dict, dict]:
    """The expanded checkpoint's greedy answers (real ids, argmax over all 200064 rows) to the
    task set, and the binned next-token log-probabilities before each answer token, teacher-forced
    (tasks/reference.py): what `phi4mm-edge eval` compares an export with."""
    from ..tasks.reference import binned_logprobs

    vocabulary = preprocessor.vocabulary
    rows = np.array(vocabulary.real_ids)
    answers, logprobs = {}, {}
    causal_lm = model.base_model.model
    for entry, task in zip(task_set.tasks, as_tasks(task_set)):
        batch = preprocessor.batch([task])
        prompt = [vocabulary.real_ids[i] for i in batch.input_ids[0][batch.labels[0] == -100].tolist()]
        answer, _ = greedy(model, prompt, batch.media, batch.adapter, END)
        with torch.no_grad(), _adapter(model, batch.adapter):
            logits = causal_lm(input_ids=torch.tensor([prompt + answer[:-1]]), **batch.media).logits[0]
        answers[entry.id] = answer
        logprobs[entry.id] = binned_logprobs(logits[len(prompt) - 1:].double().numpy(), rows)
    return answers, logprobs


def load_reference(checkpoint: Path):
    """The PyTorch reference of a checkpoint folder: transformers' model in fp32 with eager
    attention and both LoRAs as PEFT adapters, as the parity tests load it."""
    from peft import PeftModel
    from transformers import Phi4MultimodalForCausalLM

    base = Phi4MultimodalForCausalLM.from_pretrained(checkpoint, dtype=torch.float32, attn_implementation="eager")
    model = PeftModel.from_pretrained(base, checkpoint / "vision-lora", adapter_name="vision")
    model.load_adapter(checkpoint / "speech-lora", adapter_name="speech")
    return model.eval()


def as_tasks(task_set) -> list:
    """A held-out TaskSet (files) -> Task values, pictures decoded, clips as their bytes."""
    from PIL import Image

    from ..tasks.items import Task

    def picture(name):
        return Image.open(io.BytesIO(task_set.media(name))).convert("RGB")
    return [Task(t.kind, t.modality, t.messages[0]["content"], t.answer, t.id, images=[picture(n) for n in t.images],
                 audios=[task_set.media(n) for n in t.audios]) for t in task_set.tasks]


def sample_tasks(kinds, per_kind: int, seed: int) -> list:
    """`per_kind` held-out items of each kind (the quick look during training)."""
    rng = np.random.default_rng(seed)
    return [kind.generate(rng, True) for kind in kinds for _ in range(per_kind)]

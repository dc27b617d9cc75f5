"""`python -m phi4mm_edge.training`: train the trained reference model and write its compact files.

One command, deterministic (fixed seeds, 2 threads, deterministic kernels): the tokenizer, the
held-out task set, the three stages, the compact files in export/data/trained_reference/, then
the expanded checkpoint's held-out accuracy with the PyTorch reference (recorded in model.json).
Needs espeak-ng (the spoken clips) and the test extra (torch, transformers, peft).
"""

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from ..export.safetensors_file import write_safetensors
from ..machine import cpu_description
from ..export.trained_reference import DATA, MODEL, TOKEN_TABLE, TOKENIZER, WEIGHTS, write_trained_reference
from ..tasks import catalog
from ..tasks.items import AUDIO, IMAGE, IMAGE_AUDIO, TEXT
from ..tasks.reference import write_reference
from ..tasks.task_set import write_task_set
from . import stages
from .batches import Preprocessor, Vocabulary
from .evaluate import as_tasks, evaluate, load_reference, reference_answers, sample_tasks
from .model import build_model, trained_config, trained_tensors, unused_logit
from .tokenizer import train_tokenizer

MODEL_SEED = 0  # the initial weights (and the untrained token rows)
DATA_SEEDS = {"text": 11, "vision": 12, "speech": 13}  # each stage's training items
STAGES = (
    stages.Stage("text", steps=1000, batch_size=32, learning_rate=1e-3),
    stages.Stage("vision", steps=600, batch_size=16, learning_rate=1e-3),
    stages.Stage("speech", steps=600, batch_size=16, learning_rate=1e-3),
)
# The encoders' spotting pretraining before their stages: (steps, batch, peak rate). A vision step
# costs ~0.8 s at 32 pictures, mostly rendering and transformers' image processor; an audio step
# ~0.15 s (the clips' features are made once).
VISION_ENCODER_PRETRAINING = (200, 16, 3e-3)
AUDIO_ENCODER_PRETRAINING = (2000, 32, 3e-3)
SPOKEN_POOL_PER_KIND = 200  # spoken training items made per kind (each heard several times)
QUICK_LOOK_PER_KIND = 8


def write_heldout(folder: Path, seed: int) -> None:
    write_task_set(folder, catalog.heldout_tasks(seed), seed, catalog.kinds_table())


def stage_batches(stage: stages.Stage, model, preprocessor: Preprocessor, pool_per_kind: int, log, head,
                  encoder_pretraining: dict) -> object:
    rng = np.random.default_rng(DATA_SEEDS[stage.name])
    if stage.name == "text":
        draw = stages.fresh_tasks(TEXT, rng, shaped=False)
        return (preprocessor.batch([draw()[1] for _ in range(stage.batch_size)]) for _ in iter(int, 1))
    if stage.name == "vision":
        draw = stages.fresh_tasks(IMAGE, rng)
        steps, batch_size, peak_rate = encoder_pretraining["vision"]
        stages.pretrain_vision_encoder(model, stages.vision_head(model, len(preprocessor.vocabulary)),
                                       stages.bucketed(draw, batch_size, preprocessor), steps, peak_rate, log)
        return stages.bucketed(draw, stage.batch_size, preprocessor)
    pool = stages.make_pool((AUDIO, IMAGE_AUDIO), pool_per_kind, rng, log)
    stages.fit_audio_normalization(model, pool, preprocessor)
    stages.pretrain_audio_encoder(model, head, pool, preprocessor, *encoder_pretraining["audio"], DATA_SEEDS["speech"],
                                  log)
    return stages.bucketed(stages.pooled_tasks(pool, rng), stage.batch_size, preprocessor)


def train(schedule=STAGES, pool_per_kind: int = SPOKEN_POOL_PER_KIND, log=print, look: bool = True,
          tokenizer_json: str | None = None, stage_dir: Path | None = None, resume_after: str | None = None,
          encoder_pretraining: dict | None = None) -> tuple:
    """(model, vocabulary, config, tokenizer json, seconds per stage), deterministically. `look`:
    a quick held-out accuracy after each stage (on the compact model, logged); `tokenizer_json`:
    the trained tokenizer when it is at hand (training it is deterministic too); `stage_dir`: each
    stage's weights are saved there, and `resume_after` a stage name starts from its saved weights
    (each stage draws from its own seed, so a resumed run equals a whole one)."""
    import torch

    encoder_pretraining = encoder_pretraining or {"vision": VISION_ENCODER_PRETRAINING,
                                                  "audio": AUDIO_ENCODER_PRETRAINING}
    stages.make_deterministic(MODEL_SEED)
    tokenizer_json = tokenizer_json or train_tokenizer()
    vocabulary, config = Vocabulary(tokenizer_json), trained_config()
    model = build_model(config, vocabulary, MODEL_SEED)
    preprocessor = Preprocessor(vocabulary, config)
    seconds, names = {}, [stage.name for stage in schedule]
    if resume_after:
        model.load_state_dict(torch.load(stage_dir / f"{resume_after}.pt"))
        schedule = schedule[names.index(resume_after) + 1:]
    for stage in schedule:
        started = time.perf_counter()
        head = stages.recognition_head(model, len(vocabulary)) if stage.name == "speech" else None
        batches = stage_batches(stage, model, preprocessor, pool_per_kind, log, head, encoder_pretraining)
        stages.train_stage(model, stage, batches, unused_logit(vocabulary), log, head)
        seconds[stage.name] = round(time.perf_counter() - started, 1)
        if stage_dir:
            torch.save(model.state_dict(), stage_dir / f"{stage.name}.pt")
        if look:
            modalities = stages.MODALITIES_OF_STAGE[stage.name]
            look = sample_tasks([k for m in modalities for k in catalog.kinds_of(m)], QUICK_LOOK_PER_KIND, 99)
            log(evaluate(model, preprocessor, look).table())
    return model, vocabulary, config, tokenizer_json, seconds


def write_compact(out: Path, model, vocabulary: Vocabulary, config: dict, tokenizer_json: str, record: dict) -> None:
    tensors = trained_tensors(model, config)
    shapes = {name: values.shape for name, values in tensors.items()}
    write_safetensors(out / WEIGHTS, shapes, tensors.__getitem__, "BF16")
    (out / TOKENIZER).write_text(tokenizer_json)
    model_json = {"config": config, "token_ids": vocabulary.real_ids, "untrained_rows_seed": MODEL_SEED, **record}
    (out / MODEL).write_text(json.dumps(model_json, indent=1) + "\n")
    assert TOKEN_TABLE in tensors


def evaluate_expanded(out: Path, log=print) -> dict:
    """Held-out accuracy of the expanded native checkpoint with the PyTorch reference, greedy; its
    answers and next-token distributions written to `out` (tasks/reference.py) for eval."""
    from ..tasks.task_set import load_task_set

    with tempfile.TemporaryDirectory() as scratch:
        checkpoint = write_trained_reference(Path(scratch) / "trained", data=out)
        task_set = load_task_set(checkpoint)
        model = load_reference(checkpoint)
        vocabulary = Vocabulary((out / TOKENIZER).read_text())
        preprocessor = Preprocessor(vocabulary, json.loads((out / MODEL).read_text())["config"])
        accuracy = evaluate(model, preprocessor, as_tasks(task_set), real_ids=True)
        answers, logprobs = reference_answers(model, preprocessor, task_set)
        write_reference(out, vocabulary.real_ids, answers, logprobs)
    log(accuracy.table())
    return {"by_kind": {k: round(v, 4) for k, v in accuracy.by_kind().items()},
            "by_modality": {k: round(v, 4) for k, v in accuracy.by_modality().items()},
            "items": sum(accuracy.total.values()), "untrained_row_wins": accuracy.untrained_wins,
            "greedy_steps": accuracy.steps}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m phi4mm_edge.training", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DATA, help=f"where the compact files go (default {DATA})")
    parser.add_argument("--heldout-seed", type=int, default=catalog.HELDOUT_SEED,
                        help="write only a held-out task set from this seed (never trained on) and stop")
    parser.add_argument("--no-eval", action="store_true", help="skip the expanded checkpoint's held-out accuracy")
    parser.add_argument("--eval-only", action="store_true",
                        help="only the expanded checkpoint's held-out accuracy and the reference's answers, for the "
                             "compact files already in --out")
    parser.add_argument("--stage-dir", type=Path, help="save each stage's weights here (PyTorch files)")
    parser.add_argument("--resume-after", choices=[s.name for s in STAGES],
                        help="start from that stage's weights saved in --stage-dir")
    args = parser.parse_args(argv)
    if args.resume_after and not args.stage_dir:
        parser.error("--resume-after needs --stage-dir")
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    if args.eval_only:
        record = json.loads((out / MODEL).read_text())
        record["heldout_accuracy"] = evaluate_expanded(out)
        record["heldout_accuracy"]["seconds"] = round(time.perf_counter() - started, 1)
        (out / MODEL).write_text(json.dumps(record, indent=1) + "\n")
        return
    write_heldout(out, args.heldout_seed)
    if args.heldout_seed != catalog.HELDOUT_SEED:
        print(f"wrote a held-out task set (seed {args.heldout_seed}) to {out}")
        return
    if args.stage_dir:
        args.stage_dir.mkdir(parents=True, exist_ok=True)
    model, vocabulary, config, tokenizer_json, seconds = train(stage_dir=args.stage_dir, resume_after=args.resume_after)
    record = {"training": {"command": "python -m phi4mm_edge.training", "stage_seconds": seconds,
                           "stages": [vars(s) for s in STAGES], "threads": stages.THREADS,
                           "encoder_pretraining": {"vision": VISION_ENCODER_PRETRAINING,
                                                   "audio": AUDIO_ENCODER_PRETRAINING},
                           "machine": cpu_description()}}
    write_compact(out, model, vocabulary, config, tokenizer_json, record)
    record["training"]["seconds"] = round(time.perf_counter() - started, 1)
    if not args.no_eval:
        eval_started = time.perf_counter()
        record["heldout_accuracy"] = evaluate_expanded(out)
        record["heldout_accuracy"]["seconds"] = round(time.perf_counter() - eval_started, 1)
    write_compact(out, model, vocabulary, config, tokenizer_json, record)
    print(f"wrote {out}: {sum(p.stat().st_size for p in out.iterdir()) / 1e6:.1f} MB in "
          f"{time.perf_counter() - started:.0f} s")

"""The three training stages, as Phi-4-multimodal was trained: the text model; then, with it
frozen, the vision encoder + projector + vision LoRA; then, with both frozen, the audio encoder +
both audio projections + speech LoRA (audio heard with a picture runs the frozen vision LoRA and
the vision-mode projection, as the model routes it).

Everything is seeded and runs on fixed thread counts with deterministic kernels, so a stage
given the same steps gives the same weights bit for bit on the same machine.
"""

import contextlib
import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from ..tasks import catalog
from ..tasks.items import AUDIO, IMAGE, IMAGE_AUDIO, TEXT
from .batches import IGNORE, Batch, Preprocessor, decode_clip
from .model import ADAPTER_PREFIXES, round_to_bf16

THREADS = 2


def make_deterministic(seed: int) -> None:
    torch.manual_seed(seed)
    torch.set_num_threads(THREADS)
    torch.use_deterministic_algorithms(True)


@dataclass
class Stage:
    """One stage's schedule: `steps` AdamW steps of `batch_size` items at peak `learning_rate`
    (linear warm-up over the first 5%, cosine decay to a tenth)."""

    name: str
    steps: int
    batch_size: int
    learning_rate: float


def trainable_names(model, stage: str) -> list[str]:
    """The parameters a stage trains. text: the decoder and the token table (the LoRAs and the
    encoders stay); vision / speech: that encoder, its projection(s) and that adapter."""
    names = []
    for name, _ in model.named_parameters():
        if ".lora_" in name:
            chosen = stage != "text" and f".{stage}." in name
        elif stage == "text":
            chosen = "embed_tokens_extend" not in name
        else:
            chosen = ADAPTER_PREFIXES[stage] in name
        if chosen:
            names.append(name)
    return names


@contextlib.contextmanager
def adapter(model, name: str, trainable: set[str]):
    """Run with one adapter (or none); PEFT's set_adapter marks the active adapter trainable, so
    the stage's own choice is put back."""
    if name == "none":
        with model.disable_adapter():
            yield
        return
    model.set_adapter(name)
    for parameter_name, parameter in model.named_parameters():
        parameter.requires_grad_(parameter_name in trainable)
    yield


def loss_of(model, batch: Batch, unused_logit: float, trainable: set[str]) -> torch.Tensor:
    """Mean cross-entropy of the answer tokens over the compact vocabulary plus one logit of
    `unused_logit` standing for every untrained row (training/model.py says why)."""
    with adapter(model, batch.adapter, trainable):
        hidden = model.base_model.model.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                              **batch.media).last_hidden_state
    targets = batch.labels[:, 1:]
    keep = targets != IGNORE
    logits = model.base_model.model.lm_head(hidden[:, :-1][keep])
    rest = torch.full((logits.shape[0], 1), unused_logit)
    right = logits.gather(1, targets[keep][:, None])[:, 0]
    return (torch.logsumexp(torch.cat([logits, rest], dim=1), dim=1) - right).mean()


def learning_rate(stage: Stage, step: int) -> float:
    warmup = max(1, stage.steps // 20)
    if step < warmup:
        return stage.learning_rate * (step + 1) / warmup
    progress = (step - warmup) / max(1, stage.steps - warmup)
    return stage.learning_rate * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))


def recognition_head(model, classes: int) -> torch.nn.Linear:
    """Training only: the conformer's frames -> the compact vocabulary, for spotting_loss. Not
    part of the checkpoint."""
    return torch.nn.Linear(_audio_encoder(model).config.hidden_size, classes)


def _audio_encoder(model):
    return model.base_model.model.model.embed_tokens_extend.audio_embed.encoder


def spotting_loss(head, encoded: torch.Tensor, transcripts: list) -> torch.Tensor:
    """Which tokens a clip says, from each token's loudest frame (max over time), as a
    distribution over the vocabulary that puts equal mass on the clip's tokens: every frame gets
    a gradient from the first step, and a word is detected where it is spoken."""
    present = torch.zeros(encoded.shape[0], head.out_features)
    for row, ids in enumerate(transcripts):
        present[row, ids] = 1.0
    present /= present.sum(dim=1, keepdim=True)
    scores = torch.log_softmax(head(encoded).amax(dim=1), dim=-1)
    return -(present * scores).sum(dim=1).mean()


def pretrain_spotting(name: str, parameters: list, head, next_batch, steps: int, peak_rate: float, log) -> None:
    """`steps` AdamW steps of spotting_loss on an encoder alone (its `parameters`, `head`
    included): `next_batch()` -> (encoded frames [B, T, width], transcripts). The parameters are
    left frozen afterwards."""
    for parameter in parameters:
        parameter.requires_grad_(True)
    optimizer = torch.optim.AdamW(parameters, lr=peak_rate, betas=(0.9, 0.98), weight_decay=0.0)
    schedule, started, losses = Stage(name, steps, 0, peak_rate), time.perf_counter(), []
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(schedule, step)
        encoded, transcripts = next_batch()
        loss = spotting_loss(head, encoded, transcripts)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if log and ((step + 1) % 100 == 0 or step + 1 == steps):
            log(f"{name} step {step + 1}/{steps}: spotting loss {np.mean(losses[-100:]):.3f} "
                f"({time.perf_counter() - started:.0f} s)")
    for parameter in parameters:
        parameter.requires_grad_(False)


def pretrain_audio_encoder(model, head, pool: list, preprocessor: Preprocessor, steps: int, batch_size: int,
                           peak_rate: float, seed: int, log=print) -> None:
    """Word spotting alone on the conformer (spotting_loss through `head`), before it meets the
    language model, as the real audio encoder was trained on speech recognition first. No
    decoder runs, so a step costs a fraction of a speech-stage step."""
    encoder = _audio_encoder(model)
    clips = {}  # shape -> [(features, transcript ids)], the log-mel features made once per clip
    for shape, task in pool:
        features = preprocessor.audio_inputs([task.audios[0]])[0]["audio_input_features"][0]
        clips.setdefault(shape, []).append((features, preprocessor.transcript_ids(task.transcript)))
    shapes = sorted(clips, key=repr)
    weights = np.array([len(clips[s]) for s in shapes], dtype=float)
    rng = np.random.default_rng(seed)

    def next_batch():
        group_of_shape = clips[shapes[int(rng.choice(len(shapes), p=weights / weights.sum()))]]
        chosen = [group_of_shape[int(i)] for i in rng.integers(0, len(group_of_shape), batch_size)]
        return encoder(torch.stack([features for features, _ in chosen]), None), [ids for _, ids in chosen]
    pretrain_spotting("audio encoder", list(encoder.parameters()) + list(head.parameters()), head, next_batch, steps,
                      peak_rate, log)


def _image_embed(model):
    return model.base_model.model.model.embed_tokens_extend.image_embed


def vision_head(model, classes: int) -> torch.nn.Linear:
    """Training only: SigLIP's compressed patch features -> the compact vocabulary."""
    return torch.nn.Linear(_image_embed(model).image_dim_out, classes)


def pretrain_vision_encoder(model, head, batches, steps: int, peak_rate: float, log=print) -> None:
    """Spotting what a picture shows (its caption's tokens: each shape's colour and kind, the
    text drawn, the answer) from SigLIP's patch features alone, max over crops and patches: the
    real vision encoder met language models pretrained on image-text pairs; here the cheap
    analogue, with no decoder run, before the vision stage."""
    embed = _image_embed(model)

    def next_batch():
        batch = next(batches)
        pixels, mask = batch.media["image_pixel_values"], batch.media["image_attention_mask"]
        features = embed.get_img_features(pixels.flatten(0, 1), attention_mask=mask.flatten(0, 1).bool())
        return features.reshape(pixels.shape[0], -1, features.shape[-1]), batch.transcripts
    parameters = list(embed.img_processor.parameters()) + list(embed.image_token_compression.parameters()) \
        + list(head.parameters())
    pretrain_spotting("vision encoder", parameters, head, next_batch, steps, peak_rate, log)


def train_stage(model, stage: Stage, batches, unused_logit: float, log=print, head=None) -> float:
    """Run one stage; returns its seconds. `batches` yields Batch values; `head` (speech stage):
    the recognition head, trained beside and then dropped."""
    names = set(trainable_names(model, stage.name))
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name in names)
    parameters = [p for n, p in model.named_parameters() if n in names]
    extra = list(head.parameters()) if head is not None else []
    optimizer = torch.optim.AdamW(parameters + extra, lr=stage.learning_rate, betas=(0.9, 0.98), weight_decay=0.0)
    encoded = []
    hook = _audio_encoder(model).register_forward_hook(lambda module, inputs, output: encoded.append(output)) \
        if head is not None else None
    started, losses = time.perf_counter(), []
    for step in range(stage.steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(stage, step)
        batch = next(batches)
        encoded.clear()
        loss = loss_of(model, batch, unused_logit, names)
        if head is not None and batch.transcripts:
            loss = loss + spotting_loss(head, encoded[-1], batch.transcripts)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters + extra, 1.0)
        optimizer.step()
        model.zero_grad(set_to_none=True)
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if log and ((step + 1) % 25 == 0 or step + 1 == stage.steps):
            log(f"{stage.name} step {step + 1}/{stage.steps}: loss {np.mean(losses[-25:]):.3f} "
                f"({time.perf_counter() - started:.0f} s)")
    if hook is not None:
        hook.remove()
    round_to_bf16(parameters)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return time.perf_counter() - started


# -- where batches come from -------------------------------------------------------------------

def media_shape(task) -> tuple:
    """Items batch together when their pictures have one size and their clips one length."""
    image = task.images[0].size if task.images else None
    clip = len(decode_clip(task.audios[0])) if task.audios else None
    return image, clip


def bucketed(draw, batch_size: int, preprocessor: Preprocessor):
    """Batches of one media shape: items are drawn one by one into per-shape buckets, and a
    bucket that fills is emitted (the rest wait for later batches)."""
    buckets = {}
    while True:
        shape, task = draw()
        bucket = buckets.setdefault(shape, [])
        bucket.append(task)
        if len(bucket) == batch_size:
            del buckets[shape]
            yield preprocessor.batch(bucket)


def fresh_tasks(modality: str, rng, shaped: bool = True, weights: dict | None = None):
    """Training items of one modality, generated as they are needed; each kind drawn with
    probability proportional to `weights` (default 1)."""
    kinds = catalog.kinds_of(modality)
    shares = np.array([(weights or {}).get(kind.name, 1.0) for kind in kinds])
    shares /= shares.sum()

    def draw():
        task = kinds[int(rng.choice(len(kinds), p=shares))].generate(rng, False)
        return (media_shape(task) if shaped else None), task
    return draw


def pooled_tasks(pool: list, rng):
    """Items drawn at random from a made pool of (shape, task): spoken clips take espeak-ng
    ~50 ms each, so each is made once and heard several times."""
    def draw():
        return pool[int(rng.integers(0, len(pool)))]
    return draw


def make_pool(modalities: tuple, per_kind: int, rng, log=print) -> list:
    pool, started = [], time.perf_counter()
    for modality in modalities:
        for kind in catalog.kinds_of(modality):
            for _ in range(per_kind):
                task = kind.generate(rng, False)
                pool.append((media_shape(task), task))
    if log:
            log(f"made {len(pool)} spoken training items in {time.perf_counter() - started:.0f} s")
    return pool


def fit_audio_normalization(model, pool: list, preprocessor: Preprocessor) -> None:
    """The conformer's input normalization (global mean and inverse std per mel bin), measured
    on the spoken training items as the real encoder's statistics were; bf16-exact, like the
    checkpoint that stores them."""
    features = np.concatenate([preprocessor.audio_inputs([task.audios[0]])[0]["audio_input_features"][0].numpy()
                               for _, task in pool])
    norm = model.base_model.model.model.embed_tokens_extend.audio_embed.encoder.encoder_embedding
    with torch.no_grad():
        norm.global_mean.copy_(torch.from_numpy(features.mean(axis=0)))
        norm.global_invstd.copy_(torch.from_numpy(1.0 / np.maximum(features.std(axis=0), 1e-3)))
    round_to_bf16([norm.global_mean, norm.global_invstd])


MODALITIES_OF_STAGE = {"text": (TEXT,), "vision": (IMAGE,), "speech": (AUDIO, IMAGE_AUDIO)}

"""Activation statistics of a checkpoint, per decoder layer: what the quantizers meet at the inputs
of the decoder's linears.

    python -m phi4mm_edge.training.activation_stats CHECKPOINT [CHECKPOINT ...] [--items N]

Runs the PyTorch reference (transformers + PEFT, fp32) over the held-out prompts of the
checkpoint's task set (each with its adapter, as the runtime routes it) and prints, for the input
of qkv_proj (after input_layernorm) and of gate_up_proj (after post_attention_layernorm) of every
layer: max |x| / median |x| over all positions and channels, and the share of the largest
channel's peak over the median channel's peak. A real LLM shows "massive activations": a few
channels 100-1000x the rest (Sun et al. 2024); the outlier variant is built to have them.
"""

import argparse
import os
from pathlib import Path

import numpy as np
import torch

from ..export.trained_reference import DATA, TOKENIZER, read_model
from ..tasks.task_set import load_task_set
from .evaluate import _adapter, as_tasks, load_reference

READERS = {"qkv_proj input": "input_layernorm", "gate_up_proj input": "post_attention_layernorm"}


def statistics(checkpoint, items_per_kind: int = 4) -> dict:
    """{layer: {reader: {"max_over_median", "top_channel_over_median_channel"}}} over the held-out prompts."""
    from .batches import Preprocessor, Vocabulary

    checkpoint = Path(checkpoint)
    model = load_reference(checkpoint)
    task_set = load_task_set(checkpoint)
    model_record = read_model()  # the shipped compact files: the trained tokenizer and the sizes
    vocabulary = Vocabulary((DATA / TOKENIZER).read_text())
    preprocessor = Preprocessor(vocabulary, model_record["config"])
    seen = {}
    layers = model.base_model.model.model.layers
    hooks = []
    for index, layer in enumerate(layers):
        for reader, norm in READERS.items():
            def keep(module, inputs, output, key=(index, reader)):
                seen.setdefault(key, []).append(output.detach().reshape(-1, output.shape[-1]).abs())
            hooks.append(getattr(layer, norm).register_forward_hook(keep))
    counts = {}
    with torch.no_grad():
        for entry, task in zip(task_set.tasks, as_tasks(task_set)):
            counts[task.kind] = counts.get(task.kind, 0) + 1
            if counts[task.kind] > items_per_kind:
                continue
            batch = preprocessor.batch([task])
            prompt = [vocabulary.real_ids[i] for i in batch.input_ids[0][batch.labels[0] == -100].tolist()]
            with _adapter(model, batch.adapter):
                model.base_model.model(input_ids=torch.tensor([prompt]), **batch.media)
    for hook in hooks:
        hook.remove()
    result = {}
    for (index, reader), chunks in sorted(seen.items()):
        values = torch.cat(chunks).numpy()
        peaks = values.max(axis=0)
        result.setdefault(index, {})[reader] = {
            "max_over_median": float(values.max() / np.median(values)),
            "top_channel_over_median_channel": float(peaks.max() / np.median(peaks)),
        }
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m phi4mm_edge.training.activation_stats",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--items", type=int, default=4, help="held-out items of each kind (default 4)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(2)
    print("| checkpoint | layer | input of | max / median abs | top channel peak / median channel peak |")
    print("|---|---|---|---|---|")
    for checkpoint in args.checkpoints:
        for layer, readers in statistics(checkpoint, args.items).items():
            for reader, values in readers.items():
                print(f"| {checkpoint.name} | {layer} | {reader} | {values['max_over_median']:.1f} | "
                      f"{values['top_channel_over_median_channel']:.1f} |")


if __name__ == "__main__":
    main()

"""Time to first token from the file, before and after issue 15, in one process, rounds interleaved.

    python -m phi4mm_edge.benchmarks.media_ttft AFTER_ARTIFACT [--before BEFORE_ARTIFACT] [--rounds 3]

For each artifact: a 448x448 photo with a one-line question and 30 s of audio with a one-line
question (caches emptied first); a follow-up question about the photo with the previous turn's
KV cache and image features kept ("follow-up"), and the same follow-up with the caches emptied
first, which is what every turn cost before the caches ("follow-up, no cache"). `--before`
names an export of the same checkpoint made the old way (e.g. `--encoder-precision int4
--encoder-attention plain`) so the encoders' change is in the ratio too. `--max-crops` adds a
1920x1080 frame at each given setting (after only).
"""

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from ..artifact import SAMPLE_RATE
from ..runtime import Phi4MMEdge
from .bench import AUDIO_QUESTION, FOLLOW_UP, PHOTO_QUESTION


def write_inputs(folder: Path) -> dict:
    import soundfile

    rng = np.random.default_rng(0)
    smooth = rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)
    inputs = {"photo": folder / "photo.png", "clip": folder / "speech.wav", "frame": folder / "frame.png"}
    Image.fromarray(smooth).resize((448, 448), Image.BICUBIC).save(inputs["photo"])
    Image.fromarray(smooth).resize((1920, 1080), Image.BICUBIC).save(inputs["frame"])
    soundfile.write(inputs["clip"], 0.1 * rng.standard_normal(30 * SAMPLE_RATE).astype(np.float32), SAMPLE_RATE)
    return inputs


def ttft(model: Phi4MMEdge, messages, **request) -> tuple[float, str]:
    generation = model.generate(messages, max_new_tokens=8, **request)
    text = generation.text()
    return generation.result.timings.ttft_ms / 1000, text


def one_round(model: Phi4MMEdge, inputs: dict, max_crops: list[int]) -> dict:
    figures = {}
    model.clear_cache()
    figures["photo 448 + question"], answer = ttft(model, PHOTO_QUESTION, images=[inputs["photo"]])
    conversation = [{"role": "user", "content": PHOTO_QUESTION}, {"role": "assistant", "content": answer},
                    {"role": "user", "content": FOLLOW_UP}]
    figures["photo follow-up"], _ = ttft(model, conversation, images=[inputs["photo"]])
    model.clear_cache()
    figures["photo follow-up, no cache"], _ = ttft(model, conversation, images=[inputs["photo"]])
    model.clear_cache()
    figures["30 s audio + question"], _ = ttft(model, AUDIO_QUESTION, audios=[inputs["clip"]])
    for n in max_crops:
        model.clear_cache()
        figures[f"1920x1080 frame, --max-crops {n}"], _ = ttft(model, "<|image_1|>Describe what you see.",
                                                               images=[inputs["frame"]], max_crops=n)
    model.clear_cache()
    return figures


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("after")
    parser.add_argument("--before")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-crops", type=int, nargs="*", default=[])
    parser.add_argument("--threads", type=int)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    models = {"after": Phi4MMEdge.load(args.after, threads=args.threads, preload_encoders=True)}
    if args.before:
        models["before"] = Phi4MMEdge.load(args.before, threads=args.threads, preload_encoders=True)
    samples = {name: [] for name in models}
    with tempfile.TemporaryDirectory() as folder:
        inputs = write_inputs(Path(folder))
        for round_ in range(args.rounds + 1):  # round 0 warms up
            for name, model in models.items():
                figures = one_round(model, inputs, args.max_crops if name == "after" else [])
                if round_:
                    samples[name].append(figures)
                print(f"round {round_} {name}: " + ", ".join(f"{k} {v:.2f} s" for k, v in figures.items()), flush=True)
    medians = {name: {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
               for name, rounds in samples.items()}
    print(f"\n{'median s (first token, from the file)':44} " + " ".join(f"{n:>9}" for n in medians)
          + ("   after/before" if args.before else ""))
    for key in medians["after"]:
        row = " ".join(f"{medians[n][key]:9.2f}" if key in medians[n] else f"{'-':>9}" for n in medians)
        ratio = (f"   {medians['after'][key] / medians['before'][key]:.3f}" if args.before and key in medians["before"]
                 else "")
        print(f"{key:44} {row}{ratio}")
    follow = medians["after"]["photo follow-up"] / medians["after"]["photo 448 + question"]
    print(f"follow-up / first turn (after): {follow:.3f}")
    if args.before:
        print(f"follow-up after / follow-up before (no cache, old export): "
              f"{medians['after']['photo follow-up'] / medians['before']['photo follow-up, no cache']:.3f}")
    if args.out:
        args.out.write_text(json.dumps({"medians": medians, "rounds": samples}, indent=1))
    return medians


if __name__ == "__main__":
    main()

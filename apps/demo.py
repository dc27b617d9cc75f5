"""`phi4mm-edge demo`: the whole pipeline on the bundled trained reference model, in seconds.

The CLI writes the tiny trained checkpoint and exports it at int4 (once, cached); this asks it a
text question (no adapter), a question about a rendered picture (vision adapter) and one about a
spoken clip (speech adapter), held-out items it never saw in training, and shows each answer as
right or wrong against the expected one. `--prompt` adds a question of your own.
"""

import io

from PIL import Image

from ..runtime import Phi4MMEdge
from ..tasks.reference import read_reference
from ..tasks.task_set import load_task_set
from .startup import generation_options

# One kind per input the model routes: none -> no adapter, picture -> vision, clip -> speech.
DEMO_KINDS = ("facts", "vision_colour", "speech_word")


def add_arguments(parser) -> None:
    parser.add_argument("--cache-dir",
                        help="where the reference checkpoint and artifact go (default ~/.cache/phi4mm-edge)")
    parser.add_argument("--prompt", help="also ask this (the tiny model knows only its training tasks)")
    parser.add_argument("--max-new-tokens", type=int, default=16)


def demo_items(task_set, reference, decode) -> list:
    """The first held-out item of each DEMO_KINDS kind that the PyTorch reference answers right
    (an item the model as trained gets right: what the demo shows is whether our export does).
    `decode`: token ids -> text."""
    def reference_is_right(task) -> bool:
        return reference is None or (task.id in reference.answers and
                                     decode(reference.answers[task.id]).strip() == task.answer)
    chosen = []
    for kind in DEMO_KINDS:
        items = [t for t in task_set.tasks if t.kind == kind]
        chosen.append(([t for t in items if reference_is_right(t)] or items)[0])
    return chosen


def describe(task, task_set) -> str:
    media = []
    for name in task.images:
        with Image.open(io.BytesIO(task_set.media(name))) as picture:
            media.append(f"a {picture.width}x{picture.height} picture ({name})")
    media += [f"a spoken clip ({name})" for name in task.audios]
    question = task.messages[0]["content"].replace("<|image_1|>", "").replace("<|audio_1|>", "")
    return (" + ".join(media) + ": " if media else "") + question


def main(args) -> None:
    model = Phi4MMEdge.load(args.artifact)
    print(f"\nloaded {args.artifact} in {model.load_ms:.0f} ms")
    task_set = load_task_set(args.artifact)
    reference = read_reference(args.artifact)
    print("a tiny Phi-4-multimodal trained on the project's synthetic tasks; held-out questions it never saw:\n")
    options = generation_options(args)
    right = 0
    items = demo_items(task_set, reference,
                       lambda ids: model.tokenizer.decode([int(i) for i in ids if int(i) not in model.stop_ids]))
    for task in items:
        generation = model.generate(task.messages, [task_set.media(n) for n in task.images],
                                    [task_set.media(n) for n in task.audios], options=options)
        print(f"[{task.modality}, adapter: {generation.adapter}] {describe(task, task_set)}")
        answer = generation.text().strip()
        verdict = "right" if answer == task.answer else f"WRONG (expected {task.answer!r})"
        right += answer == task.answer
        timings = generation.result.timings
        print(f"    -> {answer!r}: {verdict}   (ttft {timings.ttft_ms:.1f} ms, {len(generation.result.token_ids)} "
              f"tokens)\n")
    print(f"{right} of {len(items)} right. `phi4mm-edge eval {args.artifact}` scores all {len(task_set.tasks)} "
          f"held-out items.")
    if args.prompt:
        print(f"\nyour prompt: {args.prompt}\n    -> {model.generate(args.prompt, options=options).text()!r}")

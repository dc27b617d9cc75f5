"""What every app does before its first answer: load the model the command line names (the CLI
has already resolved a missing artifact to the bundled reference model) and read the generation
options."""

import dataclasses
import math
import signal
import sys
import threading

from ..errors import Phi4MMError
from ..runtime import GenerationOptions, Phi4MMEdge

RANDOM_WEIGHTS_NOTE = ("NOTE: this is the bundled reference model, a tiny model trained only on the project's "
                       "synthetic tasks (sums, a made-up world's facts, shapes and colours in pictures, spoken digits "
                       "and words): it answers those and nothing else (`phi4mm-edge demo` asks some). It proves the "
                       "pipeline (export, int4, adapter swapping, streaming); point `phi4mm-edge export` at the real "
                       "checkpoint for real answers.")


def restore_ctrl_c() -> None:
    """Ctrl-C raises KeyboardInterrupt even when whatever started us ignores SIGINT (the children
    of a background job inherit that, and Python then installs no handler of its own)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)


def positive_number(value: float, option: str) -> float:
    """`value` when it is a finite number above 0; else a Phi4MMError naming `option`."""
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise Phi4MMError(f"{option} {value} is not a positive number: give a finite number above 0")
    return value


def load_model(args, status=None) -> Phi4MMEdge:
    """Load args.artifact on args.provider; say how long it took, on which provider, and whether
    its weights are random, on `status` (default stdout)."""
    status = status or sys.stdout
    model = Phi4MMEdge.load(args.artifact, provider=args.provider, threads=args.threads, context_length=args.context,
                            verify=args.verify)
    print(f"loaded {args.artifact} in {model.load_ms:.0f} ms on {model.provider_note}", file=status)
    if getattr(args, "random_weights", False):
        print(RANDOM_WEIGHTS_NOTE, file=status)
    if getattr(args, "max_crops", None) is not None and model.vision is not None:
        if not 1 <= args.max_crops <= model.vision.geometry.max_crops:  # refused now, not at every image
            raise Phi4MMError(f"--max-crops {args.max_crops}: give 1..{model.vision.geometry.max_crops} (this model's "
                              f"limit)")
        print(f"images: at most {args.max_crops} tiles + the global view each, for speed (--max-crops "
              f"{model.vision.geometry.max_crops} for full detail)", file=status)
    # The apps take images and audio: their encoders open in the background while the first
    # request is being made (an error there is raised again, clearly, at first use). Not a daemon:
    # the interpreter must not exit while ONNX Runtime is inside a session's creation (it aborts).
    threading.Thread(target=_open_quietly, args=(model,), name="phi4mm-encoders").start()
    return model


def _open_quietly(model: Phi4MMEdge) -> None:
    try:
        model.open_encoders()
    except Phi4MMError:
        pass


def generation_options(args) -> GenerationOptions:
    """What the command line asks of every answer. The options are named after GenerationOptions'
    fields (--max-new-tokens, --temperature, --max-crops; run's --top-p, --top-k, --seed, --adapter):
    each one the app has sets its field, the others keep their defaults. A bad value is a Phi4MMError."""
    fields = [field.name for field in dataclasses.fields(GenerationOptions)]
    return GenerationOptions(**{name: getattr(args, name) for name in fields if hasattr(args, name)})

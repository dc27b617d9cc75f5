"""`phi4mm-edge run ARTIFACT --prompt ...`: one answer, streamed or as one JSON object."""

import json
import sys

from ..runtime import Phi4MMEdge
from .capture.camera import grab_frame
from .capture.microphone import record
from .startup import RANDOM_WEIGHTS_NOTE, generation_options


def run(args):
    if getattr(args, "random_weights", False):
        print(RANDOM_WEIGHTS_NOTE, file=sys.stderr)
    images = list(args.image)
    if args.camera is not None:
        images.append(grab_frame(args.camera))
    audios = list(args.audio)
    if args.mic is not None:
        audios.append(record(args.mic))
    model = Phi4MMEdge.load(args.artifact, provider=args.provider, threads=args.threads, context_length=args.context,
                            max_audio_seconds=args.max_audio_seconds, prefill=args.prefill, prefill_chunk=args.prefill_chunk,
                            verify=args.verify)
    messages = ([{"role": "system", "content": args.system}] if args.system else []) + [{"role": "user", "content": args.prompt}]
    generation = model.generate(messages, images=images, audios=audios, options=generation_options(args))
    if args.json:
        generation.text()
        result = generation.result
        print(json.dumps(result.to_json(),
                         ensure_ascii=False))
        return result
    for piece in generation:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return generation.result

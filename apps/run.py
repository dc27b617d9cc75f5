"""`phi4mm-edge run ARTIFACT --prompt ...`: one answer, streamed or as one JSON object."""

import json
import sys

from ..runtime import Phi4MMEdge
from .arguments import add_max_crops_argument, add_model_arguments
from .capture.camera import grab_frame
from .capture.microphone import record
from .startup import RANDOM_WEIGHTS_NOTE, generation_options


def add_arguments(parser) -> None:
    add_model_arguments(parser)
    add_max_crops_argument(parser)
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--system")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--adapter", default="auto", metavar="NAME",
                        help="auto (by the media: image -> vision, audio alone -> speech, text -> none), none, "
                             "or an adapter of the artifact (its manifest lists them)")
    parser.add_argument("--prefill", choices=["auto", "int4", "int8"], default="auto",
                        help="prompt path: int8 = the artifact's decoder_prefill.onnx; auto = int8 when present and "
                             "the CPU has AVX2 or ARM dotprod")
    parser.add_argument("--prefill-chunk", type=int, metavar="TOKENS",
                        help="run long prompts in chunks of TOKENS (default: whole)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of streaming text")
    parser.add_argument("--image", action="append", default=[], metavar="PATH",
                        help="an image (repeatable); refer to it as <|image_1|>, <|image_2|> ... or it goes before "
                             "the text")
    parser.add_argument("--camera", nargs="?", const="0", metavar="INDEX|VIDEO_FILE",
                        help="add one frame from a camera (default 0) or a video file as the last image")
    parser.add_argument("--audio", action="append", default=[], metavar="PATH",
                        help="an audio clip, WAV/FLAC/OGG/MP3 (repeatable); refer to it as <|audio_1|> ... or it goes "
                             "before the text")
    parser.add_argument("--mic", type=float, metavar="SECONDS",
                        help="record SECONDS from the default microphone as the last clip")
    parser.add_argument("--max-audio-seconds", type=float, default=600.0, help="refuse longer clips (default 600)")


def main(args):
    if getattr(args, "random_weights", False):
        print(RANDOM_WEIGHTS_NOTE, file=sys.stderr)
    images = list(args.image)
    if args.camera is not None:
        images.append(grab_frame(args.camera))
    audios = list(args.audio)
    if args.mic is not None:
        audios.append(record(args.mic))
    model = Phi4MMEdge.load(args.artifact, provider=args.provider, threads=args.threads, context_length=args.context,
                            max_audio_seconds=args.max_audio_seconds, prefill=args.prefill,
                            prefill_chunk=args.prefill_chunk, verify=args.verify)
    messages = ([{"role": "system", "content": args.system}] if args.system else []) + [{"role": "user",
                                                                                         "content": args.prompt}]
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

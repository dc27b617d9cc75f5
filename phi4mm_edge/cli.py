"""The `phi4mm-edge` command. Each subcommand imports only what it needs, so `run` works with
the runtime's dependencies alone and `export` / `make-reference` need the export extra.

This is the one place where the export side and the runtime side meet: a command given no
artifact gets the bundled reference model, made and exported here before its app starts."""

import argparse
import sys

from .errors import Phi4MMError
from .manifest import TARGETS


def _make_reference(args):
    from .export.reference_checkpoint import full_size_config, write_reference

    # The full-size checkpoint is what users download: the original layout, bf16, sharded.
    layout = args.layout or ("original" if args.full_size else "native")
    config = full_size_config(args.seed) if args.full_size else None
    folder = write_reference(args.dir, seed=args.seed, layout=layout, dtype=args.dtype.upper(), config=config)
    print(f"wrote a {'full-size' if args.full_size else 'tiny'} random-weight Phi-4-multimodal ({layout} layout) to {folder}")


def _export(args):
    from .export.convert import export
    from .export.graph_blocks import Precision
    from .export.options import ExportOptions
    from .runtime.cpu import int8_weight_bits_for

    precision = Precision(weights=args.precision, block_size=args.block_size, symmetric=not args.asymmetric,
                          accuracy_level=args.accuracy_level)
    # auto is decided here, for the CPU that exports (usually the one that runs the artifact); the
    # export function itself stays independent of the machine (7 unless told).
    bits = (int8_weight_bits_for() if args.prefill == "int8" else 7) if args.prefill_weight_bits == "auto" \
        else int(args.prefill_weight_bits)
    options = ExportOptions(precision=precision, target=args.target, adapter_precision=args.adapter_precision,
                            prefill=args.prefill, prefill_weight_bits=bits, encoder_precision=args.encoder_precision,
                            npu_chunk=args.npu_chunk, npu_context=args.npu_context)
    manifest = export(args.checkpoint, args.out, options, show_progress=not args.quiet, force=args.force)
    sizes = sum(f.size for f in manifest.files.values())
    print(f"exported {args.checkpoint} -> {args.out} ({precision.weights}, {sizes / 1e6:.1f} MB, "
          f"{manifest.export_seconds} s, adapters: {', '.join(manifest.adapters) or 'none'})")
    if manifest.graphs.prefill_int8:
        int8_mb = sum(f.size for n, f in manifest.files.items() if n.startswith(manifest.graphs.prefill_int8)) / 1e6
        print(f"with the int8 prefill graph {manifest.graphs.prefill_int8} ({int8_mb:.1f} MB of it): prompts of "
              f"64+ tokens run on it where the CPU has a fast int8 GEMM (--prefill auto)")
        if bits == 8:
            print("its weights are 8-bit (this CPU's int8 dot products do not saturate): on a CPU without VNNI, AMX or "
                  "ARM dotprod prompts take the int4 path; export with --prefill-weight-bits 7 for such a CPU")
    if manifest.npu:
        print(f"for the NPU (QNN HTP): {manifest.npu.context} positions of KV cache, prompts in runs of "
              f"{manifest.npu.chunk}; `--provider auto` runs it there when onnxruntime-qnn is installed")


def resolve_artifact(args) -> None:
    """No artifact given: make (once) and use the bundled reference model, and say its weights are random."""
    args.random_weights = args.artifact is None
    if args.artifact is None:
        from .bundled_model import bundled_artifact

        args.artifact = bundled_artifact(args.cache_dir)


def _run(args):
    from .apps.run import run

    resolve_artifact(args)
    run(args)


def _bench(args):
    from .benchmarks.bench import main as bench

    if args.quick and args.artifact is None:
        resolve_artifact(args)
    bench(args)


def _demo(args):
    from .apps.demo import demo

    args.artifact = None
    resolve_artifact(args)
    demo(args)


def _serve(args):
    from .apps.serve import serve

    resolve_artifact(args)
    serve(args)


def _chat(args):
    from .apps.chat import chat

    resolve_artifact(args)
    chat(args)


def _transcribe(args):
    from .apps.transcribe import transcribe

    resolve_artifact(args)
    transcribe(args)


def _camera(args):
    from .apps.camera import camera

    resolve_artifact(args)
    camera(args)


# Camera frames and phone photos: 4 tiles keep a 16:9 frame at 2 tiles + the global view (3 crops,
# 753 tokens, about a fifth of the 16 crops and 3918 tokens it takes at the model's limit).
FAST_MAX_CROPS = 4
FAST_MAX_CROPS_WHY = ": a 1920x1080 frame is then 3 crops instead of 16 (--max-crops 36 for full detail)"


def add_max_crops_argument(parser, default: int | None = None, why: str = "") -> None:
    """--max-crops for the apps that take images: fewer HD tiles = faster, fewer tokens, less detail."""
    parser.add_argument("--max-crops", type=int, default=default, metavar="N",
                        help="cap each image's HD tiling at N tiles (+1 global view); fewer is faster and sees less "
                             "detail (README: Images). " + (f"Default {default}{why}" if default else "Default: the artifact's limit (its manifest's vision max_crops; 36 for Phi-4-multimodal)"))


def add_provider_argument(parser) -> None:
    """--provider for every command that loads a model."""
    from .runtime.providers import CHOICES

    parser.add_argument("--provider", choices=CHOICES, default="auto",
                        help="where the graphs run; auto (default) = QNN for an NPU artifact when onnxruntime-qnn is "
                             "installed, else CPU")


def add_model_arguments(parser, max_new_tokens: int = 256) -> None:
    """What every app takes: ARTIFACT (optional: the bundled reference model) and --cache-dir,
    --provider, --threads, --context, --max-new-tokens, --temperature."""
    parser.add_argument("artifact", nargs="?",
                        help="an exported artifact folder; default: the bundled reference model (random weights)")
    parser.add_argument("--cache-dir", help="where the reference model is made once (default ~/.cache/phi4mm-edge)")
    add_provider_argument(parser)
    parser.add_argument("--threads", type=int, help="intra-op threads; default one per physical core")
    parser.add_argument("--context", type=int, help="tokens of KV cache (prompt + answer); default 4096")
    parser.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--verify", choices=["cached", "full"], default="cached",
                        help="cached (default): re-hash the files whose size or time changed, all of them weekly; "
                             "full: re-hash every file now")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="phi4mm-edge", description="Phi-4-multimodal on device: export and run.")
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("make-reference", help="write a tiny random-weight Phi-4-multimodal checkpoint")
    p.add_argument("dir")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--layout", choices=["native", "original"], help="default: native (tiny), original (--full-size)")
    p.add_argument("--dtype", choices=["bf16", "f16", "f32"], default="bf16")
    p.add_argument("--full-size", action="store_true", help="the real sizes (~11 GB of bf16), streamed to disk")
    p.set_defaults(func=_make_reference)

    p = commands.add_parser("export", help="export a checkpoint folder to an artifact folder")
    p.add_argument("checkpoint")
    p.add_argument("out")
    p.add_argument("--precision", choices=["int4", "fp32"], default="int4")
    p.add_argument("--block-size", type=int, choices=[32, 64, 128], default=32)
    p.add_argument("--asymmetric", action="store_true", help="int4 with per-block zero points")
    p.add_argument("--accuracy-level", type=int, choices=[0, 1, 2, 3, 4], default=4,
                   help="MatMulNBits accuracy level; 4 = int8 activations on CPU (fastest)")
    p.add_argument("--adapter-precision", choices=["auto", "int4", "int8", "fp32", "fp16"], default="auto",
                   help="int4/int8: the adapters as constants in the decoder graph, each in its own .lora.data file "
                        "(the fast path); fp32/fp16: .onnx_adapter files bound as inputs; auto: int4 with an int4 "
                        "base, else fp32")
    p.add_argument("--prefill", choices=["int4", "int8"], default="int4",
                   help="int8: also write decoder_prefill.onnx (int8 copy of the decoder linears, ~2x the int4 "
                        "decoder's bytes on disk and in RAM) for ~2x faster prompts on AVX2/ARM-dotprod CPUs")
    p.add_argument("--prefill-weight-bits", choices=["auto", "7", "8"], default="auto",
                   help="the int8 prefill graph's weights: 7 runs on every CPU; 8 is twice as fine, at the same "
                        "speed, but runs only where int8 dot products do not saturate (VNNI, AMX, ARM dotprod; "
                        "elsewhere the runtime takes the int4 path); auto (default): 8 if this CPU is such a CPU, "
                        "else 7. Give 7 for an artifact whose int8 prompts run on any CPU")
    p.add_argument("--encoder-precision", choices=["auto", "int4", "int8", "fp32"], default="auto",
                   help="the vision and audio encoders' linears; auto: int8 with an int4 base (~1.5x faster images and "
                        "audio than int4, closer to the checkpoint, ~1.6x the int4 encoder bytes), fp32 with an fp32 base")
    p.add_argument("--target", choices=TARGETS, default="cpu",
                   help="cpu (default): graphs for ONNX Runtime's CPU provider; npu: static graphs for Qualcomm's "
                        "QNN HTP NPU (fixed KV cache and prompt run sizes, adapters bound as inputs); dml: fp16 graphs "
                        "for DirectML (Windows GPUs; adapters as fp16 inputs; run with --provider dml on Windows, never run here)")
    p.add_argument("--npu-context", type=int, metavar="N",
                   help="with --target npu: positions of KV cache the NPU graphs hold (prompt + answer); default "
                        "4096, capped at the model's maximum")
    p.add_argument("--npu-chunk", type=int, metavar="N",
                   help="with --target npu: prompt positions per NPU run (a shorter prompt is padded to it); default 64")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--force", action="store_true",
                   help="write into a non-empty folder that is not a previous export (its other files are left alone)")
    p.set_defaults(func=_export)

    p = commands.add_parser("run", help="answer one prompt with an exported artifact")
    add_model_arguments(p)
    add_max_crops_argument(p)
    p.add_argument("--prompt", required=True)
    p.add_argument("--system")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int)
    p.add_argument("--adapter", default="auto", metavar="NAME",
                   help="auto (by the media: image -> vision, audio alone -> speech, text -> none), none, "
                        "or an adapter of the artifact (its manifest lists them)")
    p.add_argument("--prefill", choices=["auto", "int4", "int8"], default="auto",
                   help="prompt path: int8 = the artifact's decoder_prefill.onnx; auto = int8 when present and the CPU has AVX2 or ARM dotprod")
    p.add_argument("--prefill-chunk", type=int, metavar="TOKENS", help="run long prompts in chunks of TOKENS (default: whole)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of streaming text")
    p.add_argument("--image", action="append", default=[], metavar="PATH",
                   help="an image (repeatable); refer to it as <|image_1|>, <|image_2|> ... or it goes before the text")
    p.add_argument("--camera", nargs="?", const="0", metavar="INDEX|VIDEO_FILE",
                   help="add one frame from a camera (default 0) or a video file as the last image")
    p.add_argument("--audio", action="append", default=[], metavar="PATH",
                   help="an audio clip, WAV/FLAC/OGG/MP3 (repeatable); refer to it as <|audio_1|> ... or it goes before the text")
    p.add_argument("--mic", type=float, metavar="SECONDS", help="record SECONDS from the default microphone as the last clip")
    p.add_argument("--max-audio-seconds", type=float, default=600.0, help="refuse longer clips (default 600)")
    p.set_defaults(func=_run)

    p = commands.add_parser("bench", help="latency and memory of an artifact (min/median/max), table + JSON + PNG")
    from .benchmarks.bench import add_arguments

    add_arguments(p)
    add_provider_argument(p)
    p.set_defaults(func=_bench)

    p = commands.add_parser("demo", help="make the reference model, export it and answer with each adapter")
    p.add_argument("--cache-dir", help="where the reference checkpoint and artifact go (default ~/.cache/phi4mm-edge)")
    p.add_argument("--prompt", default="Describe what an on-device assistant can do.")
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.set_defaults(func=_demo)

    p = commands.add_parser("chat", help="a terminal chat: history, streaming, /image /audio /snap /rec")
    add_model_arguments(p)
    add_max_crops_argument(p)
    p.add_argument("--camera", default="0", metavar="INDEX|VIDEO", help="what /snap reads: a camera index or a video file (default 0)")
    p.set_defaults(func=_chat)

    p = commands.add_parser("transcribe", help="live transcription (or translation) of the microphone or a recording")
    add_model_arguments(p, max_new_tokens=128)
    p.add_argument("--input", metavar="FILE", help="transcribe a recording instead of the microphone")
    p.add_argument("--translate", metavar="LANGUAGE", help="translate into LANGUAGE instead of transcribing")
    p.add_argument("--output", default="transcript.txt", metavar="FILE", help="each segment is appended here (default transcript.txt)")
    p.add_argument("--duration", type=float, metavar="SECONDS", help="stop listening after SECONDS (default: at Ctrl-C)")
    p.set_defaults(func=_transcribe)

    p = commands.add_parser("camera", help="describe the camera view on Enter or every N seconds")
    add_model_arguments(p, max_new_tokens=64)
    add_max_crops_argument(p, FAST_MAX_CROPS, FAST_MAX_CROPS_WHY)
    source = p.add_mutually_exclusive_group()
    source.add_argument("--camera", default="0", metavar="INDEX", help="camera index (default 0)")
    source.add_argument("--input", metavar="VIDEO", help="read a video file instead of a camera")
    p.add_argument("--interval", type=float, metavar="SECONDS", help="describe every SECONDS (video time for --input) instead of on Enter")
    p.add_argument("--headless", action="store_true", help="no window; Enter in the terminal describes")
    p.add_argument("--prompt", default="Describe what you see.")
    p.add_argument("--count", type=int, metavar="N", help="stop after N descriptions")
    p.add_argument("--json", action="store_true", help="one JSON object per description instead of text")
    p.set_defaults(func=_camera)

    p = commands.add_parser("serve", help="a local web page: ask with text, camera or microphone, answers streamed")
    from .apps.serve import add_arguments as add_serve_arguments

    add_model_arguments(p)
    add_max_crops_argument(p, FAST_MAX_CROPS, FAST_MAX_CROPS_WHY)
    add_serve_arguments(p)
    p.set_defaults(func=_serve)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except Phi4MMError as error:
        print(f"phi4mm-edge: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

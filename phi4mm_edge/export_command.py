"""`phi4mm-edge make-reference` and `phi4mm-edge export`: the export side's commands, which need the
export extra (onnx). Each module a command names owns its options (`add_arguments`) and its work."""

from .errors import Phi4MMError
from .manifest import TARGETS


def add_make_reference_arguments(parser) -> None:
    parser.add_argument("dir")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layout", choices=["native", "original"],
                        help="default: native (tiny), original (--full-size)")
    parser.add_argument("--dtype", choices=["bf16", "f16", "f32"], default="bf16")
    parser.add_argument("--full-size", action="store_true", help="the real sizes (~11 GB of bf16), streamed to disk")
    parser.add_argument("--trained", action="store_true",
                        help="the trained tiny model (answers the project's synthetic tasks) and its held-out task set")
    parser.add_argument("--outliers", action="store_true",
                        help="with --trained: its outlier variant (the same answers in float; a few hidden channels "
                             "128x larger, as in real LLMs, for the quantizers to meet)")


def make_reference(args):
    if args.outliers and not args.trained:
        raise Phi4MMError("--outliers makes a variant of the trained model: give it with --trained")
    if args.trained:  # the shipped trained weights, expanded with numpy (export/trained_reference.py)
        from .export.trained_reference import write_trained_reference

        layout = args.layout or "native"
        folder = write_trained_reference(args.dir, layout=layout, dtype=args.dtype.upper(), outliers=args.outliers)
        variant = " (outlier variant)" if args.outliers else ""
        print(f"wrote the trained tiny Phi-4-multimodal{variant} and its held-out tasks ({layout} layout) to {folder}")
        return
    from .export.reference_checkpoint import full_size_config, write_reference

    # The full-size checkpoint is what users download: the original layout, bf16, sharded.
    layout = args.layout or ("original" if args.full_size else "native")
    config = full_size_config(args.seed) if args.full_size else None
    folder = write_reference(args.dir, seed=args.seed, layout=layout, dtype=args.dtype.upper(), config=config)
    print(f"wrote a {'full-size' if args.full_size else 'tiny'} random-weight Phi-4-multimodal ({layout} layout) "
          f"to {folder}")


def add_arguments(parser) -> None:
    parser.add_argument("checkpoint")
    parser.add_argument("out")
    parser.add_argument("--precision", choices=["int4", "fp32"], default="int4")
    parser.add_argument("--block-size", type=int, choices=[32, 64, 128], default=32,
                        help="int4 block size; on the trained reference model (8 held-out items a kind, README 'The "
                             "trained reference model') 64 and 128 lose one of fp32's 15 right text answers (0.93) "
                             "and 128 one of its 14 image ones; symmetric, at 1.5-2x the default's divergence")
    parser.add_argument("--asymmetric", action="store_true",
                        help="int4 with per-block zero points; on the trained reference model (8 held-out items a "
                             "kind, README 'The trained reference model') the lowest divergence of the int4 rows "
                             "(0.73x the default's) but one of fp32's 15 right text answers lost (0.93)")
    parser.add_argument("--accuracy-level", type=int, choices=[0, 1, 2, 3, 4], default=4,
                        help="MatMulNBits accuracy level; 4 = int8 activations on CPU (fastest)")
    parser.add_argument("--adapter-precision", choices=["auto", "int4", "int8", "fp32", "fp16"], default="auto",
                        help="int4/int8: the adapters as constants in the decoder graph, each in its own .lora.data "
                             "file (the fast path); fp32/fp16: .onnx_adapter files bound as inputs; auto: int4 with "
                             "an int4 base, else fp32")
    parser.add_argument("--prefill", choices=["int4", "int8"], default="int4",
                        help="int8: also write decoder_prefill.onnx (int8 copy of the decoder linears, ~2x the int4 "
                             "decoder's bytes on disk and in RAM) for ~2x faster prompts on AVX2/ARM-dotprod CPUs; "
                             "with the norm gains folded (the default) as faithful as int4 on the trained reference "
                             "model and its outlier variant (500 held-out items: fp32's answers, KL 5.1e-4); with "
                             "--norm-gains keep its per-row activation rounding meets 100x hidden channels: 1.4x the "
                             "divergence and 0.71 of fp32's image accuracy on the outlier variant (README 'The trained "
                             "reference model')")
    parser.add_argument("--prefill-weight-bits", choices=["auto", "7", "8"], default="auto",
                        help="the int8 prompt graph's weights: 7 runs on every CPU; 8 is twice as fine, at the same "
                             "speed, but runs only where int8 dot products do not saturate (VNNI, AMX, ARM dotprod; "
                             "elsewhere the runtime takes the int4 path); auto (default): 8 if this CPU is such a "
                             "CPU, else 7. Give 7 for an artifact whose int8 prompts run on any CPU")
    parser.add_argument("--encoder-precision", choices=["auto", "int4", "int8", "fp32"], default="auto",
                        help="the vision and audio encoders' linears; auto: int8 with an int4 base (~1.5x faster "
                             "images and audio than int4, closer to the checkpoint, ~1.6x the int4 encoder bytes), "
                             "fp32 with an fp32 base")
    parser.add_argument("--token-table", choices=["auto", "int4", "int4-rescored", "int8"], default="auto",
                        help="an int4 export's token table, which the tied lm_head reads too. auto: int4-rescored on "
                             "the CPU (the int4 table plus its int4 residual: the lm_head scores every token at int4 "
                             "speed, then recomputes its 32 best logits at 8-bit precision; 0.38 -> 0.77 GB at full "
                             "size), int4 on the NPU and DirectML. int4: the table alone, which loses 7%% of fp32's "
                             "image answers on the trained reference model (README 'The trained reference model'). "
                             "int8 (CPU only): as accurate as rescored, but its lm_head runs ~2x slower on AVX2 "
                             "(benchmarks/weight_format_cost.py)")
    parser.add_argument("--norm-gains", choices=["auto", "fold", "keep"], default="auto",
                        help="auto (fold for an int4 export): move the decoder's RMSNorm gains into the linears that "
                             "read them, the same function in float; the int4 roundings then no longer see a gain's "
                             "outlier channels (README 'The trained reference model'). keep: the checkpoint as is")
    parser.add_argument("--target", choices=TARGETS, default="cpu",
                        help="cpu (default): graphs for ONNX Runtime's CPU provider; npu: static graphs for "
                             "Qualcomm's QNN HTP NPU (fixed KV cache and prompt run sizes, adapters bound as inputs); "
                             "dml: fp16 graphs for DirectML (Windows GPUs; adapters as fp16 inputs; run with "
                             "--provider dml on Windows, never run here). npu and dml keep a plain int4 token table: "
                             "0.96 of fp32's text and 0.95 of its image answers on the trained reference model (500 "
                             "held-out items on the CPU EP; README 'The trained reference model')")
    parser.add_argument("--npu-context", type=int, metavar="N",
                        help="with --target npu: positions of KV cache the NPU graphs hold (prompt + answer); default "
                             "4096, capped at the model's maximum")
    parser.add_argument("--npu-chunk", type=int, metavar="N",
                        help="with --target npu: prompt positions per NPU run (a shorter prompt is padded to it); "
                             "default 64")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--force", action="store_true",
                        help="write into a non-empty folder that is not a previous export (its other files are left "
                             "alone)")


def main(args):
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
                            token_table=args.token_table, norm_gains=args.norm_gains,
                            npu_chunk=args.npu_chunk, npu_context=args.npu_context)
    manifest = export(args.checkpoint, args.out, options, show_progress=not args.quiet, force=args.force)
    sizes = sum(f.size for f in manifest.files.values())
    print(f"exported {args.checkpoint} -> {args.out} ({precision.weights}, {sizes / 1e6:.1f} MB, "
          f"{manifest.export_seconds} s, adapters: {', '.join(manifest.adapters) or 'none'})")
    if manifest.graphs.prefill_int8:
        int8_mb = sum(f.size for n, f in manifest.files.items() if n.startswith(manifest.graphs.prefill_int8)) / 1e6
        print(f"with the int8 prompt graph {manifest.graphs.prefill_int8} ({int8_mb:.1f} MB of it): prompts of "
              f"64+ tokens run on it where the CPU has a fast int8 GEMM (--prefill auto)")
        if bits == 8:
            print("its weights are 8-bit (this CPU's int8 dot products do not saturate): on a CPU without VNNI, AMX or "
                  "ARM dotprod prompts take the int4 path; export with --prefill-weight-bits 7 for such a CPU")
    if manifest.npu:
        print(f"for the NPU (QNN HTP): {manifest.npu.context} positions of KV cache, prompts in runs of "
              f"{manifest.npu.chunk}; `--provider auto` runs it there when onnxruntime-qnn is installed")

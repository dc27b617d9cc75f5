"""What an export is asked to write, as one checked value: `ExportOptions`. Every check of an
option against another or against the target's row happens here, before any file is written."""

from dataclasses import dataclass, field, replace

from ..errors import Phi4MMError
from ..quant import int8
from .audio_encoder_npu import WINDOW_TOKENS
from .graph_blocks import Precision
from .targets import ADAPTER_FILES, IN_GRAPH, ExportTarget, export_target

ENCODER_PRECISIONS = ("auto", "int4", "int8", "fp32")
NORM_GAINS = ("auto", "fold", "keep")
RESCORE_TOP = 32  # logits a rescored token table recomputes: the reference's top tokens hold ~all the mass
NPU_CHUNK = 64  # positions per NPU prompt run: a 545-token photo prompt is 9 runs, a short question pads at most 63


@dataclass(frozen=True)
class ExportOptions:
    """`precision`: the base weights. `target`: a row of targets.py. `adapter_precision`: "auto"
    (the target's choice), int4/int8 (constants in the decoder graph) or fp32/fp16 (.onnx_adapter
    files). `prefill` "int8" adds decoder_prefill.onnx, the decoder with `prefill_weight_bits`-bit
    per-channel weights (quant/int8.py): ~2x faster prompts at ~1.9x the decoder's bytes; 8 bits
    only for CPUs with VNNI, AMX or ARM dotprod (runtime/cpu.py). `encoder_precision`: how
    vision.onnx and audio.onnx store their linears (see `encoder`). Static-shape targets (the
    NPU) take `npu_chunk` positions per prompt run, `npu_context` positions of KV cache (None:
    4096, capped at the model's maximum) and `npu_audio_window` audio tokens per encoder run."""

    precision: Precision = field(default_factory=Precision)
    target: str = "cpu"
    adapter_precision: str = "auto"
    prefill: str = "int4"
    prefill_weight_bits: int = 7
    encoder_precision: str = "auto"
    token_table: str = "auto"
    norm_gains: str = "auto"
    npu_chunk: int | None = None
    npu_context: int | None = None
    npu_audio_window: int = WINDOW_TOKENS

    def __post_init__(self):
        row = export_target(self.target)
        if not row.static_shapes:
            # Silently ignored shapes would leave a user believing the artifact has them.
            for option, value in (("--npu-context", self.npu_context), ("--npu-chunk", self.npu_chunk)):
                if value is not None:
                    raise Phi4MMError(f"{option} sizes the NPU graphs: add --target npu, or leave {option} out")
        elif self.npu_chunk is None:
            object.__setattr__(self, "npu_chunk", NPU_CHUNK)
        if not row.int8_linears:
            if self.prefill != "int4":
                raise Phi4MMError(f"--prefill int8 is a CPU graph (MLAS's int8 GEMM): {row.where} runs prompts "
                                  f"through its own decoder")
            if self.encoder_precision == "int8":
                raise Phi4MMError(f"--encoder-precision int8 is a CPU kernel (MLAS's int8 GEMM): give int4 or fp32 "
                                  f"for {row.where}")
            if self.adapter_precision not in ("auto", *row.adapter_precisions):
                raise Phi4MMError(f"--adapter-precision {self.adapter_precision}: {row.where}'s adapters are files "
                                  f"bound as the decoder's inputs; give {' or '.join(row.adapter_precisions)}")
        if self.prefill not in ("int4", "int8"):
            raise Phi4MMError(f"prefill {self.prefill!r} is not int4 or int8")
        if self.prefill_weight_bits not in int8.WEIGHT_BITS or (self.prefill_weight_bits != 7
                                                                and self.prefill != "int8"):
            raise Phi4MMError(f"--prefill-weight-bits {self.prefill_weight_bits}: give 7 or 8, with --prefill int8")
        if self.prefill == "int8" and not self.precision.is_int4:
            raise Phi4MMError("--prefill int8 pairs with an int4 decoder: an fp32 export already runs prompts in fp32")
        if self.adapters not in (*IN_GRAPH, *sorted(ADAPTER_FILES)):
            raise Phi4MMError(f"adapter precision {self.adapter_precision!r} is not one of "
                              f"{[*IN_GRAPH, *sorted(ADAPTER_FILES)]}")
        if self.precision.weights not in ("int4", "fp32"):
            raise Phi4MMError(f"precision {self.precision.weights!r} is not int4 or fp32")
        if self.token_table != "auto":
            if not self.precision.is_int4:
                raise Phi4MMError(f"--token-table {self.token_table} quantizes the token table of an int4 export: an "
                                  f"fp32 export keeps it in fp32; leave --token-table out")
            if self.token_table not in row.token_tables:
                raise Phi4MMError(f"--token-table {self.token_table}: {row.where}'s graphs take "
                                  f"{' or '.join(row.token_tables)}")
        if self.norm_gains not in NORM_GAINS:
            raise Phi4MMError(f"--norm-gains {self.norm_gains!r}: give one of {', '.join(NORM_GAINS)}")
        if self.encoder_precision not in ENCODER_PRECISIONS:
            raise Phi4MMError(f"encoder precision {self.encoder_precision!r} is not one of {list(ENCODER_PRECISIONS)}")

    @property
    def row(self) -> ExportTarget:
        return export_target(self.target)

    @property
    def adapters(self) -> str:
        """The adapters' precision, "auto" decided by the target's row."""
        return self.row.auto_adapters(self.precision) if self.adapter_precision == "auto" else self.adapter_precision

    @property
    def table(self) -> str:
        """The token table's storage, "auto" decided by the target's row: int4-rescored on the
        CPU. The int4 table alone costs more answers than every int4 decoder layer together
        (fake-quantized one part at a time on 500 held-out items of the trained reference model:
        text 69 of fp32's 72 right answers with only the table at int4, 71 with only the layers).
        Rescored (embedding.py) and 8-bit tables both give fp32's answers back (KL 5.8e-4 and
        6.1e-4 against the int4 table's 2.7e-3, norm gains folded); the rescored lm_head runs at
        the int4 one's speed, the 8-bit one ~1.9x slower on AVX2 (MLAS has no fast 8-bit
        MatMulNBits there: benchmarks/weight_format_cost.py). README "The trained reference model"."""
        return self.row.token_tables[0] if self.token_table == "auto" else self.token_table

    def rescore_top(self, text) -> int:
        """How many of the lm_head's best logits a rescored table recomputes (embedding.py): only
        a tied lm_head reads the table (an untied one keeps its own int4 weight, not rescored)."""
        rescored = self.precision.is_int4 and self.table == "int4-rescored" and text.tie_word_embeddings
        return RESCORE_TOP if rescored else 0

    @property
    def token_table_bits(self) -> int:
        """The bits of an int4 export's token table codes (a rescored table's residual is 4 more)."""
        return 8 if self.table == "int8" else 4

    @property
    def fold_norm_gains(self) -> bool:
        """Whether the decoder's norm gains are folded into the linears that read them
        (export/norm_gains.py). "auto" folds for an int4 base, on every target: the float function
        is the same, and the int4 roundings no longer see the gains' outlier channels. An fp32
        export keeps the checkpoint as it is."""
        return self.precision.is_int4 if self.norm_gains == "auto" else self.norm_gains == "fold"

    @property
    def encoder(self) -> Precision:
        """How the vision and audio encoders store their linears. "auto" is int8 with an int4 base
        (where the target has the int8 kernel; else the base's int4) and fp32 with an fp32 one
        (exactness is what an fp32 export is for). Why int8: an encoder multiplies crops x 1024
        patch rows (or every audio frame) at once, so its linears are compute-bound, where MLAS's
        uint8 x int8 GEMM runs ~1.7x MatMulNBits on AVX2 (an encoder ~1.5x overall:
        benchmarks/RESULTS.md, "Encoder latency"); its 7-bit per-channel weights come from the
        checkpoint and are ~5x closer to it than int4 blocks (quant/int8.py). Its cost:
        activations are rounded per row (row_scaled_int8_matmul), not per block of 32, and the
        encoders take ~1.6x the int4 bytes (0.87 vs 0.55 GB at full size)."""
        choice = self.encoder_precision
        if choice == "auto":
            choice = "int8" if self.precision.is_int4 and self.row.int8_linears else self.precision.weights
        return replace(self.precision, weights=choice)

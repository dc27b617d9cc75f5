"""Audio encoder real-time factor (encoder seconds per second of audio; below 1 is faster than
real time), for an artifact and for full-size conformer blocks.

    python -m phi4mm_edge.benchmarks.audio_latency ARTIFACT
    python -m phi4mm_edge.benchmarks.audio_latency --full-size-block [--rounds 5] [--profile]

`--full-size-block` writes checkpoints whose audio encoder has the real width (1024, MLP 1536, 16
heads, 1024 subsampling channels) and one or three conformer blocks, builds audio.onnx for each
variant (linears int4 / int8 / fp32; attention from plain ops or ONNX Runtime's fused kernel;
encoder_variants.py) and times them all in one process, interleaved, on 30 s of audio (375
encoder frames, one chunk). Half the difference between three blocks and one isolates a block;
the full encoder is estimated as the rest (subsampling, projection) + 24 blocks. The projection
there maps to the tiny text width, so the full-size projection is not counted. Figures are
medians over the rounds after a warm-up; ratios are medians of the per-round ratios to today's
export (int4, plain). `--profile` adds the per-operator profile of the after variant's
three-block graph.
"""

from pathlib import Path

import numpy as np

from ..artifact import INPUT_FEATURES, VISION_MODE
from ..runtime import Phi4MMEdge
from ..runtime.cpu import physical_cores
from ..runtime.audio import SAMPLE_RATE, log_mel_spectrogram
from ..export.reference_checkpoint import tiny_config
from ..export.audio_encoder import build_audio_encoder
from ..machine import cpu_description
from .encoder_variants import (AFTER, export_variants, main as encoder_benchmark, measure_variants,
                               profile, variant_lines)
from .timing import median_seconds

FULL_SIZE_BLOCKS = 24
FEW, MORE = 1, 3  # conformer blocks of the two graphs of each variant
SECONDS = 30.0
FULL_WIDTH = dict(hidden_size=1024, intermediate_size=1536, num_attention_heads=16, ext_pw_out_channel=1024,
                  depthwise_separable_out_channel=1024, nemo_conv_channels=1024)


def noise(seconds: float) -> np.ndarray:
    return 0.1 * np.random.default_rng(0).standard_normal(int(seconds * SAMPLE_RATE)).astype(np.float32)


def real_time_factor(model: Phi4MMEdge, seconds: float, repeats: int = 5) -> float:
    clip = model.audio.prepare((noise(seconds), SAMPLE_RATE))
    return median_seconds(lambda: model.audio.features(clip), repeats) / seconds


def full_width(config: dict, blocks: int) -> None:
    config["audio_config"].update(FULL_WIDTH, num_blocks=blocks)


def full_size_block(folder: Path, rounds: int, with_profile: bool, threads: int | None = None,
                    baseline: Path | None = None) -> list[str]:
    feeds = {INPUT_FEATURES: log_mel_spectrogram(noise(SECONDS), tiny_config()["audio_config"]["input_size"])[None],
             VISION_MODE: np.array(False)}
    variants, graphs, factors, outputs, estimates = measure_variants(
        lambda blocks: export_variants(folder, "audio", blocks, full_width, build_audio_encoder), baseline,
        "audio{}.onnx", feeds, rounds, threads, (FEW, MORE, FULL_SIZE_BLOCKS), scale=1 / SECONDS)
    lines = [f"full-width conformer blocks (1024/1536/16 heads), {SECONDS:.0f} s of audio, {rounds} "
             f"interleaved rounds, {threads or physical_cores()} threads; {cpu_description()}",
             f"  real-time factors: the {MORE}-block graph (and its median per-round ratio to before); "
             f"from the {FEW}- and {MORE}-block graphs' medians: one block, the rest, the encoder = rest + "
             f"{FULL_SIZE_BLOCKS} blocks (and its ratio to before); "
             f"features vs fp32 plain ({MORE} blocks, relative L2)"]
    lines += variant_lines(variants, factors, outputs, estimates, MORE, "7.4f", "block")
    if with_profile:
        lines.append(f"  per-operator profile of {AFTER.name}, {MORE} blocks:")
        lines += profile(graphs[AFTER, MORE], feeds, threads)
    return lines


def on_artifact(model: Phi4MMEdge, artifact) -> list[str]:
    return [f"{artifact}: audio encoder real-time factor {real_time_factor(model, seconds):.4f} for {seconds:.0f} s"
            for seconds in (10.0, 30.0)]


def main(argv=None):
    encoder_benchmark(argv, __doc__, "audio", "block", on_artifact, full_size_block)


if __name__ == "__main__":
    main()

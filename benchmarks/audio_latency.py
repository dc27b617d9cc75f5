"""Audio encoder real-time factor (encoder seconds per second of audio; below 1 is faster than
real time), for an artifact and for one full-size conformer block.

    python -m phi4mm_edge.benchmarks.audio_latency ARTIFACT
    python -m phi4mm_edge.benchmarks.audio_latency --full-size-block

`--full-size-block` writes checkpoints whose audio encoder has the real width (1024, MLP
1536, 16 heads, 1024 subsampling channels) and one or three conformer blocks, exports them at
fp32 and int4 and times them; the full encoder's factor is estimated as the rest + 24 x (block).
The projection there maps to the tiny text width, so the full-size projection is not counted. Figures
are medians after a warm-up, for 10 s and 30 s of audio.
"""

import argparse
import tempfile
from pathlib import Path

import numpy as np

from ..runtime import Phi4MMEdge
from ..export.reference_checkpoint import tiny_config
from .timing import measure_at_both_precisions, median_seconds

FULL_SIZE_BLOCKS = 24


def real_time_factor(model: Phi4MMEdge, seconds: float, repeats: int = 5) -> float:
    rng = np.random.default_rng(0)
    rate = model.audio.entry.sample_rate
    clip = model.audio.prepare((0.1 * rng.standard_normal(int(seconds * rate)).astype(np.float32), rate))
    return median_seconds(lambda: model.audio.features(clip), repeats) / seconds


def full_size_block(folder: Path, blocks: int) -> dict:
    config = tiny_config()
    config["audio_config"].update(hidden_size=1024, intermediate_size=1536, num_blocks=blocks, num_attention_heads=16,
                                  ext_pw_out_channel=1024, depthwise_separable_out_channel=1024, nemo_conv_channels=1024)
    return measure_at_both_precisions(folder / f"blocks{blocks}", config,
                                      lambda model: {seconds: real_time_factor(model, seconds) for seconds in (10.0, 30.0)})


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifact", nargs="?")
    parser.add_argument("--full-size-block", action="store_true")
    args = parser.parse_args(argv)
    if args.artifact:
        model = Phi4MMEdge.load(args.artifact)
        for seconds in (10.0, 30.0):
            print(f"{args.artifact}: audio encoder real-time factor {real_time_factor(model, seconds):.4f} for {seconds:.0f} s")
    if args.full_size_block:
        with tempfile.TemporaryDirectory() as folder:
            # One block and three blocks: half the difference isolates a block from the subsampling
            # and projection (a single block's time is within the machine's noise).
            one, three = full_size_block(Path(folder), 1), full_size_block(Path(folder), 3)
            for precision in one:
                for seconds in (10.0, 30.0):
                    block = (three[precision][seconds] - one[precision][seconds]) / 2
                    rest = one[precision][seconds] - block
                    print(f"full-size conformer, {precision}, {seconds:.0f} s audio: one block RTF {block:.4f}, "
                          f"subsampling+projection {rest:.4f}, estimated 24-block encoder RTF {rest + FULL_SIZE_BLOCKS * block:.3f}")


if __name__ == "__main__":
    main()

"""Vision encoder latency per crop, and crops/tokens for common frame sizes.

    python -m phi4mm_edge.benchmarks.vision_latency ARTIFACT
    python -m phi4mm_edge.benchmarks.vision_latency --full-size-layer   # one SigLIP so400m layer

`--full-size-layer` writes a checkpoint whose vision encoder has the real width (1152, MLP 4304,
16 heads) and two layers, so the exported graph runs exactly one (features come from layer -2),
exports it at fp32 and int4 and times both. Figures are medians over repeats after a warm-up.
"""

import argparse
import tempfile
from pathlib import Path

from PIL import Image

from ..runtime import Phi4MMEdge
from ..manifest import VisionEntry
from ..runtime.image import preprocess
from ..export.reference_checkpoint import tiny_config
from .timing import measure_at_both_precisions, median_seconds

FRAME_SIZES = ((1920, 1080), (1280, 720), (448, 448), (4032, 3024))


def per_crop_ms(model: Phi4MMEdge, repeats: int = 5) -> float:
    """Median milliseconds per crop for an image of one crop's size (the global view plus one tile)."""
    crop = model.vision.geometry.crop_size
    image = model.vision.prepare(Image.new("RGB", (crop, crop), (120, 30, 200)))
    return median_seconds(lambda: model.vision.features(image), repeats) * 1000 / image.pixel_values.shape[0]


def frame_table(geometry: VisionEntry) -> list[str]:
    lines = []
    for width, height in FRAME_SIZES:
        prepared = preprocess(Image.new("RGB", (width, height)), geometry)
        lines.append(f"  {width}x{height}: {prepared.pixel_values.shape[0]} crops (1 global + {prepared.crop_grid[0]}x"
                     f"{prepared.crop_grid[1]} tiles), {prepared.num_tokens} tokens")
    return lines


def full_size_layer(folder: Path) -> dict:
    config = tiny_config()
    config["vision_config"].update(hidden_size=1152, intermediate_size=4304, num_hidden_layers=2, num_attention_heads=16)
    return measure_at_both_precisions(folder, config, per_crop_ms)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifact", nargs="?")
    parser.add_argument("--full-size-layer", action="store_true")
    args = parser.parse_args(argv)
    if args.artifact:
        model = Phi4MMEdge.load(args.artifact)
        print(f"{args.artifact}: vision encoder {per_crop_ms(model):.1f} ms per crop")
        print("\n".join(frame_table(model.vision.geometry)))
    if args.full_size_layer:
        with tempfile.TemporaryDirectory() as folder:
            for precision, ms in full_size_layer(Path(folder)).items():
                print(f"one full-size SigLIP layer (1152/4304/16 heads, 1024 patches), {precision}: {ms:.1f} ms per crop")


if __name__ == "__main__":
    main()

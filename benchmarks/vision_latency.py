"""Vision encoder latency per crop, and crops/tokens for common frame sizes.

    python -m phi4mm_edge.benchmarks.vision_latency ARTIFACT
    python -m phi4mm_edge.benchmarks.vision_latency --full-size-layer [--rounds 5] [--profile]

`--full-size-layer` writes checkpoints whose vision encoder has the real width (1152, MLP 4304,
16 heads) and runs one or three layers, builds vision.onnx for each variant (linears int4 /
int8 / fp32; attention from plain ops or ONNX Runtime's fused kernel; encoder_variants.py) and
times them all in one process, interleaved: each round runs every graph once on one 896x448
image (the global view and two tiles: three distinct crops). Half the difference between three layers and one isolates
a layer from the patch embedding, pooling and projection ("the rest"); the full encoder (26
layers, features come from layer -2) is estimated as the rest + 26 layers. The projection there
maps to the tiny text width, so the full-size projection is not counted. Figures are medians over
the rounds after a warm-up; ratios are medians of the per-round ratios to today's export (int4,
plain), so a busy machine slows both sides of each ratio alike. `--profile` adds ONNX Runtime's
per-operator profile of the after variant's three-layer graph (time share by operator type).
"""

from pathlib import Path

import numpy as np
from PIL import Image

from ..artifact import ATTENTION_MASK, CROP_GRID, PIXEL_VALUES
from ..runtime import Phi4MMEdge
from ..runtime.cpu import physical_cores
from ..manifest import VisionEntry
from ..runtime.image import preprocess
from ..export.vision_encoder import build_vision_encoder
from ..machine import cpu_description
from .encoder_variants import (AFTER, export_variants, main as encoder_benchmark, measure_variants,
                               profile, variant_lines)
from .timing import median_seconds

FRAME_SIZES = ((1920, 1080), (1280, 720), (448, 448), (4032, 3024))
FULL_WIDTH = dict(hidden_size=1152, intermediate_size=4304, num_attention_heads=16)
FULL_SIZE_LAYERS = 26  # SigLIP's 27 layers, features taken at layer -2
FEW, MORE = 1, 3  # layers run by the two graphs of each variant
GEOMETRY = VisionEntry(graph="vision.onnx", crop_size=448, patch_size=14, max_crops=36, mean=0.5, std=0.5, encoder={})


# Images timed per crop are tiled 1x2 (a global view and two tiles, three distinct crops): an image
# of one crop's size has a tile equal to its global view, which vision.onnx encodes once, so its
# time over its two crops would halve the per-crop figure.
def per_crop_ms(model: Phi4MMEdge, repeats: int = 5) -> float:
    """Median milliseconds per crop for a noise image of 2x1 crops' size (three distinct crops)."""
    crop = model.vision.geometry.crop_size
    pixels = np.random.default_rng(0).integers(0, 256, (crop, 2 * crop, 3), dtype=np.uint8)
    image = model.vision.prepare(Image.fromarray(pixels))
    return median_seconds(lambda: model.vision.features(image), repeats) * 1000 / image.pixel_values.shape[0]


def frame_table(geometry: VisionEntry) -> list[str]:
    lines = []
    for width, height in FRAME_SIZES:
        prepared = preprocess(Image.new("RGB", (width, height)), geometry)
        lines.append(f"  {width}x{height}: {prepared.pixel_values.shape[0]} crops (1 global + {prepared.crop_grid[0]}x"
                     f"{prepared.crop_grid[1]} tiles), {prepared.num_tokens} tokens")
    return lines


def full_width(config: dict, layers: int) -> None:
    config["vision_config"].update(FULL_WIDTH, num_hidden_layers=layers + 1)  # features come from layer -2


def crop_inputs(width: int, height: int) -> dict:
    """vision.onnx's feeds for a smooth random image of width x height."""
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (max(1, height // 16), max(1, width // 16), 3), dtype=np.uint8)
    image = preprocess(Image.fromarray(small).resize((width, height), Image.BILINEAR), GEOMETRY)
    return {PIXEL_VALUES: image.pixel_values, ATTENTION_MASK: image.attention_mask,
            CROP_GRID: np.array(image.crop_grid, np.int64)}


def full_size_layer(folder: Path, rounds: int, with_profile: bool, threads: int | None = None,
                    baseline: Path | None = None) -> list[str]:
    feeds = crop_inputs(2 * GEOMETRY.crop_size, GEOMETRY.crop_size)  # three distinct crops (see per_crop_ms)
    crops = feeds[PIXEL_VALUES].shape[0]
    variants, graphs, ms, features, estimates = measure_variants(
        lambda layers: export_variants(folder, "vision", layers, full_width, build_vision_encoder), baseline,
        "vision{}.onnx", feeds, rounds, threads, (FEW, MORE, FULL_SIZE_LAYERS), scale=1000 / crops)
    lines = [f"full-width SigLIP layers (1152/4304/16 heads, 1024 patches a crop), {crops} crops, {rounds} "
             f"interleaved rounds, {threads or physical_cores()} threads; {cpu_description()}",
             f"  ms per crop: the {MORE}-layer graph (and its median per-round ratio to before); "
             f"from the {FEW}- and {MORE}-layer graphs' medians: one layer, the rest, the encoder = rest + "
             f"{FULL_SIZE_LAYERS} layers (and its ratio to before); "
             f"features vs fp32 plain ({MORE} layers, relative L2)"]
    lines += variant_lines(variants, ms, features, estimates, MORE, "7.1f", "layer")
    if with_profile:
        lines.append(f"  per-operator profile of {AFTER.name}, {MORE} layers, {crops} crops:")
        lines += profile(graphs[AFTER, MORE], feeds, threads)
    return lines


def on_artifact(model: Phi4MMEdge, artifact) -> list[str]:
    return [f"{artifact}: vision encoder {per_crop_ms(model):.1f} ms per crop", *frame_table(model.vision.geometry)]


def main(argv=None):
    encoder_benchmark(argv, __doc__, "vision", "layer", on_artifact, full_size_layer)


if __name__ == "__main__":
    main()

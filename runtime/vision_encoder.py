"""The vision encoder of an artifact: an image -> image_features rows for the prompt. Its ONNX
Runtime session opens on first use (see encoder_session.py).

The image's crops and masks and the check of the rows are the same for every artifact; how its
graph is fed is the encoder's `graph`: whole_image (vision.onnx, an image per run) or
vision_npu.crop_by_crop (the NPU's one-crop graph, the crops laid out in numpy)."""

from collections.abc import Callable
from dataclasses import replace

import numpy as np

from ..artifact import ATTENTION_MASK, CROP_GRID, IMAGE_FEATURES, PIXEL_VALUES
from ..manifest import VisionEntry
from ..errors import Phi4MMError
from .image import ImageInput, load_image, preprocess
from .encoder_session import LazySession


def check_max_crops(max_crops, limit: int) -> None:
    if isinstance(max_crops, bool) or not isinstance(max_crops, int) or not 1 <= max_crops <= limit:
        raise Phi4MMError(f"max_crops {max_crops!r}: give a whole number of tiles in 1..{limit} (the model's limit; "
                          f"every image also gets one global view)")


# How a vision graph is fed: (its session, a prepared image) -> the image's rows [tokens, hidden].
ImageGraph = Callable[[LazySession, ImageInput], np.ndarray]


def whole_image(session: LazySession, image: ImageInput) -> np.ndarray:
    """vision.onnx: all of an image's crops in one run, laid out by the graph."""
    return session.run([IMAGE_FEATURES], {
        PIXEL_VALUES: image.pixel_values,
        ATTENTION_MASK: image.attention_mask,
        CROP_GRID: np.array(image.crop_grid, np.int64),
    })[0]


class VisionEncoder:
    def __init__(self, folder, entry: VisionEntry, options, provider: str, graph: ImageGraph = whole_image,
                 reads: dict | None = None, check=None):
        """`graph`: how the artifact's vision graph is fed (whole_image, or vision_npu.crop_by_crop);
        `reads`: its data files' sha256 (Manifest.data_hashes); `check(session)` runs on it once opened."""
        self.geometry, self.graph = entry, graph
        self.session = LazySession(folder / entry.graph, options, provider, reads, check)

    def prepare(self, source, max_crops: int | None = None) -> ImageInput:
        """Any accepted image input -> crops, masks and its token count. `max_crops` lowers the
        HD tiling's crop limit (the processor's dynamic_hd) for this image."""
        geometry = self.geometry
        if max_crops is not None:
            check_max_crops(max_crops, geometry.max_crops)
            geometry = replace(geometry, max_crops=max_crops)
        return preprocess(load_image(source), geometry)

    def features(self, image: ImageInput) -> np.ndarray:
        """image_features [num_tokens, hidden] for one image."""
        features = self.graph(self.session, image)
        if features.shape[0] != image.num_tokens:
            raise Phi4MMError(f"{self.geometry.graph} gave {features.shape[0]} tokens for an image that needs "
                              f"{image.num_tokens}: re-export the artifact")
        return features

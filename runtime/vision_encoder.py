"""The vision encoder of an artifact: an image -> image_features rows for the prompt. Its ONNX
Runtime session opens on first use (see encoder_session.py)."""

from dataclasses import replace

import numpy as np

from ..manifest import VisionEntry
from ..errors import Phi4MMError
from .image import ImageInput, load_image, preprocess
from .encoder_session import LazySession


def check_max_crops(max_crops, limit: int) -> None:
    if isinstance(max_crops, bool) or not isinstance(max_crops, int) or not 1 <= max_crops <= limit:
        raise Phi4MMError(f"max_crops {max_crops!r}: give a whole number of tiles in 1..{limit} (the model's limit; "
                          f"every image also gets one global view)")


class VisionEncoder:
    def __init__(self, folder, entry: VisionEntry, options, provider: str):
        self.geometry = entry
        self.session = LazySession(folder / entry.graph, options, provider)

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
        features = self.session.run(["image_features"], {
            "pixel_values": image.pixel_values,
            "attention_mask": image.attention_mask,
            "crop_grid": np.array(image.crop_grid, np.int64),
        })[0]
        if features.shape[0] != image.num_tokens:
            raise Phi4MMError(f"{self.geometry.graph} gave {features.shape[0]} tokens for an image that needs {image.num_tokens}: re-export the artifact")
        return features

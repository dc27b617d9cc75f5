"""The vision encoder of an artifact: an image -> image_features rows for the prompt. Its ONNX
Runtime session opens on first use (see encoder_session.py)."""

import numpy as np

from ..manifest import VisionEntry
from ..errors import Phi4MMError
from .image import ImageInput, load_image, preprocess
from .encoder_session import LazySession


class VisionEncoder:
    def __init__(self, folder, entry: VisionEntry, options, provider: str):
        self.geometry = entry
        self.session = LazySession(folder / entry.graph, options, provider)

    def prepare(self, source) -> ImageInput:
        """Any accepted image input -> crops, masks and its token count."""
        return preprocess(load_image(source), self.geometry)

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

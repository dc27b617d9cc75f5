"""The vision encoder of an NPU artifact: vision_crop.onnx runs once per crop (the HTP compiles
static shapes only), and the HD transform, which only moves rows, lays the crops' projected
tokens out here in numpy: the same rows vision.onnx returns for the whole image.
VisionEncoder(..., graph=crop_by_crop) feeds it."""

import math

import numpy as np

from ..artifact import ATTENTION_MASK, CROP_FEATURES, PIXEL_VALUES, SEPARATORS
from .encoder_session import LazySession
from .image import ImageInput

GLOBAL_VIEW = 0  # crop 0 is the whole image; crops 1.. are the tiles, row-major
ROW_SEPARATOR, GLOBAL_SEPARATOR = 0, 1  # the rows of the graph's `separators` output


def with_row_separators(grid: np.ndarray, separator: np.ndarray) -> np.ndarray:
    """[rows, width, hidden] -> [rows * (width + 1), hidden]: the separator after each row."""
    rows, _, hidden = grid.shape
    return np.concatenate([grid, np.broadcast_to(separator, (rows, 1, hidden))], axis=1).reshape(-1, hidden)


def as_one_grid(tiles: np.ndarray, rows: int, columns: int) -> np.ndarray:
    """[rows*columns, side, side, ...] (row-major tiles) -> [rows*side, columns*side, ...]."""
    side, rest = tiles.shape[1], tiles.shape[3:]
    by_tile = tiles.reshape(rows, columns, side, side, *rest)
    return by_tile.swapaxes(1, 2).reshape(rows * side, columns * side, *rest)


def crop_features_to_image_features(crop_features: np.ndarray, separators: np.ndarray, attention_mask: np.ndarray,
                                    crop_grid: tuple[int, int]) -> np.ndarray:
    """One image's rows [tokens, hidden] in vision.onnx's "sub_glb" order, from its crops'
    projected tokens `crop_features` [crops, pooled^2, hidden] (global view first, then the tiles
    row-major), the projected `separators` [2, hidden] (row, global/sub), the crops'
    `attention_mask` [crops, patches, patches] and `crop_grid` (rows, columns): the tiles laid out
    as one grid cut to its real rows and columns, a separator after each row; the global/sub
    separator; the global view with a separator after each row."""
    rows, columns = crop_grid
    crops, tokens, hidden = crop_features.shape
    side = math.isqrt(tokens)
    tiles = slice(GLOBAL_VIEW + 1, GLOBAL_VIEW + 1 + rows * columns)
    tile_grid = as_one_grid(crop_features[tiles].reshape(-1, side, side, hidden), rows, columns)
    # A pooled token is real when its top-left patch is: the tiles' mask at every other patch.
    mask_grid = as_one_grid(attention_mask[tiles, ::2, ::2], rows, columns)
    real_rows, real_columns = int(mask_grid[:, 0].sum()), int(mask_grid[0, :].sum())
    row_separator = separators[ROW_SEPARATOR]
    return np.concatenate([
        with_row_separators(tile_grid[:real_rows, :real_columns], row_separator),
        separators[GLOBAL_SEPARATOR][None],
        with_row_separators(crop_features[GLOBAL_VIEW].reshape(side, side, hidden), row_separator),
    ])


def crop_by_crop(session: LazySession, image: ImageInput) -> np.ndarray:
    """image_features [num_tokens, hidden] for one image through the one-crop graph (an NPU
    artifact's vision entry names it): the graph once per crop, except for a crop equal to the
    first (an image tiled 1x1: its tile is its global view), which takes the first crop's features,
    as vision.onnx does (export/vision_encoder.distinct_crops). The session opens on first use: on
    the "qnn" provider an HTP session with CPU fallback off, from the compiled context cached beside
    the graph when there is one (providers.open_session, qnn.py); on "cpu" the same static graph on the CPU."""
    graph = session.open()
    crop_features, separators = [], None
    for crop in range(image.pixel_values.shape[0]):
        if crop and np.array_equal(image.pixel_values[crop], image.pixel_values[0]) \
                and np.array_equal(image.attention_mask[crop], image.attention_mask[0]):
            crop_features.append(crop_features[0])
            continue
        features, separators = graph.run([CROP_FEATURES, SEPARATORS], {
            PIXEL_VALUES: image.pixel_values[crop:crop + 1],
            ATTENTION_MASK: image.attention_mask[crop:crop + 1],
        })
        crop_features.append(features[0])
    return crop_features_to_image_features(np.stack(crop_features), separators, image.attention_mask, image.crop_grid)

"""vision.onnx: one image's crops -> image_features [tokens, text_hidden].

Inputs: pixel_values [crops, 3, crop, crop] (the global view first, then the tiles row-major),
attention_mask [crops, patches, patches] (1 = a real patch), crop_grid [2] = (rows, columns).
The graph runs the SigLIP encoder up to the feature layer, pools 2x2, lays the tiles out as
one grid (the HD transform, "sub_glb" order with the learned separators) and projects. When every
crop equals the first (an image tiled 1x1: its one tile is its global view, pixel for pixel), the
encoder runs on the first crop alone (distinct_crops).
"""

from dataclasses import dataclass

import numpy as np
from onnx import TensorProto

from ..artifact import ATTENTION_MASK, CROP_GRID, IMAGE_FEATURES, PIXEL_VALUES
from .architecture import IMAGE_EMBED
from .checkpoint import Checkpoint, Weights
from .checkpoint_config import VisionConfig
from .graph_blocks import (MASKED_SCORE, EncoderBuilder, Precision, gelu, initializer, layer_norm, linear,
                           self_attention)
from .onnx_graph import Graph

GLOBAL_VIEW = 0  # crop 0 is the whole image; crops 1.. are the tiles, row-major
FIRST_TILE = 1
TO_THE_END = np.iinfo(np.int64).max  # a Slice end past any length
BELOW_ONE = np.float32(1.0 - 1e-6)  # keeps the last real patch's fraction inside the last bucket


@dataclass(frozen=True)
class VisionBuilder(EncoderBuilder):
    """The vision graph being built, its precision, the encoder's sizes, and how attention runs."""

    config: VisionConfig


def patch_embeddings(vision: VisionBuilder, pixels: str, weights: Weights) -> str:
    """[crops, 3, crop, crop] -> [crops, patches^2, hidden]: one strided convolution."""
    graph, patch = vision.graph, vision.config.patch_size
    grid = graph.op("Conv", [pixels, initializer(graph, weights, "weight"), initializer(graph, weights, "bias")],
                    kernel_shape=[patch, patch], strides=[patch, patch])
    return graph.transpose(graph.reshape(grid, [0, vision.config.hidden_size, -1]), [0, 2, 1])


def stretched_buckets(vision: VisionBuilder, real_patches: str) -> str:
    """[crops] real patches along one axis -> [crops, patches]: patch i's fraction i / real,
    bucketized over the trained grid (so a crop's real patches span all trained positions)."""
    graph, config = vision.graph, vision.config
    trained_side = config.trained_patches_per_side
    boundaries = (np.arange(1, trained_side, dtype=np.float64) / trained_side).astype(np.float32)
    index = graph.constant("patch_index", np.arange(config.patches_per_side, dtype=np.float32)[None, :, None])
    step = graph.op("Div", [graph.constant("one_f", np.float32(1.0)), real_patches])
    fraction = graph.op("Min",
                        [graph.mul(index, graph.unsqueeze(step, [1, 2])), graph.constant("below_one", BELOW_ONE)])
    above = graph.op("GreaterOrEqual", [fraction, graph.constant("boundaries", boundaries[None, None, :])])
    return graph.reduce_sum(graph.cast(above, TensorProto.INT64), [2])


def position_ids(vision: VisionBuilder, mask: str) -> str:
    """[crops, patches^2] rows of the position table: a padded crop's real patches take positions
    stretched over the trained grid, its padding patches position 0. Exact only in fp32 (fp16
    moves a fraction across a bucket boundary): marked keep_fp32."""
    graph = vision.graph
    trained_side = vision.config.trained_patches_per_side
    real_rows = graph.reduce_sum(graph.gather(mask, 0, axis=2), [1])  # down the first column
    real_columns = graph.reduce_sum(graph.gather(mask, 0, axis=1), [1])  # along the first row
    row, column = stretched_buckets(vision, real_rows), stretched_buckets(vision, real_columns)
    position = graph.add(graph.mul(graph.unsqueeze(row, [2]), graph.ints(trained_side)), graph.unsqueeze(column, [1]))
    is_real = graph.cast(graph.reshape(mask, [0, -1]), TensorProto.BOOL)
    return graph.keep_fp32(graph.op("Where", [is_real, graph.reshape(position, [0, -1]), graph.ints(0)]))


def key_padding_of(vision: VisionBuilder, mask: str) -> str:
    """Padding patches are hidden from every query as keys (the reference's bidirectional mask):
    for the fused kernel an int32 [crops, patches^2] mask (1 = a real patch), for plain ops the
    additive bias [crops, 1, 1, patches^2]."""
    graph = vision.graph
    if vision.fused_attention:
        return graph.cast(graph.reshape(mask, [0, -1]), TensorProto.INT32)
    is_padding = graph.sub(graph.constant("one_f", np.float32(1.0)), graph.reshape(mask, [0, 1, 1, -1]))
    return graph.mul(is_padding, graph.constant("masked", MASKED_SCORE))


def mlp(vision: VisionBuilder, x: str, weights: Weights) -> str:
    """fc2(gelu_tanh(fc1(x)))."""
    return linear(vision, gelu(vision.graph, linear(vision, x, weights.scope("fc1.")), "tanh"), weights.scope("fc2."))


def encoder_layer(vision: VisionBuilder, x: str, key_padding: str, weights: Weights) -> str:
    """x + attention(layer_norm1(x)), then + mlp(layer_norm2(x))."""
    graph, eps = vision.graph, vision.config.layer_norm_eps
    x = graph.add(x, self_attention(vision, layer_norm(graph, x, weights.scope("layer_norm1."), eps),
                                    weights.scope("self_attn."), "out_proj.", key_padding=key_padding))
    return graph.add(x, mlp(vision, layer_norm(graph, x, weights.scope("layer_norm2."), eps), weights.scope("mlp.")))


def pool_2x2(vision: VisionBuilder, features: str) -> str:
    """[crops, patches^2, hidden] -> [crops, pooled, pooled, hidden] by 2x2 average pooling."""
    graph, side = vision.graph, vision.config.patches_per_side
    grid = graph.transpose(graph.reshape(features, [0, side, side, vision.config.hidden_size]), [0, 3, 1, 2])
    if side % 2:  # odd patch grids are reflection-padded by one row and column first
        grid = graph.op("Pad", [grid, graph.ints([0, 0, 0, 0, 0, 0, 1, 1])], mode="reflect")
    return graph.transpose(graph.op("AveragePool", [grid], kernel_shape=[2, 2], strides=[2, 2]), [0, 2, 3, 1])


def distinct_crops(graph: Graph, pixels: str, mask: str) -> tuple[str, str, str]:
    """(pixels, mask) to encode and the crop count [1]: only the first crop when every crop equals
    it, pixels and mask (an image tiled 1x1, e.g. a 448x448 photo or any image at --max-crops 1,
    has one tile identical to its global view), else all of them. Each crop's features depend on
    that crop alone (attention stays within a crop; the int8 linears round each row on its own),
    so the copies are what the encoder would have computed; it costs one comparison pass over the
    pixels and halves the encoder's time for such images."""
    zero = graph.constant("zero", np.float32(0))
    equal_to_first = [graph.op("Equal", [graph.op("ReduceMax",
                                                  [graph.op("Abs", [graph.sub(x, graph.slice(x, [0], [1], axes=[0]))])],
                                                 keepdims=0), zero]) for x in (pixels, mask)]
    crops = graph.slice(graph.op("Shape", [pixels]), [0], [1], axes=[0])
    count = graph.op("Where", [graph.op("And", equal_to_first), graph.ints([1]), crops])
    return graph.slice(pixels, [0], count, axes=[0]), graph.slice(mask, [0], count, axes=[0]), crops


def tiles_of(graph: Graph, crops: str, rows: str, columns: str) -> str:
    """crops[1 : 1 + rows*columns]: the tiles, without the global view and any padding crops."""
    return graph.slice(crops, [FIRST_TILE], graph.add(graph.mul(rows, columns), graph.ints([FIRST_TILE])), axes=[0])


def as_one_grid(graph: Graph, tiles: str, rows: str, columns: str, side: int, channels: list[int]) -> str:
    """[rows*columns, side, side, *channels] (row-major tiles) -> [rows*side, columns*side, *channels]."""
    by_tile = graph.reshape(tiles, graph.concat([rows, columns, [side, side], channels]))
    by_row = graph.transpose(by_tile, [0, 2, 1, 3] + ([4] if channels else []))
    side_1d = graph.ints([side])
    return graph.reshape(by_row, graph.concat([graph.mul(rows, side_1d), graph.mul(columns, side_1d), channels]))


def real_extent(graph: Graph, mask: str, rows: str, columns: str, side: int) -> tuple[str, str]:
    """The real rows and columns ([1] each) of the pooled tiles' grid. A pooled token is real when
    its top-left patch is: the tiles' mask at every other patch, laid out as one grid, counted
    down its first column and along its first row."""
    every_other = graph.slice(tiles_of(graph, mask, rows, columns), [0, 0], [TO_THE_END, TO_THE_END],
                              axes=[1, 2], steps=[2, 2])
    mask_grid = as_one_grid(graph, every_other, rows, columns, side, [])
    real_rows = graph.reduce_sum(graph.gather(mask_grid, 0, axis=1), [0], keepdims=True)
    real_columns = graph.reduce_sum(graph.gather(mask_grid, 0, axis=0), [0], keepdims=True)
    return graph.cast(real_rows, TensorProto.INT64), graph.cast(real_columns, TensorProto.INT64)


def with_row_separators(graph: Graph, grid: str, rows: str, separator: str, hidden: int) -> str:
    """[rows, width, hidden] -> [rows * (width + 1), hidden]: the separator after each row."""
    separators = graph.op("Expand", [separator, graph.concat([rows, [1, 1]])])
    return graph.reshape(graph.concat([grid, separators], axis=1), [-1, hidden])


def hd_transform(vision: VisionBuilder, pooled: str, mask: str, crop_grid: str, weights: Weights) -> str:
    """One image's tokens [tokens, hidden] in "sub_glb" order: the tiles laid out as one grid, cut
    to its real rows and columns, a separator after each row; the global/sub separator; the
    global view with a separator after each row. `pooled` is [crops, side, side, hidden]."""
    graph, hidden = vision.graph, vision.config.hidden_size
    side = (vision.config.patches_per_side + 1) // 2
    row_separator = initializer(graph, weights, "sub_img_feature_extensor", shape=[1, 1, -1])
    global_separator = initializer(graph, weights, "global_img_feature_extensor", shape=[1, -1])
    rows, columns = (graph.slice(crop_grid, [i], [i + 1], axes=[0]) for i in (0, 1))  # 1-D, for Concat

    tile_grid = as_one_grid(graph, tiles_of(graph, pooled, rows, columns), rows, columns, side, [hidden])
    real_rows, real_columns = real_extent(graph, mask, rows, columns, side)
    real_grid = graph.slice(tile_grid, [0, 0], graph.concat([real_rows, real_columns]), axes=[0, 1])
    global_view = graph.squeeze(graph.slice(pooled, [GLOBAL_VIEW], [GLOBAL_VIEW + 1], axes=[0]), [0])
    return graph.concat([with_row_separators(graph, real_grid, real_rows, row_separator, hidden),
                         global_separator,
                         with_row_separators(graph, global_view, graph.ints([side]), row_separator, hidden)])


def projection(vision: VisionBuilder, tokens: str, weights: Weights) -> str:
    """[tokens, hidden] -> [tokens, text_hidden]: linear, GELU, linear."""
    up = linear(vision, tokens, weights.scope("img_projection_up."))
    return linear(vision, gelu(vision.graph, up), weights.scope("img_projection_down."))


def build_vision_encoder(checkpoint: Checkpoint, graph: Graph, precision: Precision, progress=None,
                         fused_attention: bool = True) -> VisionConfig:
    """Fill `graph` with vision.onnx for the checkpoint's vision encoder, its linears stored at
    `precision`; returns its config. `fused_attention=False` builds attention from plain ops."""
    config = checkpoint.vision
    vision = VisionBuilder(graph, precision, config, fused_attention)
    weights = checkpoint.weights(IMAGE_EMBED, graph_prefix="vision.")
    encoder = weights.scope("img_processor.")
    side = config.patches_per_side
    pixels = graph.input(PIXEL_VALUES, TensorProto.FLOAT, ["crops", 3, config.crop_size, config.crop_size])
    mask = graph.input(ATTENTION_MASK, TensorProto.FLOAT, ["crops", side, side])
    crop_grid = graph.input(CROP_GRID, TensorProto.INT64, [2])

    encoded_pixels, encoded_mask, crops = distinct_crops(graph, pixels, mask)
    positions = graph.gather(initializer(graph, encoder, "embeddings.position_embedding.weight"),
                             position_ids(vision, encoded_mask), axis=0)
    x = graph.add(patch_embeddings(vision, encoded_pixels, encoder.scope("embeddings.patch_embedding.")), positions)
    key_padding = key_padding_of(vision, encoded_mask)
    for layer in range(config.layers_used):
        x = encoder_layer(vision, x, key_padding, encoder.scope(f"encoder.layers.{layer}."))
        if progress:
            progress(f"vision layer {layer}")
    pooled = graph.op("Expand", [pool_2x2(vision, x), graph.concat([crops, [1, 1, 1]])])  # one crop encoded: its copies
    tokens = hd_transform(vision, pooled, mask, crop_grid, weights)
    graph.op("Identity", [projection(vision, tokens, weights)], outputs=[IMAGE_FEATURES], name=IMAGE_FEATURES)
    graph.output(IMAGE_FEATURES, TensorProto.FLOAT, ["image_tokens", checkpoint.text.hidden_size])
    return config

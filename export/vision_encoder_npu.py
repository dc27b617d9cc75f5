"""vision_crop.onnx: the NPU (QNN HTP) flavor of the vision encoder, one crop per run.

The HTP compiles static shapes only, so this graph takes ONE crop, pixel_values [1, 3, crop, crop]
and its attention_mask [1, patches, patches] (1 = a real patch; the last row and column of tiles
are partly padding), and returns crop_features [1, pooled^2, text_hidden]: the SigLIP encoder up
to the feature layer, 2x2 pooling and the projection MLP. The projection acts on each token
alone, so projecting a crop's tokens before the HD transform equals projecting the image's
tokens after it. The transform itself (tiles laid out as one grid, cut to its real extent,
separators between rows) moves data only; the runtime does it in numpy
(runtime/vision_npu.py) with the projected separators this graph also returns, `separators`
[2, text_hidden] = projection of [row separator, global/sub separator].

Attention is plain ops (MatMul, Softmax): the HTP has no MultiHeadAttention kernel.
"""

from dataclasses import replace

import numpy as np
from onnx import TensorProto

from ..artifact import ATTENTION_MASK, CROP_FEATURES, PIXEL_VALUES, SEPARATORS
from .. import artifact
from .architecture import IMAGE_EMBED
from .checkpoint import Checkpoint, Weights
from .checkpoint_config import VisionConfig
from .graph_blocks import Precision, initializer
from .onnx_graph import Graph
from .vision_encoder import (BELOW_ONE, VisionBuilder, encoder_layer, key_padding_of, patch_embeddings, pool_2x2,
                             projection)

CROP_GRAPH = artifact.NPU_VISION_GRAPH
# after each row; between tiles and global view
SEPARATOR_WEIGHTS = ("sub_img_feature_extensor", "global_img_feature_extensor")


def stretched_bucket_table(config: VisionConfig) -> np.ndarray:
    """[patches + 1, patches] int64: row r holds vision_encoder.stretched_buckets for a crop with r
    real patches along an axis, computed here in float32 as the CPU graph computes it. The HTP
    computes in fp16, where 1/22 rounds low enough to move patch 11 of 22 into the bucket below
    (measured); a table lookup by the real count is exact at any precision."""
    trained_side, side = config.trained_patches_per_side, config.patches_per_side
    boundaries = (np.arange(1, trained_side, dtype=np.float64) / trained_side).astype(np.float32)
    index = np.arange(side, dtype=np.float32)
    table = np.zeros((side + 1, side), np.int64)  # row 0 (no real patch) is never read: every crop has one
    for real in range(1, side + 1):
        fraction = np.minimum(index * (np.float32(1.0) / np.float32(real)), BELOW_ONE)
        table[real] = (fraction[:, None] >= boundaries[None, :]).sum(axis=1)
    return table


def static_position_ids(vision: VisionBuilder, mask: str) -> str:
    """[1, patches^2] rows of the position table for one crop, as vision_encoder.position_ids gives
    them (real patches stretched over the trained grid, padding at 0), from exact integer ops."""
    graph, config = vision.graph, vision.config
    table = graph.constant("stretched_buckets", stretched_bucket_table(config))
    real_rows = graph.cast(graph.reduce_sum(graph.gather(mask, 0, axis=2), [1]),
                           TensorProto.INT64)  # down the first column
    real_columns = graph.cast(graph.reduce_sum(graph.gather(mask, 0, axis=1), [1]),
                              TensorProto.INT64)  # along the first row
    row, column = graph.gather(table, real_rows, axis=0), graph.gather(table, real_columns, axis=0)  # [1, patches] each
    position = graph.add(graph.mul(graph.unsqueeze(row, [2]), graph.ints(config.trained_patches_per_side)),
                         graph.unsqueeze(column, [1]))
    is_real = graph.cast(graph.reshape(mask, [1, -1]), TensorProto.BOOL)
    return graph.op("Where", [is_real, graph.reshape(position, [1, -1]), graph.ints(0)])


def separator_rows(graph: Graph, weights: Weights) -> str:
    """[1, 2, hidden]: the row separator and the global/sub separator, projected with the crop's tokens."""
    return graph.concat([initializer(graph, weights, name, shape=[1, 1, -1]) for name in SEPARATOR_WEIGHTS], axis=1)


def build_vision_crop_encoder(checkpoint: Checkpoint, graph: Graph, precision: Precision,
                              progress=None) -> VisionConfig:
    """Fill `graph` with vision_crop.onnx for the checkpoint's vision encoder, its linears stored at
    `precision` (int4 MatMulNBits, biases added after it for the HTP, or fp32 MatMul); returns its config."""
    config = checkpoint.vision
    vision = VisionBuilder(graph, replace(precision, bias_in_kernel=False), config, fused_attention=False)
    weights = checkpoint.weights(IMAGE_EMBED, graph_prefix="vision.")
    encoder = weights.scope("img_processor.")
    side, pooled_side = config.patches_per_side, (config.patches_per_side + 1) // 2
    text_hidden = checkpoint.text.hidden_size
    pixels = graph.input(PIXEL_VALUES, TensorProto.FLOAT, [1, 3, config.crop_size, config.crop_size])
    mask = graph.input(ATTENTION_MASK, TensorProto.FLOAT, [1, side, side])

    positions = graph.gather(initializer(graph, encoder, "embeddings.position_embedding.weight"),
                             static_position_ids(vision, mask), axis=0)
    x = graph.add(patch_embeddings(vision, pixels, encoder.scope("embeddings.patch_embedding.")), positions)
    key_padding = key_padding_of(vision, mask)  # (1 - mask) * float32 min: no NaN on the HTP (measured)
    for layer in range(config.layers_used):
        x = encoder_layer(vision, x, key_padding, encoder.scope(f"encoder.layers.{layer}."))
        if progress:
            progress(f"vision layer {layer}")
    tokens = graph.reshape(pool_2x2(vision, x), [1, pooled_side * pooled_side, config.hidden_size])
    projected = projection(vision, graph.concat([tokens, separator_rows(graph, weights)], axis=1), weights)
    crop_tokens, separators = pooled_side * pooled_side, len(SEPARATOR_WEIGHTS)
    graph.op("Identity", [graph.slice(projected, [0], [crop_tokens], axes=[1])], outputs=[CROP_FEATURES],
             name=CROP_FEATURES)
    separator_tokens = graph.slice(projected, [crop_tokens], [crop_tokens + separators], axes=[1])
    graph.op("Reshape", [separator_tokens, graph.ints([separators, text_hidden])], outputs=[SEPARATORS],
             name=SEPARATORS)
    graph.output(CROP_FEATURES, TensorProto.FLOAT, [1, crop_tokens, text_hidden])
    graph.output(SEPARATORS, TensorProto.FLOAT, [separators, text_hidden])
    return config

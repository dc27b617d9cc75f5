"""vision.onnx: one image's crops -> image_features [tokens, text_hidden].

Inputs: pixel_values [crops, 3, crop, crop] (the global view first, then the tiles row-major),
attention_mask [crops, patches, patches] (1 = a real patch), crop_grid [2] = (rows, columns).
The graph runs the SigLIP encoder up to the feature layer, pools 2x2, lays the tiles out as
one grid (the HD transform, "sub_glb" order with the learned separators) and projects.
"""

import math
from dataclasses import dataclass

import numpy as np
from onnx import TensorProto

from ..errors import Phi4MMError
from .attention import multi_head_attention
from .checkpoint import Checkpoint
from .linear import Precision, linear
from .onnx_graph import Graph, int64s

PREFIX = "model.embed_tokens_extend.image_embed."
ENCODER = PREFIX + "img_processor."
SO400M_LAYERS = 27  # the remote code builds SigLIP so400m-patch14-448: 27 layers
REMOTE_CODE_HEADS = 16  # the remote code's fixed head count (not in the original config.json)
REMOTE_CODE_FEATURE_LAYER = -2
LAYER_NORM_EPS = 1e-6  # SigLIP's


@dataclass
class VisionConfig:
    hidden_size: int
    intermediate_size: int
    num_layers: int  # encoder layers in the model (features come from `feature_layer`)
    num_heads: int
    patch_size: int
    image_size: int  # the size the position embeddings were trained for
    crop_size: int
    feature_layer: int
    layer_norm_eps: float

    @property
    def layers_used(self) -> int:
        """hidden_states[k] is the output after k layers; a negative k counts from the end."""
        return self.feature_layer if self.feature_layer >= 0 else self.num_layers + 1 + self.feature_layer

    @property
    def patches_per_side(self) -> int:
        return self.crop_size // self.patch_size


def vision_config(ckpt: Checkpoint) -> VisionConfig:
    """Read from config.json (native layout) or from the tensor shapes (original layout, whose
    config.json does not describe the encoder: the remote code fixes it)."""
    width, _, patch, _ = ckpt.shape(ENCODER + "embeddings.patch_embedding.weight")  # [hidden, 3, patch, patch]
    positions = ckpt.shape(ENCODER + "embeddings.position_embedding.weight")[0]  # (image_size / patch)^2
    stored_layers = 0
    while ckpt.has(f"{ENCODER}encoder.layers.{stored_layers}.mlp.fc1.weight"):
        stored_layers += 1
    if ckpt.layout == "native":
        v = ckpt.raw_config.get("vision_config") or {}
        return VisionConfig(
            hidden_size=width, intermediate_size=ckpt.shape(ENCODER + "encoder.layers.0.mlp.fc1.weight")[0],
            num_layers=v.get("num_hidden_layers", stored_layers), num_heads=v.get("num_attention_heads", REMOTE_CODE_HEADS),
            patch_size=patch, image_size=v.get("image_size", int(math.isqrt(positions)) * patch),
            crop_size=v.get("crop_size", v.get("image_size", 448)), feature_layer=v.get("feature_layer", REMOTE_CODE_FEATURE_LAYER),
            layer_norm_eps=v.get("layer_norm_eps", LAYER_NORM_EPS),
        )
    image_layer = (ckpt.raw_config.get("embd_layer") or {}).get("image_embd_layer") or {}
    # The checkpoint may omit the last layer (its output is never used): so400m-wide encoders
    # then still have 27 layers, with features after 26.
    num_layers = SO400M_LAYERS if (width == 1152 and stored_layers == SO400M_LAYERS - 1) else stored_layers
    return VisionConfig(
        hidden_size=width,  # patch_embedding.weight rows
        intermediate_size=ckpt.shape(ENCODER + "encoder.layers.0.mlp.fc1.weight")[0],  # fc1.weight rows
        num_layers=num_layers,  # encoder.layers.N present
        num_heads=REMOTE_CODE_HEADS,  # remote code constant
        patch_size=patch,  # patch_embedding kernel
        image_size=int(math.isqrt(positions)) * patch,  # position_embedding rows = (size / patch)^2
        crop_size=image_layer.get("crop_size", 448),  # embd_layer.image_embd_layer.crop_size
        feature_layer=REMOTE_CODE_FEATURE_LAYER,  # remote code constant
        layer_norm_eps=LAYER_NORM_EPS,
    )


class VisionBuilder:
    def __init__(self, ckpt: Checkpoint, g: Graph, precision: Precision, config: VisionConfig):
        self.ckpt, self.g, self.precision, self.c = ckpt, g, precision, config

    def w(self, name: str) -> np.ndarray:
        return self.ckpt.tensor(name)

    def linear(self, x: str, name: str) -> str:
        return linear(self.g, x, self.w(name + ".weight"), name.replace(PREFIX, "vision."), self.precision, bias=self.w(name + ".bias"))

    def layer_norm(self, x: str, name: str) -> str:
        g = self.g
        return g.op("LayerNormalization", [x, g.weight(name + ".weight", self.w(name + ".weight")),
                                           g.weight(name + ".bias", self.w(name + ".bias"))], axis=-1, epsilon=self.c.layer_norm_eps)

    def embeddings(self, pixels: str, mask: str) -> str:
        """Patch embeddings plus position embeddings; padded crops use positions stretched over
        their real patches (bucketized fractional coordinates), padding patches position 0."""
        g, c, p = self.g, self.c, ENCODER + "embeddings."
        side = c.patches_per_side
        patches = g.op("Conv", [pixels, g.weight(p + "patch_embedding.weight", self.w(p + "patch_embedding.weight")),
                                g.weight(p + "patch_embedding.bias", self.w(p + "patch_embedding.bias"))],
                       kernel_shape=[c.patch_size, c.patch_size], strides=[c.patch_size, c.patch_size])
        patches = g.op("Transpose", [g.op("Reshape", [patches, g.constant("shape", int64s([0, c.hidden_size, -1]))])], perm=[0, 2, 1])

        trained_side = c.image_size // c.patch_size
        boundaries = (np.arange(1, trained_side, dtype=np.float64) / trained_side).astype(np.float32)
        indices = g.constant("patch_index", np.arange(side, dtype=np.float32)[None, :, None])  # [1, side, 1]

        def buckets(count: str) -> str:  # [crops] real patches along one axis -> [crops, side]
            step = g.op("Div", [g.constant("one_f", np.float32(1.0)), g.op("Cast", [count], to=TensorProto.FLOAT)])
            fraction = g.op("Min", [g.op("Mul", [indices, g.op("Unsqueeze", [step, g.constant("axes", int64s([1, 2]))])]),
                                    g.constant("below_one", np.float32(1.0 - 1e-6))])
            above = g.op("GreaterOrEqual", [fraction, g.constant("boundaries", boundaries[None, None, :])])
            return g.op("ReduceSum", [g.op("Cast", [above], to=TensorProto.INT64), g.constant("axis2", int64s([2]))], keepdims=0)

        rows_real = g.op("ReduceSum", [g.op("Gather", [mask, g.constant("zero", np.int64(0))], axis=2), g.constant("axis1", int64s([1]))], keepdims=0)
        cols_real = g.op("ReduceSum", [g.op("Gather", [mask, g.constant("zero", np.int64(0))], axis=1), g.constant("axis1", int64s([1]))], keepdims=0)
        row_bucket, col_bucket = buckets(rows_real), buckets(cols_real)
        position = g.op("Add", [g.op("Mul", [g.op("Unsqueeze", [row_bucket, g.constant("axis2", int64s([2]))]), g.constant("side", np.int64(trained_side))]),
                                g.op("Unsqueeze", [col_bucket, g.constant("axis1", int64s([1]))])])
        flat_mask = g.op("Reshape", [mask, g.constant("shape", int64s([0, -1]))])
        position = g.op("Where", [g.op("Cast", [flat_mask], to=TensorProto.BOOL),
                                  g.op("Reshape", [position, g.constant("shape", int64s([0, -1]))]), g.constant("zero", np.int64(0))])
        table = g.weight(p + "position_embedding.weight", self.w(p + "position_embedding.weight"))
        return g.op("Add", [patches, g.op("Gather", [table, position], axis=0)])

    def attention(self, x: str, bias: str, layer: int) -> str:
        p = f"{ENCODER}encoder.layers.{layer}.self_attn."
        context = multi_head_attention(self.g, x, bias, self.c.hidden_size, self.c.num_heads, lambda h, name: self.linear(h, p + name))
        return self.linear(context, p + "out_proj")

    def encoder_layer(self, x: str, bias: str, layer: int) -> str:
        p = f"{ENCODER}encoder.layers.{layer}."
        x = self.g.op("Add", [x, self.attention(self.layer_norm(x, p + "layer_norm1"), bias, layer)])
        h = self.g.op("Gelu", [self.linear(self.layer_norm(x, p + "layer_norm2"), p + "mlp.fc1")], approximate="tanh")
        return self.g.op("Add", [x, self.linear(h, p + "mlp.fc2")])

    def pool(self, features: str) -> str:
        """[crops, side*side, C] -> [crops, side/2, side/2, C] by 2x2 average pooling."""
        g, c, side = self.g, self.c, self.c.patches_per_side
        grid = g.op("Transpose", [g.op("Reshape", [features, g.constant("grid", int64s([0, side, side, c.hidden_size]))])], perm=[0, 3, 1, 2])
        if side % 2:  # odd patch grids are reflection-padded by one row and column first
            grid = g.op("Pad", [grid, g.constant("pads", int64s([0, 0, 0, 0, 0, 0, 1, 1]))], mode="reflect")
        pooled = g.op("AveragePool", [grid], kernel_shape=[2, 2], strides=[2, 2])
        return g.op("Transpose", [pooled], perm=[0, 2, 3, 1])

    def hd_transform(self, pooled: str, mask: str, grid: str) -> str:
        """The tokens of one image: [tiles laid out as one grid, cut to the real rows/columns, a
        separator after each row] + [global/sub separator] + [global view with row separators]."""
        g, c = self.g, self.c
        side = (c.patches_per_side + 1) // 2
        sub_separator = g.weight(PREFIX + "sub_img_feature_extensor", self.w(PREFIX + "sub_img_feature_extensor").reshape(1, 1, -1))
        global_separator = g.weight(PREFIX + "global_img_feature_extensor", self.w(PREFIX + "global_img_feature_extensor").reshape(1, -1))

        def with_row_separators(rows_grid: str, rows: str) -> str:  # [r, w, C] -> [r * (w + 1), C]
            separators = g.op("Expand", [sub_separator, g.op("Concat", [rows, g.constant("one_one", int64s([1, 1]))], axis=0)])
            return g.op("Reshape", [g.op("Concat", [rows_grid, separators], axis=1), g.constant("tokens", int64s([-1, c.hidden_size]))])

        first = g.op("Slice", [pooled, g.constant("zero1", int64s([0])), g.constant("one1", int64s([1])), g.constant("axis0", int64s([0]))])
        global_tokens = with_row_separators(g.op("Squeeze", [first, g.constant("axis0", int64s([0]))]), g.constant("side1", int64s([side])))

        rows = g.op("Slice", [grid, g.constant("zero1", int64s([0])), g.constant("one1", int64s([1]))])
        columns = g.op("Slice", [grid, g.constant("one1", int64s([1])), g.constant("two1", int64s([2]))])
        tiles = g.op("Mul", [rows, columns])
        tile_range = [g.constant("one1", int64s([1])), g.op("Add", [tiles, g.constant("one1", int64s([1]))]), g.constant("axis0", int64s([0]))]
        layout = g.op("Concat", [rows, columns, g.constant("side_side", int64s([side, side]))], axis=0)

        def as_grid(tensor: str, trailing) -> str:  # [tiles, side, side, *t] -> [rows*side, columns*side, *t]
            shaped = g.op("Reshape", [tensor, g.op("Concat", [layout, g.constant("trailing", int64s(trailing))], axis=0)])
            perm = [0, 2, 1, 3] + ([4] if trailing else [])
            merged = g.op("Concat", [g.op("Mul", [rows, g.constant("side1", int64s([side]))]),
                                     g.op("Mul", [columns, g.constant("side1", int64s([side]))]), g.constant("trailing", int64s(trailing))], axis=0)
            return g.op("Reshape", [g.op("Transpose", [shaped], perm=perm), merged])

        sub = as_grid(g.op("Slice", [pooled, *tile_range]), [c.hidden_size])
        tile_masks = g.op("Slice", [mask, *tile_range])
        pooled_mask = g.op("Slice", [tile_masks, g.constant("zero2", int64s([0, 0])), g.constant("big2", int64s([1 << 30, 1 << 30])),
                                     g.constant("axes12", int64s([1, 2])), g.constant("steps22", int64s([2, 2]))])
        mask_grid = as_grid(pooled_mask, [])
        real_rows = g.op("Cast", [g.op("ReduceSum", [g.op("Gather", [mask_grid, g.constant("zero", np.int64(0))], axis=1),
                                                     g.constant("axis0", int64s([0]))], keepdims=1)], to=TensorProto.INT64)
        real_columns = g.op("Cast", [g.op("ReduceSum", [g.op("Gather", [mask_grid, g.constant("zero", np.int64(0))], axis=0),
                                                        g.constant("axis0", int64s([0]))], keepdims=1)], to=TensorProto.INT64)
        sub = g.op("Slice", [sub, g.constant("zero2", int64s([0, 0])), g.op("Concat", [real_rows, real_columns], axis=0), g.constant("axes01", int64s([0, 1]))])
        sub_tokens = with_row_separators(sub, real_rows)
        return g.op("Concat", [sub_tokens, global_separator, global_tokens], axis=0)

    def projection(self, tokens: str) -> str:
        up = self.linear(tokens, PREFIX + "img_projection_up")
        return self.linear(self.g.op("Gelu", [up]), PREFIX + "img_projection_down")


def build_vision(ckpt: Checkpoint, g: Graph, precision: Precision, progress=None) -> VisionConfig:
    config = vision_config(ckpt)
    if config.hidden_size % config.num_heads:
        raise Phi4MMError(f"vision width {config.hidden_size} is not divisible by {config.num_heads} heads: unsupported checkpoint")
    side = config.patches_per_side
    b = VisionBuilder(ckpt, g, precision, config)
    pixels = g.input("pixel_values", TensorProto.FLOAT, ["crops", 3, config.crop_size, config.crop_size])
    mask = g.input("attention_mask", TensorProto.FLOAT, ["crops", side, side])
    grid = g.input("crop_grid", TensorProto.INT64, [2])
    x = b.embeddings(pixels, mask)
    # Padding patches are hidden from every query as keys (the reference's bidirectional mask).
    key_padding = g.op("Mul", [g.op("Sub", [g.constant("one_f", np.float32(1.0)), g.op("Reshape", [mask, g.constant("shape", int64s([0, 1, 1, -1]))])]),
                               g.constant("min_f", np.float32(np.finfo(np.float32).min))])
    for layer in range(config.layers_used):
        x = b.encoder_layer(x, key_padding, layer)
        if progress:
            progress(f"vision layer {layer}")
    tokens = b.hd_transform(b.pool(x), mask, grid)
    g.op("Identity", [b.projection(tokens)], outputs=["image_features"], name="image_features")
    g.output("image_features", TensorProto.FLOAT, ["image_tokens", ckpt.text.hidden_size])
    return config

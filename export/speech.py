"""speech.onnx: log-mel features -> audio_features [tokens, text_hidden].

Inputs: input_features [1, frames, mel bins] (log-mel) and vision_mode [] (bool): the projection used when
the prompt also has an image ("vision") or not ("speech"). The graph normalizes the features,
subsamples them 8x in time (NeMo-style stride-2 convolutions), runs the conformer blocks with
a T5-style relative position bias, and projects. Sequences longer than 500 subsampled frames
(40 s) are cut into 500-frame chunks encoded independently, the last one zero-padded, exactly
as the reference does.
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

PREFIX = "model.embed_tokens_extend.audio_embed."
ENCODER = PREFIX + "encoder."
MAX_CHUNK = 500  # the reference's "maximum position for absolute positional encoding"


@dataclass
class AudioConfig:
    hidden_size: int
    num_heads: int
    num_blocks: int
    kernel_size: int
    time_reduction: int
    conv_channels: int
    input_size: int
    bias_max_distance: int
    ext_pw_out_channel: int
    chunk_size: int


def audio_config(ckpt: Checkpoint) -> AudioConfig:
    """From the native `audio_config` or the original `audio_processor.config`; widths that both
    layouts store in the tensors are read from the shapes."""
    if ckpt.layout == "native":
        a = ckpt.raw_config.get("audio_config") or {}
        heads, distance, chunk = a.get("num_attention_heads", 16), a.get("bias_max_distance", 1000), a.get("chunk_size", -1)
        reduction, kernel = a.get("time_reduction", 8), a.get("kernel_size", 3)
    else:
        a = ((ckpt.raw_config.get("audio_processor") or {}).get("config")) or {}
        heads, chunk = a.get("attention_heads", 16), a.get("chunk_size", -1)
        distance = (a.get("relative_attention_bias_args") or {}).get("t5_bias_max_distance", 1000)
        reduction, kernel = a.get("time_reduction", 8), a.get("kernel_size", 3)
    blocks = 0
    while ckpt.has(f"{ENCODER}encoders.{blocks}.self_attn.q_proj.weight"):
        blocks += 1
    config = AudioConfig(
        hidden_size=ckpt.shape(ENCODER + "embed.out.weight")[0],
        num_heads=heads, num_blocks=blocks, kernel_size=kernel, time_reduction=reduction,
        conv_channels=ckpt.shape(ENCODER + "embed.conv.0.weight")[0],
        input_size=ckpt.shape(ENCODER + "encoder_embedding.global_mean")[0],
        bias_max_distance=ckpt.shape(ENCODER + "relative_attention_bias_layer.bias_values.weight")[0] // 2,
        ext_pw_out_channel=ckpt.shape(ENCODER + "encoders.0.conv.glu.b1")[1],
        chunk_size=chunk,
    )
    if distance != config.bias_max_distance:
        raise Phi4MMError(f"the config's relative-bias distance {distance} does not match the bias table "
                          f"({2 * config.bias_max_distance} rows): the checkpoint is inconsistent")
    if config.chunk_size > 0:
        raise Phi4MMError(f"audio chunk_size {config.chunk_size}: streaming (chunked) attention is not supported; "
                          f"Phi-4-multimodal uses -1 (full attention)")
    return config


class ConformerBuilder:
    def __init__(self, ckpt: Checkpoint, g: Graph, precision: Precision, config: AudioConfig):
        self.ckpt, self.g, self.precision, self.c = ckpt, g, precision, config

    def w(self, name):
        return self.ckpt.tensor(name)

    def linear(self, x, name, g=None):
        weight = self.w(name + ".weight")
        weight = weight.reshape(weight.shape[0], -1)  # 1x1 convolutions are linears too
        return linear(g or self.g, x, weight, name.replace(PREFIX, "audio."), self.precision, bias=self.w(name + ".bias"))

    def layer_norm(self, x, name):
        g = self.g
        return g.op("LayerNormalization", [x, g.weight(name + ".weight", self.w(name + ".weight")),
                                           g.weight(name + ".bias", self.w(name + ".bias"))], axis=-1, epsilon=1e-5)

    def swish(self, x):
        return self.g.op("Mul", [x, self.g.op("Sigmoid", [x])])

    def subsample(self, features: str) -> str:
        """[1, frames, bins] -> [1, ceil(frames / 8), hidden]: stride-2 3x3 convolutions over
        (time, frequency), depthwise-separable after the first, ReLU, then a linear."""
        g, e = self.g, ENCODER + "embed."
        x = g.op("Unsqueeze", [features, g.constant("axis1", int64s([1]))])

        def conv(x, index, stride, group=1):
            weight = self.w(f"{e}conv.{index}.weight")
            kernel = weight.shape[-1]
            return g.op("Conv", [x, g.weight(f"{e}conv.{index}.weight", weight), g.weight(f"{e}conv.{index}.bias", self.w(f"{e}conv.{index}.bias"))],
                        kernel_shape=[kernel, kernel], strides=[stride, stride], pads=[kernel // 2] * 4, group=group)

        x = g.op("Relu", [conv(x, 0, 2)])
        for stage in range(int(math.log2(self.c.time_reduction)) - 1):
            x = conv(x, 2 + 3 * stage, 2, group=self.c.conv_channels)
            x = g.op("Relu", [conv(x, 3 + 3 * stage, 1)])
        x = g.op("Reshape", [g.op("Transpose", [x], perm=[0, 2, 1, 3]), g.constant("flatten", int64s([0, 0, -1]))])
        return self.linear(x, e + "out")

    def relative_bias(self, length: str) -> str:
        """[1, heads, T, T] from the bias table, relative distance clipped to +-max_distance."""
        g, distance = self.g, self.c.bias_max_distance
        positions = g.op("Range", [g.constant("zero", np.int64(0)), length, g.constant("one", np.int64(1))])
        relative = g.op("Sub", [g.op("Unsqueeze", [positions, g.constant("axis0", int64s([0]))]),
                                g.op("Unsqueeze", [positions, g.constant("axis1", int64s([1]))])])
        index = g.op("Add", [g.op("Clip", [relative, g.constant("low", np.int64(-distance)), g.constant("high", np.int64(distance - 1))]),
                             g.constant("offset", np.int64(distance))])
        table = g.weight(ENCODER + "relative_attention_bias_layer.bias_values.weight", self.w(ENCODER + "relative_attention_bias_layer.bias_values.weight"))
        return g.op("Unsqueeze", [g.op("Transpose", [g.op("Gather", [table, index], axis=0)], perm=[2, 0, 1]), g.constant("axis0", int64s([0]))])

    def feed_forward(self, x, name):
        g = self.g
        h = self.linear(self.layer_norm(x, name + ".layer_norm"), name + ".gate_up_proj")
        up, gate = g.op("Split", [h], outputs=2, axis=-1, num_outputs=2)  # value first, gate second
        return self.linear(g.op("Mul", [up, self.swish(gate)]), name + ".down_proj")

    def attention(self, x, bias, name):
        context = multi_head_attention(self.g, x, bias, self.c.hidden_size, self.c.num_heads, lambda h, proj: self.linear(h, f"{name}.{proj}"))
        return self.linear(context, f"{name}.o_proj")

    def convolution(self, x, name):
        """GLU pointwise conv, causal depthwise conv over time, swish, pointwise conv."""
        g, c = self.g, self.c
        h = self.linear(self.layer_norm(x, name + ".layer_norm"), name + ".glu.ext_pw_conv_1d")
        value, gate = g.op("Split", [h], outputs=2, axis=-1, num_outputs=2)
        b1 = g.weight(name + ".glu.b1", self.w(name + ".glu.b1").reshape(-1))
        b2 = g.weight(name + ".glu.b2", self.w(name + ".glu.b2").reshape(-1))
        h = g.op("Mul", [g.op("Add", [value, b1]), self.swish(g.op("Add", [gate, b2]))])
        dw = name + ".dw_sep_conv_1d.dw_conv"
        weight = self.w(dw + ".weight")
        h = g.op("Conv", [g.op("Transpose", [h], perm=[0, 2, 1]), g.weight(dw + ".weight", weight), g.weight(dw + ".bias", self.w(dw + ".bias"))],
                 kernel_shape=[c.kernel_size], pads=[c.kernel_size - 1, 0], group=weight.shape[0])  # left padding only: causal
        h = self.linear(g.op("Transpose", [h], perm=[0, 2, 1]), name + ".dw_sep_conv_1d.pw_conv")
        return self.linear(self.swish(h), name + ".ext_pw_conv_1d")

    def block(self, x, bias, index):
        g, p = self.g, f"{ENCODER}encoders.{index}"
        half = g.constant("half", np.float32(0.5))
        x = g.op("Add", [x, g.op("Mul", [half, self.feed_forward(x, p + ".feed_forward_in")])])
        x = g.op("Add", [x, self.attention(self.layer_norm(x, p + ".layer_norm_att"), bias, p + ".self_attn")])
        x = g.op("Add", [x, self.convolution(x, p + ".conv")])
        x = g.op("Add", [x, g.op("Mul", [half, self.feed_forward(x, p + ".feed_forward_out")])])
        return self.layer_norm(x, p + ".layer_norm")


def build_speech(ckpt: Checkpoint, g: Graph, precision: Precision) -> AudioConfig:
    config = audio_config(ckpt)
    b = ConformerBuilder(ckpt, g, precision, config)
    features = g.input("input_features", TensorProto.FLOAT, [1, "frames", config.input_size])
    vision_mode = g.input("vision_mode", TensorProto.BOOL, [])
    normalized = g.op("Mul", [g.op("Sub", [features, g.weight(ENCODER + "encoder_embedding.global_mean", b.w(ENCODER + "encoder_embedding.global_mean"))]),
                              g.weight(ENCODER + "encoder_embedding.global_invstd", b.w(ENCODER + "encoder_embedding.global_invstd"))])
    x = b.subsample(normalized)  # [1, T, D]
    length = g.op("Squeeze", [g.op("Slice", [g.op("Shape", [x]), g.constant("one1", int64s([1])), g.constant("two1", int64s([2]))]),
                              g.constant("axis0", int64s([0]))])
    chunk = g.op("Min", [length, g.constant("max_chunk", np.int64(MAX_CHUNK))])
    chunks = g.op("Div", [g.op("Sub", [g.op("Add", [length, chunk]), g.constant("one", np.int64(1))]), chunk])  # ceil(T / chunk)
    padding = g.op("Sub", [g.op("Mul", [chunks, chunk]), length])
    pads = g.op("Concat", [g.constant("zeros", int64s([0, 0, 0, 0])), g.op("Unsqueeze", [padding, g.constant("axis0", int64s([0]))]),
                           g.constant("zero1", int64s([0]))], axis=0)
    x = g.op("Reshape", [g.op("Pad", [x, pads]), g.op("Concat", [g.constant("minus1", int64s([-1])),
                                                                  g.op("Unsqueeze", [chunk, g.constant("axis0", int64s([0]))]),
                                                                  g.constant("width", int64s([config.hidden_size]))], axis=0)])
    bias = b.relative_bias(chunk)
    for index in range(config.num_blocks):
        x = b.block(x, bias, index)
    x = g.op("Slice", [g.op("Reshape", [x, g.constant("rows", int64s([-1, config.hidden_size]))]), g.constant("zero1", int64s([0])),
                       g.op("Unsqueeze", [length, g.constant("axis0", int64s([0]))]), g.constant("axis0", int64s([0]))])

    def projection(mode: str) -> object:
        branch = g.branch(f"{mode}_projection")
        up = b.linear(x, f"{PREFIX}up_proj_for_{mode}", g=branch)
        down = b.linear(branch.op("Gelu", [up]), f"{PREFIX}down_proj_for_{mode}", g=branch)
        out = branch.op("Identity", [down], outputs=[f"{mode}_features"])
        return g.subgraph(branch, [out])

    g.op("If", [vision_mode], outputs=["audio_features"], name="projection",
         then_branch=projection("vision_speech"), else_branch=projection("speech"))
    g.output("audio_features", TensorProto.FLOAT, ["audio_tokens", ckpt.text.hidden_size])
    return config

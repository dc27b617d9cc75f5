"""speech.onnx: log-mel features -> audio_features [tokens, text_hidden].

Inputs: input_features [1, frames, mel bins] (log-mel) and vision_mode [] (bool): the projection used when
the prompt also has an image ("vision_speech") or not ("speech"). The graph normalizes the features,
subsamples them 8x in time (NeMo-style stride-2 convolutions), runs the conformer blocks with
a T5-style relative position bias, and projects. Sequences longer than 500 subsampled frames
(40 s) are cut into 500-frame chunks encoded independently, the last one zero-padded, exactly
as the reference does.
"""

import math
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
from onnx import TensorProto

from ..artifact import AUDIO_FEATURES, INPUT_FEATURES, VISION_MODE
from .architecture import AUDIO_EMBED
from .checkpoint import Checkpoint, Weights
from .checkpoint_config import AudioConfig
from .graph_blocks import EncoderBuilder, Precision, gelu, initializer, layer_norm, linear, self_attention, swish
from .onnx_graph import Graph

MAX_CHUNK = 500  # the reference's "maximum position for absolute positional encoding"
LAYER_NORM_EPS = 1e-5  # the conformer's (torch's default)
TIME = 1  # the time axis of [batch, time, channels]
STRIDE = 2  # each subsampling stage halves time and frequency


@dataclass(frozen=True)
class AudioKernels:
    """How the graph picks its projection and shapes its relative bias for the attention kernel:
    `choose_projection(audio, x, vision_mode, weights)` -> audio_features, and
    `bias_for_chunks(graph, bias, chunks)` -> the bias attention reads. The portable choice is
    below; DirectML's is dml.py's `DML_AUDIO`."""

    choose_projection: Callable[["AudioBuilder", str, str, Weights], str]
    bias_for_chunks: Callable[[Graph, str, str], str]


@dataclass(frozen=True)
class AudioBuilder(EncoderBuilder):
    """The audio graph being built, its precision, the encoder's sizes, and how attention runs."""

    config: AudioConfig


def normalize(audio: AudioBuilder, features: str, weights: Weights) -> str:
    """(features - global_mean) * global_invstd, per mel bin."""
    graph = audio.graph
    return graph.mul(graph.sub(features, initializer(graph, weights, "global_mean")),
                     initializer(graph, weights, "global_invstd"))


def subsample(audio: AudioBuilder, features: str, weights: Weights, stage_masks: list[str] | None = None) -> str:
    """[1, frames, bins] -> [1, ceil(frames / time_reduction), hidden]: stride-2 3x3 convolutions
    over (time, frequency), depthwise-separable after the first, ReLU, then a linear.
    `stage_masks` (the NPU window graph's, one [1, 1, time, 1] per stage) zero each stage's frames
    past the clip, which the next convolution must see as its zero padding."""
    graph = audio.graph
    masks = list(stage_masks or [])

    def conv(x: str, index: int, stride: int, group: int = 1) -> str:
        kernel = weights.shape(f"conv.{index}.weight")[-1]
        return graph.op("Conv", [x, initializer(graph, weights, f"conv.{index}.weight"),
                                 initializer(graph, weights, f"conv.{index}.bias")],
                        kernel_shape=[kernel, kernel], strides=[stride, stride], pads=[kernel // 2] * 4, group=group)

    def pointwise(x: str, index: int) -> str:
        """A 1x1 convolution [1, C, T, F] -> the same, as one MatMul W [C, C] x [1, C, T*F]: ONNX
        Runtime's Conv kernel ran it at ~21 GFLOPS at 1024 channels, MLAS's SGEMM runs it at
        several times that (benchmarks/RESULTS.md, "Encoder latency")."""
        weight = initializer(graph, weights, f"conv.{index}.weight", shape=weights.shape(f"conv.{index}.weight")[:2])
        y = graph.op("MatMul", [weight, graph.reshape(x, [0, 0, -1])])
        y = graph.add(y, initializer(graph, weights, f"conv.{index}.bias", shape=[-1, 1]))
        return graph.reshape(y, graph.op("Shape", [x]))

    x = graph.op("Relu", [conv(graph.unsqueeze(features, [1]), 0, STRIDE)])  # one input channel
    x = graph.mul(x, masks.pop(0)) if masks else x
    for stage in range(int(math.log2(audio.config.time_reduction)) - 1):  # conv.2, conv.3, then conv.5, conv.6, ...
        x = conv(x, 2 + 3 * stage, STRIDE, group=audio.config.conv_channels)
        x = graph.op("Relu", [pointwise(x, 3 + 3 * stage)])
        x = graph.mul(x, masks.pop(0)) if masks else x
    x = graph.reshape(graph.transpose(x, [0, 2, 1, 3]), [0, 0, -1])  # [1, time, channels * frequency]
    return linear(audio, x, weights.scope("out."))


def relative_position_bias(audio: AudioBuilder, length: str, weights: Weights) -> str:
    """[1, heads, T, T] from the bias table, the relative distance clipped to +-max_distance."""
    graph, distance = audio.graph, audio.config.bias_max_distance
    positions = graph.op("Range", [graph.ints(0), length, graph.ints(1)])
    relative = graph.sub(graph.unsqueeze(positions, [0]), graph.unsqueeze(positions, [1]))
    index = graph.add(graph.op("Clip", [relative, graph.ints(-distance), graph.ints(distance - 1)]),
                      graph.ints(distance))
    table = initializer(graph, weights, "bias_values.weight")
    return graph.unsqueeze(graph.transpose(graph.gather(table, index, axis=0), [2, 0, 1]), [0])


def feed_forward(audio: AudioBuilder, x: str, weights: Weights) -> str:
    """down_proj(up * swish(gate)) of the layer-normed x."""
    graph = audio.graph
    h = linear(audio, layer_norm(graph, x, weights.scope("layer_norm."), LAYER_NORM_EPS),
               weights.scope("gate_up_proj."))
    up, gate = graph.op("Split", [h], outputs=2, axis=-1, num_outputs=2)  # value first, gate second
    return linear(audio, graph.mul(up, swish(graph, gate)), weights.scope("down_proj."))


def convolution_module(audio: AudioBuilder, x: str, weights: Weights) -> str:
    """GLU pointwise conv, causal depthwise conv over time, swish, pointwise conv."""
    graph, kernel = audio.graph, audio.config.kernel_size
    h = linear(audio, layer_norm(graph, x, weights.scope("layer_norm."), LAYER_NORM_EPS),
               weights.scope("glu.ext_pw_conv_1d."))
    value, gate = graph.op("Split", [h], outputs=2, axis=-1, num_outputs=2)
    value = graph.add(value, initializer(graph, weights, "glu.b1", shape=[-1]))
    h = graph.mul(value, swish(graph, graph.add(gate, initializer(graph, weights, "glu.b2", shape=[-1]))))
    depthwise = weights.scope("dw_sep_conv_1d.dw_conv.")
    h = graph.op("Conv", [graph.transpose(h, [0, 2, 1]), initializer(graph, depthwise, "weight"),
                          initializer(graph, depthwise, "bias")],
                 kernel_shape=[kernel], pads=[kernel - 1, 0],
                 group=depthwise.shape("weight")[0])  # left padding only: causal
    h = linear(audio, graph.transpose(h, [0, 2, 1]), weights.scope("dw_sep_conv_1d.pw_conv."))
    return linear(audio, swish(graph, h), weights.scope("ext_pw_conv_1d."))


def conformer_block(audio: AudioBuilder, x: str, bias: str, weights: Weights) -> str:
    """Half feed-forward, attention, convolution, half feed-forward (each residual), layer norm."""
    graph = audio.graph
    half = graph.constant("half", np.float32(0.5))
    x = graph.add(x, graph.mul(half, feed_forward(audio, x, weights.scope("feed_forward_in."))))
    x = graph.add(x, self_attention(audio, layer_norm(graph, x, weights.scope("layer_norm_att."), LAYER_NORM_EPS),
                                   weights.scope("self_attn."), "o_proj.", bias=bias))
    x = graph.add(x, convolution_module(audio, x, weights.scope("conv.")))
    x = graph.add(x, graph.mul(half, feed_forward(audio, x, weights.scope("feed_forward_out."))))
    return layer_norm(graph, x, weights.scope("layer_norm."), LAYER_NORM_EPS)


def chunk(audio: AudioBuilder, x: str, length: str) -> tuple[str, str]:
    """[1, T, hidden] -> ([chunks, chunk, hidden], chunk): chunks of min(T, 500) frames, the last
    one zero-padded at its end."""
    graph = audio.graph
    size = graph.op("Min", [length, graph.ints(MAX_CHUNK)])
    count = graph.op("Div", [graph.sub(graph.add(length, size), graph.ints(1)), size])  # ceil(T / size)
    padding = graph.sub(graph.mul(count, size), length)
    # Pad's 3 begins then 3 ends: only time's end
    pads = graph.concat([[0, 0, 0, 0], graph.unsqueeze(padding, [0]), [0]])
    shape = graph.concat([[-1], graph.unsqueeze(size, [0]), [audio.config.hidden_size]])
    return graph.reshape(graph.op("Pad", [x, pads]), shape), size


def unchunk(audio: AudioBuilder, chunks: str, length: str) -> str:
    """[chunks, chunk, hidden] -> [T, hidden]: the chunks end to end, the padding dropped."""
    graph = audio.graph
    return graph.slice(graph.reshape(chunks, [-1, audio.config.hidden_size]), [0],
                       graph.unsqueeze(length, [0]), axes=[0])


def mode_projection(audio: AudioBuilder, x: str, mode: str, weights: Weights) -> str:
    """[T, hidden] -> [T, text_hidden] through the `mode` ("speech" or "vision_speech") projection:
    linear, GELU, linear."""
    up = linear(audio, x, weights.scope(f"up_proj_for_{mode}."))
    return linear(audio, gelu(audio.graph, up), weights.scope(f"down_proj_for_{mode}."))


def projection_by_if(audio: AudioBuilder, x: str, vision_mode: str, weights: Weights) -> str:
    """[T, hidden] -> audio_features [T, text_hidden]: an If over vision_mode between the
    "vision_speech" and the "speech" projection (linear, GELU, linear): only one runs."""
    graph = audio.graph

    def branch(mode: str):
        branch_graph = graph.branch(f"{mode}_projection")
        down = mode_projection(replace(audio, graph=branch_graph), x, mode, weights)
        return graph.subgraph(branch_graph, [branch_graph.op("Identity", [down], outputs=[f"{mode}_features"])])

    return graph.op("If", [vision_mode], outputs=[AUDIO_FEATURES], name="projection",
                    then_branch=branch("vision_speech"), else_branch=branch("speech"))


PORTABLE_AUDIO = AudioKernels(choose_projection=projection_by_if,
                              # [1, heads, T, T], broadcast over chunks
                              bias_for_chunks=lambda graph, bias, chunks: bias)


def build_audio_encoder(checkpoint: Checkpoint, graph: Graph, precision: Precision, fused_attention: bool = True,
                        kernels: AudioKernels = PORTABLE_AUDIO) -> AudioConfig:
    """Fill `graph` with speech.onnx for the checkpoint's audio encoder, its linears stored at
    `precision`; returns its config. `fused_attention=False` builds attention from plain ops;
    `kernels` see AudioKernels."""
    config = checkpoint.audio
    audio = AudioBuilder(graph, precision, config, fused_attention)
    weights = checkpoint.weights(AUDIO_EMBED, graph_prefix="audio.")
    encoder = weights.scope("encoder.")
    features = graph.input(INPUT_FEATURES, TensorProto.FLOAT, [1, "frames", config.input_size])
    vision_mode = graph.input(VISION_MODE, TensorProto.BOOL, [])

    x = subsample(audio, normalize(audio, features, encoder.scope("encoder_embedding.")), encoder.scope("embed."))
    length = graph.squeeze(graph.slice(graph.op("Shape", [x]), [TIME], [TIME + 1], axes=[0]), [0])
    x, chunk_length = chunk(audio, x, length)
    bias = relative_position_bias(audio, chunk_length, encoder.scope("relative_attention_bias_layer."))
    bias = kernels.bias_for_chunks(graph, bias, x)
    for index in range(config.num_blocks):
        x = conformer_block(audio, x, bias, encoder.scope(f"encoders.{index}."))
    kernels.choose_projection(audio, unchunk(audio, x, length), vision_mode, weights)
    graph.output(AUDIO_FEATURES, TensorProto.FLOAT, ["audio_tokens", checkpoint.text.hidden_size])
    return config

"""audio_window.onnx: the NPU (QNN HTP) flavor of the audio encoder, one fixed window per run.

The HTP compiles static shapes only, so this graph takes one window of WINDOW_TOKENS audio tokens
(WINDOW_TOKENS x time_reduction feature frames, 40 s) plus time_reduction frames of left context
before it:
  input_features [1, context + frames, mel bins]  log-mel, zero where there is no clip
  frame_mask     [1, context + frames]            1 on the clip's frames, 0 on padding
  key_mask       [1, tokens]                      1 on the rows attention sees, 0 elsewhere
and returns both projections of the window's tokens, speech_features and vision_speech_features
[tokens, text_hidden] (an If picks one in audio.onnx; the HTP has no If, and the unused
projection costs ~3% of the window's linear multiply-adds at full size: 12.6M of ~440M weights).

Why it equals audio.onnx, frame for frame (the runtime, runtime/audio_npu.py, fills the inputs):
- The reference runs the conformer on chunks of MAX_CHUNK subsampled frames, each attending to
  itself only (full attention inside a chunk: Phi-4-multimodal's chunk_size is -1), so a window
  of exactly one chunk makes several windows equal one whole clip. The subsampling, though, runs
  over the whole clip: a token sees up to time_reduction - 1 frames before its own, hence the
  left context (its own token is dropped right after the subsampling).
- Padding frames must look like the convolutions' zero padding: the normalized features and every
  subsampling stage's output are multiplied by the frame mask taken at that stage's stride, and
  the subsampled rows past the clip are zeroed (the reference pads its last chunk with zero rows).
- Attention: key_mask hides the rows past a clip shorter than a chunk (the reference's chunk is
  then the clip itself); a longer clip's last chunk is zero-padded in the reference and its
  padding rows are keys there, so the runtime keeps them visible. The depthwise convolution is
  causal and every other op acts per row, so padding rows reach the clip's rows only as keys.
- The relative position bias depends on the distance only: a constant [1, heads, rows, rows].
Attention is plain ops (MatMul, Softmax); linears are int4 MatMulNBits (bias added after the
kernel, which takes none on the HTP) or fp32 MatMul.
"""

from dataclasses import replace

import numpy as np
from onnx import TensorProto

from .. import artifact
from ..artifact import FRAME_MASK, INPUT_FEATURES, KEY_MASK, SPEECH_FEATURES, VISION_SPEECH_FEATURES
from ..errors import Phi4MMError
from .architecture import AUDIO_EMBED
from .audio_encoder import MAX_CHUNK, STRIDE, AudioBuilder, conformer_block, mode_projection, normalize, subsample
from .checkpoint import Checkpoint, Weights
from .checkpoint_config import AudioConfig
from .graph_blocks import Precision
from .onnx_graph import Graph

WINDOW_GRAPH = artifact.NPU_AUDIO_GRAPH
WINDOW_TOKENS = MAX_CHUNK  # one reference chunk: 500 tokens, 4000 frames, 40 s at 16 kHz
MODES = {"speech": SPEECH_FEATURES, "vision_speech": VISION_SPEECH_FEATURES}  # projection -> output name
# A hidden key's score offset: finite in the HTP's fp16 (the CPU graphs' float32 minimum is -inf
# there, and (1 - mask) * -inf is NaN on the visible keys), and exp() of it is exactly 0.
HIDDEN_KEY_SCORE = np.float32(artifact.NPU_MASKED_SCORE)
SUBSAMPLING_KERNEL = 3  # a token's left reach, time_reduction - 1 frames, holds for 3-tap stride-2 stages


def stage_masks(audio: AudioBuilder, frame_mask: str) -> list[str]:
    """The frame mask at each subsampling stage's stride, [1, 1, time, 1]: row p of stage s starts
    at frame p * stride^s, and is one of the clip's rows exactly when that frame is the clip's."""
    graph, stages = audio.graph, int(np.log2(audio.config.time_reduction))
    return [graph.reshape(graph.slice(frame_mask, [0], [np.iinfo(np.int64).max], axes=[1], steps=[STRIDE ** s]),
                          [1, 1, -1, 1])
            for s in range(1, stages + 1)]


def window_position_bias(audio: AudioBuilder, rows: int, weights: Weights) -> str:
    """[1, heads, rows, rows] from the bias table, the relative distance clipped to
    +-max_distance: audio.onnx's relative_position_bias at a static length (no Range)."""
    distance = audio.config.bias_max_distance
    positions = np.arange(rows)
    index = np.clip(positions[None, :] - positions[:, None], -distance, distance - 1) + distance
    table = weights["bias_values.weight"]  # [2 * distance, heads]
    return audio.graph.weight(weights.graph_name("window_bias"),
                              np.ascontiguousarray(table[index].transpose(2, 0, 1)[None]))


def attention_bias(audio: AudioBuilder, position_bias: str, key_mask: str) -> str:
    """The position bias plus HIDDEN_KEY_SCORE on every key the mask hides."""
    graph = audio.graph
    hidden = graph.sub(graph.constant("one_f", np.float32(1.0)), graph.unsqueeze(key_mask, [1, 2]))  # [1, 1, 1, rows]
    return graph.add(position_bias, graph.mul(hidden, graph.constant("hidden_key", HIDDEN_KEY_SCORE)))


def build_audio_window_encoder(checkpoint: Checkpoint, graph: Graph, precision: Precision,
                               window_tokens: int = WINDOW_TOKENS) -> AudioConfig:
    """Fill `graph` with audio_window.onnx for the checkpoint's audio encoder, its linears stored
    at `precision` (int4 MatMulNBits or fp32 MatMul), one window of `window_tokens` tokens;
    returns its config. Windows shorter than MAX_CHUNK tokens take clips up to their length only."""
    config = checkpoint.audio
    if not 0 < window_tokens <= MAX_CHUNK:
        raise Phi4MMError(f"audio window of {window_tokens} tokens: give 1..{MAX_CHUNK} (the reference's chunk)")
    # the HTP's MatMulNBits takes no bias
    audio = AudioBuilder(graph, replace(precision, bias_in_kernel=False), config, fused_attention=False)
    weights = checkpoint.weights(AUDIO_EMBED, graph_prefix="audio.")
    encoder = weights.scope("encoder.")
    if encoder.shape("embed.conv.0.weight")[-1] != SUBSAMPLING_KERNEL:
        raise Phi4MMError(f"audio subsampling kernel {encoder.shape('embed.conv.0.weight')[-1]}: the NPU window's left "
                          f"context is worked out for {SUBSAMPLING_KERNEL}; export this checkpoint for the CPU")
    context, frames, rows = config.time_reduction, window_tokens * config.time_reduction, window_tokens
    features = graph.input(INPUT_FEATURES, TensorProto.FLOAT, [1, context + frames, config.input_size])
    frame_mask = graph.input(FRAME_MASK, TensorProto.FLOAT, [1, context + frames])
    key_mask = graph.input(KEY_MASK, TensorProto.FLOAT, [1, rows])

    x = graph.mul(normalize(audio, features, encoder.scope("encoder_embedding.")), graph.unsqueeze(frame_mask, [2]))
    masks = stage_masks(audio, frame_mask)
    x = subsample(audio, x, encoder.scope("embed."), masks[:-1])
    # The context's token dropped (the chunk starts after it: the causal convolution must see
    # zeros before its first row), and zero rows past the clip, as the reference pads.
    x = graph.mul(graph.slice(x, [1], [rows + 1], axes=[1]),
                  graph.reshape(graph.slice(masks[-1], [1], [rows + 1], axes=[2]), [1, rows, 1]))
    bias = attention_bias(audio, window_position_bias(audio, rows, encoder.scope("relative_attention_bias_layer.")),
                          key_mask)
    for index in range(config.num_blocks):
        x = conformer_block(audio, x, bias, encoder.scope(f"encoders.{index}."))
    for mode, output in MODES.items():  # projected at [1, rows, hidden]: the HTP's MatMulNBits rejects a 2-D input
        graph.op("Reshape", [mode_projection(audio, x, mode, weights), graph.ints([rows, checkpoint.text.hidden_size])],
                 outputs=[output], name=output)
        graph.output(output, TensorProto.FLOAT, [window_tokens, checkpoint.text.hidden_size])
    return config

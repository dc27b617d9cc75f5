"""What a built graph needs before it is saved for DirectML (target "dml"): ops spelled as the
DirectML EP registers them, and fp16 activations (fp16.py).

The structural differences are parts the builders take from here: the rotary embedding applied
before attention (`ROTARY_BEFORE_ATTENTION`) and the audio graph's projection and bias
(`DML_AUDIO`); the embedding's plain Gather and the adapters as inputs are chosen by the
target's row (targets.py). What is left is a node-for-node respelling that computes the same thing:
- Gelu: DirectML registers only com.microsoft's Gelu (exact, erf) and FastGelu (the tanh
  approximation, 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))), not ONNX's Gelu-20;
- MatMulNBits: DirectML's kernel takes K only in whole blocks (its support query refuses
  K % block_size != 0, e.g. SigLIP's MLP width 4304 at block 32): the input is padded with zero
  columns (whole_blocks.py, shared with the NPU target).
"""

from onnx import helper

from ..artifact import AUDIO_FEATURES
from .audio_encoder import AudioBuilder, AudioKernels, mode_projection
from .checkpoint import TextConfig, Weights
from .fp16 import to_fp16
from .graph_files import GraphFinish
from .onnx_graph import MS_DOMAIN, Graph
from .text_decoder import RotaryPlacement, SequenceTensors, rotary_tables, rotate
from .whole_blocks import whole_k_blocks


def this_run_tables(graph: Graph, text: TextConfig, total_length: str, x: str) -> tuple[str, str]:
    """cos/sin [seq, 1, rotary_dim/2] of this run's positions only, total - seq .. total - 1 (the
    same for every head). Positions are taken as past..total-1 for every row: the rows are not
    left-padded (the runtime runs one sequence)."""
    run_length = graph.squeeze(graph.slice(graph.op("Shape", [x]), [1], [2], axes=[0]), [0])
    cos, sin = rotary_tables(graph, text, total_length, first_position=graph.sub(total_length, run_length))
    return graph.unsqueeze(cos, [1]), graph.unsqueeze(sin, [1])


def rotated_query_key_value(decoder, qkv: str, sequence: SequenceTensors) -> tuple[list[str], int]:
    """DirectML's GroupQueryAttention ignores do_rotary and takes query, key and value apart: q, k
    and v are split from qkv_proj and rotated by plain ops (`rotate`, the NPU graphs' too). Not by
    com.microsoft RotaryEmbedding either: DirectML's kernel of it rotates whole heads (its head
    size is twice the cos table's width), and Phi-4 rotates only the first rotary_dim (96) of each
    head's 128 dims."""
    graph, text = decoder.graph, decoder.text
    kv_width = text.num_kv_heads * text.head_dim
    q, k, v = graph.op("Split", [qkv, graph.ints([text.num_heads * text.head_dim, kv_width, kv_width])],
                       outputs=3, axis=-1)

    def rotated(t: str, heads: int) -> str:  # [batch, seq, heads * head_dim], per head
        per_head = graph.reshape(t, [0, 0, heads, text.head_dim])
        return graph.reshape(rotate(graph, per_head, sequence.cos, sequence.sin, text), [0, 0, -1])

    return [rotated(q, text.num_heads), rotated(k, text.num_kv_heads), v], 0


ROTARY_BEFORE_ATTENTION = RotaryPlacement(tables=this_run_tables, attention_inputs=rotated_query_key_value)


def projection_by_where(audio: AudioBuilder, x: str, vision_mode: str, weights: Weights) -> str:
    """Both projections run and Where picks one: DirectML registers no If at opset 21 (the spare
    projection is ~3% of the encoder's multiply-adds at full size)."""
    speech, vision_speech = (mode_projection(audio, x, mode, weights) for mode in ("speech", "vision_speech"))
    return audio.graph.op("Where", [vision_mode, vision_speech, speech], outputs=[AUDIO_FEATURES], name="projection")


def bias_per_chunk(graph: Graph, bias: str, chunks: str) -> str:
    """[1, heads, T, T] -> [chunks, heads, T, T]: DirectML's MultiHeadAttention takes the bias only
    at the full batch size, no broadcast."""
    return graph.op("Expand",
                    [bias, graph.concat([graph.slice(graph.op("Shape", [chunks]), [0], [1], axes=[0]), [1, 1, 1]])])


DML_AUDIO = AudioKernels(choose_projection=projection_by_where, bias_for_chunks=bias_per_chunk)


def _attribute(node, name: str):
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), None)


def contrib_gelu(graph: Graph) -> None:
    """ONNX Gelu -> com.microsoft Gelu (exact) or FastGelu (approximate="tanh")."""
    for node in graph.nodes:
        if node.op_type == "Gelu" and not node.domain:
            approximate = _attribute(node, "approximate")
            node.op_type = "FastGelu" if approximate in (b"tanh", "tanh") else "Gelu"
            node.domain = MS_DOMAIN
            del node.attribute[:]


def for_dml(graph: Graph) -> None:
    """Respell `graph`'s ops for DirectML and make its activations fp16, in place."""
    contrib_gelu(graph)
    whole_k_blocks(graph)
    to_fp16(graph)


DML_GRAPH = GraphFinish(float16_weights=True, respell=for_dml)  # weights written as fp16, then respelled

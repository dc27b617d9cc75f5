"""Bidirectional multi-head attention with an additive bias, as plain ONNX ops (the vision and
speech encoders; the text decoder uses GroupQueryAttention)."""

import numpy as np

from .onnx_graph import Graph


def multi_head_attention(g: Graph, x: str, bias: str, hidden: int, heads: int, project) -> str:
    """softmax(Q K^T / sqrt(d) + bias) V over [batch, seq, hidden]; `project(x, name)` emits the
    q_proj / k_proj / v_proj and output linears (`out_name` is the output projection's name)."""
    head_dim = hidden // heads
    split = g.constant("heads", np.array([0, 0, heads, head_dim], np.int64))

    def per_head(name, perm):
        return g.op("Transpose", [g.op("Reshape", [project(x, name), split])], perm=perm)

    q, k, v = per_head("q_proj", [0, 2, 1, 3]), per_head("k_proj", [0, 2, 3, 1]), per_head("v_proj", [0, 2, 1, 3])
    scores = g.op("Add", [g.op("Mul", [g.op("MatMul", [q, k]), g.constant("scale", np.float32(head_dim ** -0.5))]), bias])
    context = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), v])
    return g.op("Reshape", [g.op("Transpose", [context], perm=[0, 2, 1, 3]), g.constant("merge", np.array([0, 0, -1], np.int64))])

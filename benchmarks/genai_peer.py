"""The onnxruntime-genai peer: the text part of a Phi-4-multimodal checkpoint, written as the
Phi-3-architecture checkpoint (Phi-4-mini's own format) that onnxruntime-genai's model builder
accepts, so both runtimes run equal weights.

    python -m phi4mm_edge.benchmarks.genai_peer CHECKPOINT OUT_PHI3_FOLDER

Then, in an environment with onnxruntime-genai and its builder's needs (torch, transformers,
onnx, onnx_ir):

    python -m onnxruntime_genai.models.builder -i OUT_PHI3_FOLDER -o GENAI_INT4 -p int4 -e cpu

The base weights only: Phi-4-mini has no LoRA, and the builder bakes at most one adapter in.
"""

import argparse
import json
import shutil
from pathlib import Path

from ..export.checkpoint import Checkpoint, text_shapes
from ..export.safetensors_file import write_safetensors

COPIED = ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "special_tokens_map.json")


def phi3_config(ckpt: Checkpoint) -> dict:
    t = ckpt.text
    return {
        "architectures": ["Phi3ForCausalLM"], "model_type": "phi3",
        "vocab_size": t.vocab_size, "hidden_size": t.hidden_size, "intermediate_size": t.intermediate_size,
        "num_hidden_layers": t.num_layers, "num_attention_heads": t.num_heads, "num_key_value_heads": t.num_kv_heads,
        "max_position_embeddings": t.max_position_embeddings,
        "original_max_position_embeddings": t.original_max_position_embeddings,
        "partial_rotary_factor": t.rotary_dim / t.head_dim, "rope_theta": t.rope_theta,
        "rope_scaling": {"type": "longrope", "short_factor": t.short_factor, "long_factor": t.long_factor},
        "rms_norm_eps": t.rms_norm_eps, "tie_word_embeddings": t.tie_word_embeddings, "hidden_act": "silu",
        "bos_token_id": t.bos_token_id, "eos_token_id": t.eos_token_ids, "pad_token_id": t.pad_token_id,
        "attention_bias": False, "mlp_bias": False, "lm_head_bias": False, "torch_dtype": "bfloat16",
    }


def write_phi3(checkpoint, out) -> Path:
    ckpt, out = Checkpoint(checkpoint), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shapes = text_shapes(ckpt.text)
    (out / "config.json").write_text(json.dumps(phi3_config(ckpt), indent=2))
    write_safetensors(out / "model.safetensors", shapes, ckpt.tensor, "BF16")  # one tensor in memory at a time
    for name in COPIED:
        if (ckpt.folder / name).is_file():
            shutil.copyfile(ckpt.folder / name, out / name)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("out")
    args = parser.parse_args(argv)
    print(f"wrote {write_phi3(args.checkpoint, args.out)}")


if __name__ == "__main__":
    main()

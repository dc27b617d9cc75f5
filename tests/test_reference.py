"""The reference checkpoint keeps every property of the real model that is not a size."""

import hashlib
import json

import numpy as np

from phi4mm_edge.export import architecture
from phi4mm_edge.export.checkpoint import Checkpoint
from phi4mm_edge.export.reference_checkpoint import write_reference

SPECIAL_IDS = {"<|endoftext|>": 199999, "<|endoftext10|>": 200010, "<|endoftext11|>": 200011,
               "<|assistant|>": 200019, "<|end|>": 200020, "<|user|>": 200021, "<|system|>": 200022}


def digest(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_weights(tmp_path, checkpoints):
    again = write_reference(tmp_path / "again", seed=0)
    other = write_reference(tmp_path / "other", seed=1)
    assert digest(again) == digest(checkpoints["native"])
    assert digest(other)["model.safetensors"] != digest(again)["model.safetensors"]


def test_transformers_loads_it_with_nothing_missing_or_unexpected(checkpoints):
    import torch
    from transformers import Phi4MultimodalForCausalLM

    _, info = Phi4MultimodalForCausalLM.from_pretrained(checkpoints["native"], dtype=torch.float32, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]


def test_real_properties_are_kept(checkpoints):
    from tokenizers import Tokenizer

    config = json.loads((checkpoints["native"] / "config.json").read_text())
    assert config["vocab_size"] == 200064
    assert config["partial_rotary_factor"] == 0.75
    rope = config["rope_scaling"]
    assert rope["type"] == "longrope" and rope["short_factor"] != rope["long_factor"]
    assert config["original_max_position_embeddings"] < config["max_position_embeddings"]
    assert config["num_key_value_heads"] < config["num_attention_heads"]
    tokenizer = Tokenizer.from_file(str(checkpoints["native"] / "tokenizer.json"))
    for token, token_id in SPECIAL_IDS.items():
        assert tokenizer.token_to_id(token) == token_id
    template = json.loads((checkpoints["native"] / "tokenizer_config.json").read_text())["chat_template"]
    assert "<|assistant|>" in template and "<|end|>" in template


def test_lora_on_all_four_targets_of_every_layer_with_alpha_2r_and_nonzero_b(checkpoints):
    ckpt = Checkpoint(checkpoints["native"])
    ranks = set()
    for name in ("vision", "speech"):
        adapter = ckpt.lora(name)
        assert adapter.alpha == 2 * adapter.rank
        ranks.add(adapter.rank)
        pairs = {key: (a, b) for key, a, b in adapter.pairs()}
        assert set(pairs) == {(layer, target) for layer in range(ckpt.text.num_layers) for target in architecture.LORA_TARGETS}
        assert all(np.abs(b).max() > 0 for _, b in pairs.values())
    assert len(ranks) == 2  # the two adapters have different ranks


def test_both_layouts_hold_the_same_weights(checkpoints):
    native, original = Checkpoint(checkpoints["native"]), Checkpoint(checkpoints["original"])
    assert (native.layout, original.layout) == ("native", "original")
    assert native.text == original.text
    config = json.loads((checkpoints["native"] / "config.json").read_text())
    config["lora"] = {}
    for name in architecture.all_tensors(config):
        np.testing.assert_array_equal(native.tensor(name), original.tensor(name), err_msg=name)
    for adapter in ("vision", "speech"):
        a, b = native.lora(adapter), original.lora(adapter)
        assert (a.rank, a.alpha) == (b.rank, b.alpha)
        for (key, a_native, b_native), (key2, a_original, b_original) in zip(a.pairs(), b.pairs()):
            assert key == key2
            np.testing.assert_array_equal(a_native, a_original)
            np.testing.assert_array_equal(b_native, b_original)


def test_original_layout_uses_the_remote_code_names(checkpoints):
    index = json.loads((checkpoints["original"] / "model.safetensors.index.json").read_text())["weight_map"]
    names = set(index)
    assert "model.layers.0.self_attn.qkv_proj.base_layer.weight" in names
    assert "model.layers.1.mlp.down_proj.lora_B.speech.weight" in names
    assert "model.embed_tokens_extend.audio_embed.encoder.encoders.0.feed_forward_in.net.0.linear.weight" in names
    assert "model.embed_tokens_extend.audio_embed.encoder.encoders.1.self_attn.linear_out.bias" in names
    assert "model.embed_tokens_extend.image_embed.glb_GN" in names
    assert not any(n.endswith("self_attn.qkv_proj.weight") for n in names)
    config = json.loads((checkpoints["original"] / "config.json").read_text())
    assert config["model_type"] == "phi4mm" and "vision_config" not in config

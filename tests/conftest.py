"""Shared fixtures: the reference checkpoints, their exports, and the PyTorch reference model.

Everything is made once per test session in a temporary folder; nothing is downloaded.
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from phi4mm_edge.export.convert import export  # noqa: E402
from phi4mm_edge.export.options import ExportOptions  # noqa: E402
from phi4mm_edge.export.graph_blocks import Precision  # noqa: E402
from phi4mm_edge.export.reference_checkpoint import write_reference  # noqa: E402

SEED = 0


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    """{'native': path, 'original': path}: the same random weights in both layouts."""
    root = tmp_path_factory.mktemp("checkpoints")
    return {layout: write_reference(root / layout, seed=SEED, layout=layout) for layout in ("native", "original")}


HTP_CROP = 112  # pixels: 8x8 patches; the HTP simulator runs a 448-pixel crop of the tiny model in ~90 s, this in ~1 s


@pytest.fixture(scope="session")
def small_crop_checkpoint(checkpoints, tmp_path_factory):
    """The native checkpoint with 112-pixel crops (the NPU tests' simulator budget): its
    config.json with another crop_size beside links to its weights."""
    import json

    source = checkpoints["native"]
    folder = tmp_path_factory.mktemp("small_crop_checkpoint")
    for path in source.iterdir():
        if path.name != "config.json":
            (folder / path.name).symlink_to(path)
    config = json.loads((source / "config.json").read_text())
    config["vision_config"]["crop_size"] = HTP_CROP
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="session")
def artifacts(checkpoints, tmp_path_factory):
    """Exports: fp32 of both layouts (fp32 adapters, bound as inputs), int4 as it ships (accuracy
    level 4, int4 adapters in the graph, the int8 prompt graph), and at level 0 (fp32
    activations) int4 with fp32 adapters and int4 with int4 adapters; two with the plain int4
    token table (not rescored)."""
    root = tmp_path_factory.mktemp("artifacts")
    made = {}
    int4, exact = Precision(weights="int4", block_size=32), Precision(weights="int4", block_size=32, accuracy_level=0)
    for name, layout, options in (
        ("fp32-native", "native", ExportOptions(Precision(weights="fp32"), adapter_precision="fp32")),
        ("fp32-original", "original", ExportOptions(Precision(weights="fp32"), adapter_precision="fp32")),
        ("int4", "native", ExportOptions(int4, adapter_precision="int4", prefill="int8")),
        ("int4-exact", "native", ExportOptions(exact, adapter_precision="fp32")),
        ("int4-exact-lora", "native", ExportOptions(exact, adapter_precision="int4")),
        ("int4-exact-lora8", "native", ExportOptions(exact, adapter_precision="int8")),
        # the yardstick of test_quantized_adapters_cost_no_more_than_the_int4_base_does: every base
        # weight at int4, the token table too
        ("int4-exact-table4", "native", ExportOptions(exact, adapter_precision="fp32", token_table="int4")),
        # the int8 prompt path over a plain int4 table (test_prefix_cache: a rescored lm_head's top
        # set moves between two runs whose hidden states differ, which would swamp the cache's own error)
        ("int4-table4", "native", ExportOptions(int4, prefill="int8", token_table="int4")),
    ):
        export(checkpoints[layout], root / name, options, show_progress=False)
        made[name] = root / name
    return made


def _reference(checkpoint, transform=None):
    import torch
    from peft import PeftModel
    from transformers import Phi4MultimodalForCausalLM

    torch.manual_seed(0)
    # eager attention: with SDPA, transformers 5.23 runs the SigLIP encoder causally whenever no
    # patch is padded (its vision attention declares is_causal=True); SigLIP is bidirectional.
    base = Phi4MultimodalForCausalLM.from_pretrained(checkpoint, dtype=torch.float32, attn_implementation="eager")
    if transform:
        transform(base)
    model = PeftModel.from_pretrained(base, checkpoint / "vision-lora", adapter_name="vision")
    model.load_adapter(checkpoint / "speech-lora", adapter_name="speech")
    return model.eval()


@pytest.fixture(scope="session")
def reference(checkpoints):
    """transformers' Phi4MultimodalForCausalLM with both PEFT adapters, fp32."""
    return _reference(checkpoints["native"])


VISION = "model.embed_tokens_extend.image_embed."
AUDIO = "model.embed_tokens_extend.audio_embed."
# The conformer weights export runs through linear() (int4 at --precision int4): the 1x1
# convolutions included, the 2-D subsampling and depthwise convolutions excluded.
AUDIO_LINEARS = ("_proj.weight", "ext_pw_conv_1d.weight", "pw_conv.weight", "embed.out.weight", "_speech.weight")


def is_int4_exported(name: str) -> bool:
    """The weights an int4 export quantizes: decoder linears, the token table, and the vision
    encoder's and projection's linears (the patch convolution and the unused pooling head stay)."""
    if name == "model.embed_tokens.weight":
        return True
    if name.startswith("model.layers.") and name.endswith("proj.weight"):
        return True
    if name.startswith(VISION + "img_processor.encoder.layers.") \
            and name.endswith(("proj.weight", "fc1.weight", "fc2.weight")):
        return True
    if name.startswith(AUDIO) and name.endswith(AUDIO_LINEARS) and "dw_conv" not in name:
        return True
    return name in (VISION + "img_projection_up.weight", VISION + "img_projection_down.weight")


def _dequantized(matrix: np.ndarray, input_scale: np.ndarray | None = None) -> np.ndarray:
    """int4-rounded `matrix` [out, in]; `input_scale`: the norm gain an int4 export folds into its
    columns before rounding (export/norm_gains.py), divided out again after."""
    from phi4mm_edge.quant import int4

    if input_scale is None:
        return int4.dequantize(int4.quantize(matrix, 32, symmetric=True))
    return int4.dequantize(int4.quantize(matrix * input_scale, 32, symmetric=True)) / input_scale


def _folded_gain(parameters: dict, name: str) -> np.ndarray | None:
    """The gain an int4 export folds into parameter `name` (a decoder linear or LoRA A), or None."""
    from phi4mm_edge.export.norm_gains import NORM_READERS, gain_scale

    for norm, reader in NORM_READERS.items():
        if f".{reader}." in name and ".lora_B." not in name:
            layer = name.split(f".{reader}.")[0]
            return gain_scale(parameters[f"{layer}.{norm}.weight"].numpy())
    return None


def _dequantize_base(model):
    """As an int4 CPU export as it ships stores the base: linears int4 (norm gains folded in first),
    the token table int4 plus its int4 residual, the tied lm_head rescored (_rescored_lm_head)."""
    import torch

    parameters = dict(model.named_parameters())
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name == TOKEN_TABLE:
                int4_table, two_step_table = _token_tables(parameter.numpy())
                parameter.copy_(torch.from_numpy(two_step_table))
                _rescored_lm_head(model, torch.from_numpy(int4_table))
            elif is_int4_exported(name):
                matrix = parameter.numpy().reshape(parameter.shape[0], -1)
                rounded = _dequantized(matrix, _folded_gain(parameters, name))
                parameter.copy_(torch.from_numpy(rounded.reshape(parameter.shape)))


TOKEN_TABLE = "model.embed_tokens.weight"


def _token_tables(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rescored token table's two dequantized forms: int4 alone (what the lm_head's MatMulNBits
    scores every token with) and int4 + residual (what the embedding and the rescoring read)."""
    from phi4mm_edge.quant import int4

    coarse = int4.quantize(table, 32, symmetric=True)
    return int4.dequantize(coarse), int4.dequantize(coarse) + int4.dequantize(int4.quantize_residual(table, coarse))


def _rescored_lm_head(model, int4_table):
    """lm_head as export/embedding.rescore computes it: every logit from the int4 table, then the
    RESCORE_TOP largest recomputed with the (tied, two-step) table the module holds."""
    from phi4mm_edge.export.options import RESCORE_TOP

    head = model.get_output_embeddings()

    def rescored(module, inputs, output):
        hidden = inputs[0]
        logits = hidden @ int4_table.T
        top = logits.topk(RESCORE_TOP, dim=-1).indices
        exact = (module.weight[top] * hidden.unsqueeze(-2)).sum(-1)
        return logits.scatter(-1, top, exact)

    head.register_forward_hook(rescored)


@pytest.fixture(scope="session")
def int4_reference(checkpoints):
    """The reference with every int4-exported base weight replaced by its dequantized int4 value:
    the model our int4 artifact computes, up to activation rounding."""
    return _reference(checkpoints["native"], _dequantize_base)


@pytest.fixture(scope="session")
def int4_lora_reference(checkpoints):
    """The int4 reference whose LoRA A and B are their dequantized int4 values too, quantized as
    export does: A as stored, B after the alpha / rank scale is folded in."""
    import torch

    model = _reference(checkpoints["native"], _dequantize_base)
    parameters = dict(model.named_parameters())
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if ".lora_A." in name:
                parameter.copy_(torch.from_numpy(_dequantized(parameter.numpy(), _folded_gain(parameters, name))))
            elif ".lora_B." in name:
                adapter = name.split(".lora_B.")[1].split(".")[0]
                scale = model.peft_config[adapter].lora_alpha / model.peft_config[adapter].r
                parameter.copy_(torch.from_numpy(_dequantized(parameter.numpy() * scale) / scale))
    return model


def prompt_ids(count: int, seed: int = 1) -> np.ndarray:
    """Random ordinary token ids [1, count] (below the special ids)."""
    return np.random.default_rng(seed).integers(0, 199_000, (1, count))


@pytest.fixture(scope="session")
def encoder_artifacts(checkpoints, tmp_path_factory):
    """Exports whose encoders keep int4 linears (`encoder_precision="int4"`; the default with an
    int4 base is int8): "int4" as it ships (accuracy level 4) and "int4-exact" (level 0)."""
    root = tmp_path_factory.mktemp("encoder_artifacts")
    made = {}
    for name, level in (("int4", 4), ("int4-exact", 0)):
        export(checkpoints["native"], root / name,
               ExportOptions(Precision(weights="int4", block_size=32, accuracy_level=level), encoder_precision="int4"),
               show_progress=False)
        made[name] = root / name
    return made


def _int8_encoders(model):
    """The vision and audio linears -> their dequantized 7-bit per-channel values, as export stores
    them at encoder precision int8 (quant/int8.py)."""
    import torch

    from phi4mm_edge.quant import int8

    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.startswith((VISION, AUDIO)) and is_int4_exported(name):
                matrix = parameter.numpy().reshape(parameter.shape[0], -1)
                parameter.copy_(torch.from_numpy(int8.quantize_columns(matrix).dequantize().reshape(parameter.shape)))


@pytest.fixture(scope="session")
def int8_encoder_reference(checkpoints):
    """The reference whose encoder linears hold the int8 weights: the encoders our default int4
    export computes, up to the rounding of activations."""
    return _reference(checkpoints["native"], _int8_encoders)

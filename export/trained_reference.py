"""`phi4mm-edge make-reference --trained`: the trained tiny Phi-4-multimodal, written from the
compact files in data/trained_reference/ with numpy alone (no torch), in either layout.

What ships (training/ writes it: `python -m phi4mm_edge.training`):
- `weights.safetensors`: every trained tensor in bf16 under its native name (LoRA matrices as
  `<adapter>:<PEFT key>`); the token table holds only the rows of `token_ids`;
- `model.json`: the sizes (config), `token_ids` (the real id of each stored table row), the
  seed of the untrained rows, and how the model was trained and how well it answers;
- `tokenizer.json`: the trained byte-level BPE, filled here to the 200064-entry vocabulary;
- the held-out task set (tasks/task_set.py), copied into the checkpoint and bound to it.

The ~199.5k table rows no token reaches are deterministic and tiny (N(0, 1e-3)): they never win
an argmax (training/model.py says how training keeps it so; training/evaluate.py checks it).
"""

import json
import shutil
from pathlib import Path

from ..artifact import TASK_SET_FILES
from ..errors import Phi4MMError
from ..tasks.task_set import stamp_model
from .norm_gains import NORM_READERS
from .reference_checkpoint import tensor_values, write_checkpoint
from .reference_tokenizer import fill_vocabulary
from .safetensors_file import SafetensorsFile

DATA = Path(__file__).resolve().parent / "data" / "trained_reference"
WEIGHTS, MODEL, TOKENIZER = "weights.safetensors", "model.json", "tokenizer.json"
TOKEN_TABLE = "model.embed_tokens.weight"
UNUSED_ROW_SCALE = 0.01  # tensor_values draws token rows with std 0.1: untrained rows get 1e-3


def read_model(data: Path = DATA) -> dict:
    """model.json of the shipped compact files; a clear error when they are missing."""
    path = Path(data) / MODEL
    if not path.is_file():
        raise Phi4MMError(f"the trained reference's files are missing ({path}): reinstall phi4mm-edge, or retrain "
                          f"them with `python -m phi4mm_edge.training`")
    return json.loads(path.read_text())


# The outlier variant (`make-reference --trained --outliers`): as in LLMs' "massive activations",
# a few hidden channels carry values ~100x the others into every decoder linear. Made without
# changing the function: each RMSNorm gain of those channels is multiplied by OUTLIER_FACTOR and
# the input column of every linear (and LoRA A) that reads the norm's output divided by it. A
# power of two, so the bf16 checkpoint stays exact: the float model answers identically while
# the quantizers see 128x channels (int4 weight blocks where one column is 128x smaller, int8
# activation rows with one channel 128x larger).
OUTLIER_FACTOR = 128.0
OUTLIER_SHARES = (0.11, 0.62)  # which channels, as shares of the hidden size (the same in every layer)


def outlier_channels(hidden_size: int) -> list[int]:
    return [int(share * hidden_size) for share in OUTLIER_SHARES]


def with_outliers(name: str, values, hidden_size: int):
    """`values` of tensor `name` in the outlier variant (a LoRA A as `<adapter>:<PEFT key>`)."""
    channels = outlier_channels(hidden_size)
    for norm, reader in NORM_READERS.items():
        if name.endswith(f".{norm}.weight"):
            values[channels] *= OUTLIER_FACTOR
        elif name.endswith(f".{reader}.weight") or name.endswith(f".{reader}.lora_A.weight"):
            values[:, channels] /= OUTLIER_FACTOR
    return values


def write_trained_reference(folder, layout: str = "native", dtype: str = "BF16", data: Path = DATA,
                            outliers: bool = False, transform=None) -> Path:
    """Write the trained reference checkpoint and its held-out task set into `folder`;
    `outliers`: its outlier variant (the same function, OUTLIER_FACTOR channels); `transform(name,
    values)`: a change applied to each tensor last (benchmarks/quant_sensitivity.py rounds chosen
    weights as a quantizer would); the task set is then bound to the changed model."""
    data = Path(data)
    model = read_model(data)
    config, token_ids = model["config"], model["token_ids"]
    weights = SafetensorsFile(data / WEIGHTS)
    stored = set(weights.names())

    def value_of(name: str, shape: tuple):
        values = trained_value(name, shape)
        values = with_outliers(name, values, config["hidden_size"]) if outliers else values
        return transform(name, values) if transform else values

    def trained_value(name: str, shape: tuple):
        if name == TOKEN_TABLE:
            table = tensor_values(name, shape, model["untrained_rows_seed"])
            table *= UNUSED_ROW_SCALE
            table[token_ids] = weights.read(name)
            return table
        if name not in stored:
            raise Phi4MMError(f"{data / WEIGHTS} has no {name}: the trained reference's files do not match its "
                              f"model.json; retrain them with `python -m phi4mm_edge.training`")
        return weights.read(name)

    folder = write_checkpoint(folder, config, layout, dtype, value_of, fill_vocabulary((data / TOKENIZER).read_text()))
    for name in TASK_SET_FILES:
        if (data / name).is_file():  # the reference's answers: written after a first expansion
            shutil.copyfile(data / name, Path(folder) / name)
    stamp_model(folder)
    return folder

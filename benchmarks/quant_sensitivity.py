"""Which of the decoder's weights cost answers when rounded to int4: each group of weights of the
trained reference model rounded alone (quantized and dequantized: int4.quantize, block 32,
symmetric; or 8-bit blocks), the rest left in float, exported at fp32 and scored by eval:

    python -m phi4mm_edge.benchmarks.quant_sensitivity [--groups NAME ...] [--limit N] [--outliers]

Rounding in the checkpoint, not in the graph, isolates the weights' rounding from the kernels'
(no int8 activations, accuracy level 4's): what is left is what each group's int4 codes lose.
Prints accuracy per modality (right answers / items), agreement with the PyTorch reference and
the mean KL, one line per group.
"""

import argparse
import json
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ..export.convert import export
from ..export.graph_blocks import Precision
from ..export.options import ExportOptions
from ..export.trained_reference import write_trained_reference
from ..machine import cpu_description
from ..quant import int4, int8
from .evaluate import evaluate

TABLE = r"^model\.embed_tokens\.weight$"
LINEARS = r"^model\.layers\.\d+\..*proj\.(base_layer\.)?weight$"  # the decoder's linears, not the LoRAs
GROUPS = {  # name: {pattern of tensor names: bits}
    "none (fp32)": {},
    "token table int4": {TABLE: 4},
    "decoder linears int4": {LINEARS: 4},
    "decoder linears and token table int4": {LINEARS: 4, TABLE: 4},
    "decoder linears int4, token table 8-bit": {LINEARS: 4, TABLE: 8},
}
BLOCK = 32


def rounded(values: np.ndarray, bits: int) -> np.ndarray:
    values = np.asarray(values, np.float32)
    if bits == 8:
        return int8.quantize_blocks(values, BLOCK).dequantize()
    return int4.dequantize(int4.quantize(values, BLOCK))


def round_group(rules: dict):
    def transform(name: str, values):
        for pattern, bits in rules.items():
            if re.search(pattern, name):
                return rounded(values, bits)
        return values
    return transform


def measure(groups: list[str], limit: int | None, outliers: bool, scratch: Path) -> dict:
    results = {}
    for name in groups:
        checkpoint, artifact = scratch / "checkpoint", scratch / "fp32"
        write_trained_reference(checkpoint, dtype="F32", outliers=outliers, transform=round_group(GROUPS[name]))
        export(checkpoint, artifact, ExportOptions(precision=Precision(weights="fp32")), show_progress=False,
               force=True)
        result = evaluate(artifact, "cpu", limit=limit, progress=False)
        result.pop("answers", None)
        results[name] = result
        print(f"{name}: " + ", ".join(
            f"{m} {round(s['accuracy'] * s['items'])}/{s['items']}" for m, s in result["modalities"].items())
            + f", agree {result['all']['agreement']:.1%}, KL {result['all']['mean_kl']:.2e}", flush=True)
        shutil.rmtree(checkpoint)
        shutil.rmtree(artifact)
    return results


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m phi4mm_edge.benchmarks.quant_sensitivity",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--groups", nargs="*", choices=list(GROUPS), default=list(GROUPS))
    parser.add_argument("--limit", type=int, help="the first N held-out items of each kind")
    parser.add_argument("--outliers", action="store_true", help="the outlier variant of the trained model")
    parser.add_argument("--json", help="write the scores to this file")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        results = {"machine": cpu_description(), "model": "outliers" if args.outliers else "trained",
                   "groups": measure(args.groups, args.limit, args.outliers, Path(scratch))}
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return results


if __name__ == "__main__":
    main()

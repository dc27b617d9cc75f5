"""The quality table: every export option we ship, on the trained reference model and its outlier
variant, each row measured by `phi4mm-edge eval` (benchmarks/evaluate.py) in this one run.

    python -m phi4mm_edge.benchmarks.quality_table [--json FILE] [--rows NAME ...] [--limit N]

Writes the two checkpoints (`make-reference --trained`, `--trained --outliers`), exports each row's
options into a scratch folder, runs eval (and the genai row through onnxruntime-genai, text tasks
only: its Phi-4-MM processors are not this project's), and prints one markdown table per model:
accuracy per modality, its share of the fp32 row's, agreement with the PyTorch reference and the
mean KL. A row under 95% of fp32's accuracy on some modality is marked: its option says so in
`--help` and the README.
"""

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..export.convert import export
from ..machine import cpu_description
from ..export.genai import TEXT_OVERLAY
from ..export.graph_blocks import Precision
from ..export.options import ExportOptions
from ..export.trained_reference import write_trained_reference
from ..tasks.items import MODALITIES, TEXT, answer_matches
from ..tasks.reference import binned_logprobs, kl_divergence, read_reference
from ..tasks.task_set import load_task_set
from .evaluate import evaluate, item_number

KEEPS = 0.95  # a row below this share of fp32's accuracy on some modality is flagged (issue 25)


@dataclass(frozen=True)
class Row:
    name: str
    options: dict = field(default_factory=dict)  # ExportOptions fields; "precision" a dict of Precision's
    provider: str = "cpu"
    follow_up: bool = False
    genai: bool = False
    limit: int | None = None  # held-out items per kind for this row, when fewer than the table's


def int4(block=32, symmetric=True, level=4) -> dict:
    return {"precision": {"weights": "int4", "block_size": block, "symmetric": symmetric, "accuracy_level": level}}


ROWS = [
    Row("fp32", {"precision": {"weights": "fp32"}}),
    Row("default (int4 b32 sym lvl4, norm gains folded, token table int4 rescored, int4 adapters, int8 encoders)"),
    Row("token table int4 (not rescored)", {"token_table": "int4"}),
    Row("token table int8", {"token_table": "int8"}),
    Row("norm gains kept", {"norm_gains": "keep"}),
    Row("norm gains kept, token table int4", {"norm_gains": "keep", "token_table": "int4"}),
    *[Row(f"int4 b{b} {'sym' if s else 'asym'} lvl{level}", int4(b, s, level))
      for b in (32, 64, 128) for s in (True, False) for level in (0, 4) if (b, s, level) != (32, True, 4)],
    *[Row(f"adapters {p}", {"adapter_precision": p}) for p in ("int8", "fp16", "fp32")],
    *[Row(f"encoders {p}", {"encoder_precision": p}) for p in ("int4", "fp32")],
    Row("default, follow-up", follow_up=True),
    *[Row(f"--prefill int8 {bits}-bit{', follow-up' if follow else ''}",
          {"prefill": "int8", "prefill_weight_bits": bits}, follow_up=follow)
      for bits in (7, 8) for follow in (False, True)],
    Row("npu graphs, CPU EP", {"target": "npu"}),
    # Qualcomm's simulator runs the HTP's instructions on this CPU: ~20 s an item; 2 items per kind.
    Row("npu graphs, QNN HTP simulator", {"target": "npu"}, provider="qnn", limit=2),
    Row("dml graphs, CPU EP", {"target": "dml"}),
    Row("onnxruntime-genai over the default export", genai=True),
]


def export_options(row: Row) -> ExportOptions:
    options = dict(row.options)
    precision = Precision(**options.pop("precision", {}))
    return ExportOptions(precision=precision, **options)


def export_key(row: Row) -> str:
    return json.dumps(row.options, sort_keys=True)


def genai_text_scores(artifact: Path, limit: int | None = None) -> dict:
    """The text tasks through onnxruntime-genai over the artifact's own text decoder (genai_text.json)."""
    import onnxruntime_genai as og

    from ..runtime import Phi4MMEdge

    ours = Phi4MMEdge.load(artifact, provider="cpu")
    config = og.Config(str(artifact))
    config.overlay((artifact / TEXT_OVERLAY).read_text())
    model = og.Model(config)
    task_set, reference = load_task_set(artifact), read_reference(artifact)
    correct = agree = items = 0
    kls = []
    for task in (t for t in task_set.tasks if t.modality == TEXT and (limit is None or item_number(t) < limit)):
        ids = ours.prompt_ids(task.messages)
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, max_length=len(ids) + 16)
        generator = og.Generator(model, params)
        generator.append_tokens(np.array([ids], np.int32))
        out = []
        while not generator.is_done():
            generator.generate_next_token()
            out.append(int(generator.get_next_tokens()[0]))
            if out[-1] in ours.stop_ids:
                break
        expected = [int(i) for i in reference.answers[task.id]]
        text = ours.tokenizer.decode([i for i in out if i not in ours.stop_ids])
        items, correct, agree = items + 1, correct + answer_matches(text, task.answer), agree + (out == expected)
        generator = og.Generator(model, params)  # teacher forcing: the reference's answer, token by token
        generator.append_tokens(np.array([ids], np.int32))
        rows = []
        for token in expected:
            rows.append(np.array(generator.get_logits())[0, -1])
            generator.append_tokens(np.array([[token]], np.int32))
        kls.extend(kl_divergence(reference.logprobs[task.id].astype(np.float64),
                                 binned_logprobs(np.stack(rows), reference.rows)))
    summary = {"items": items, "accuracy": correct / items, "agreement": agree / items, "mean_kl": float(np.mean(kls))}
    return {"modalities": {TEXT: summary}, "all": summary, "provider": "onnxruntime-genai cpu"}


def measure(model_folder: Path, scratch: Path, rows: list[Row], limit: int | None, log, threads: int | None = None,
            save=lambda results: None) -> dict:
    results, exported = {}, {}
    for row in rows:
        key = export_key(row)
        if key not in exported:
            exported[key] = scratch / f"export-{len(exported)}"
            export(model_folder, exported[key], export_options(row), show_progress=False)
        started = time.perf_counter()
        if row.genai:
            result = genai_text_scores(exported[key], limit)
        else:
            row_limit = min(row.limit, limit or row.limit) if row.limit else limit
            result = evaluate(exported[key], row.provider, follow_up=row.follow_up, limit=row_limit, progress=False,
                              threads=threads)
            result.pop("answers")
        result["seconds"] = round(time.perf_counter() - started, 1)
        results[row.name] = result
        save(results)
        log(f"  {row.name}: " + ", ".join(f"{m} {s['accuracy']:.1%}" for m, s in result["modalities"].items())
            + f", KL {result['all']['mean_kl']:.2e} ({result['seconds']} s)")
    return results


def markdown(results: dict) -> str:
    fp32 = results["fp32"]["modalities"]
    modalities = [m for m in MODALITIES if m in fp32]
    lines = ["| option | " + " | ".join(f"{m} acc (x fp32)" for m in modalities)
             + " | agree with reference | mean KL |",
             "|---|" + "---|" * (len(modalities) + 2)]
    for name, result in results.items():
        cells, flagged = [], False
        for modality in modalities:
            scores = result["modalities"].get(modality)
            if scores is None:
                cells.append("-")
                continue
            share = scores["accuracy"] / fp32[modality]["accuracy"] if fp32[modality]["accuracy"] else float("nan")
            flagged |= share < KEEPS
            cells.append(f"{scores['accuracy']:.1%} ({share:.2f})")
        total = result["all"]
        mark = " **<95%**" if flagged else ""
        items = f" ({total['items']} items)" if total["items"] != results["fp32"]["all"]["items"] else ""
        lines.append(f"| {name}{items}{mark} | " + " | ".join(cells)
                     + f" | {total['agreement']:.1%} | {total['mean_kl']:.2e} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m phi4mm_edge.benchmarks.quality_table",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="*", help="only the rows whose name holds one of these (and fp32)")
    parser.add_argument("--models", nargs="*", default=["trained", "outliers"], choices=["trained", "outliers"])
    parser.add_argument("--limit", type=int, help="the first N held-out items of each kind")
    parser.add_argument("--threads", type=int, help="ONNX Runtime threads per session (1: run two tables side by side)")
    parser.add_argument("--json", help="write every score to this file (after every row)")
    parser.add_argument("--print", nargs="+", metavar="JSON", dest="saved",
                        help="print the tables of saved --json files (e.g. two models run side by side) and stop")
    args = parser.parse_args(argv)
    if args.saved:
        reports = [json.loads(Path(path).read_text()) for path in args.saved]
        for report in reports:
            print(f"machine: {report['machine']}, {report['limit_per_kind'] or 'all'} held-out items per kind")
            for name, results in report["models"].items():
                print(f"\n{name} model\n{markdown(results)}")
        return reports[0]
    rows = [r for r in ROWS if not args.rows or r.name == "fp32" or any(p in r.name for p in args.rows)]
    report = {"machine": cpu_description(), "limit_per_kind": args.limit, "models": {}}
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.models:
            folder = Path(scratch) / name
            write_trained_reference(folder, outliers=name == "outliers")
            print(f"{name}:", file=sys.stderr)
            report["models"][name] = {}

            def save(results, name=name):
                report["models"][name] = results
                if args.json:
                    Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
            measure(folder, folder.with_name(f"{name}-exports"), rows, args.limit,
                    lambda line: print(line, file=sys.stderr, flush=True), args.threads, save)
    print(f"machine: {report['machine']}")
    for name, results in report["models"].items():
        print(f"\n{name} model\n{markdown(results)}")
    return report


if __name__ == "__main__":
    main()

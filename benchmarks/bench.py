"""`phi4mm-edge bench ARTIFACT`: latency and memory of one artifact, as min / median / max over
repeats after a warm-up. Prints a table, and writes a JSON file and a PNG chart.

Measured: load time; time to first token for 128- and 1024-token text prompts; decode tokens/s
with no adapter, the vision adapter and the speech adapter; adapter swap latency (100 swaps);
the vision encoder for an image of 1 and of 4 tiles; the audio encoder for 10 s and 30 s of
audio; time to first token from the file for a 448x448 photo and for 30 s of audio, each with a
one-line question, and for a follow-up question about the photo; peak RSS; artifact size per file;
prompt tokens/s at 128/512/1024 tokens for each prefill
path the artifact has; the memory-bandwidth roofline of decode; the GEMM compute ceiling of
prefill (gemm_ceiling.py). `--genai` and `--torch` measure the peers in the same invocation
(peers.py) and every shared figure is printed as a ratio to each. `--quick` runs the tiny
reference model in seconds.
"""

import argparse
import json
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from ..artifact import ADAPTERS, NO_ADAPTER, SAMPLE_RATE
from ..manifest import read_manifest
from ..errors import Phi4MMError
from ..runtime import Phi4MMEdge
from ..runtime.cpu import physical_cores
from .gemm_ceiling import gemm_ceiling
from .timing import timed

PROMPT_LENGTHS = (128, 512, 1024)
DECODE_TOKENS = 32


def summary(values) -> dict:
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "n": len(values)}


def prompt(length: int, seed: int = 0) -> list[int]:
    return np.random.default_rng(seed).integers(0, 199_000, length).tolist()


def run_bench(artifact: Path, repeats: int = 3, context: int = 1100, threads: int | None = None,
              provider: str = "auto") -> dict:
    """The measurements of one artifact on `provider` (runtime/providers.py); `context` holds the
    1024-token prompt and its answer."""
    artifact = Path(artifact)
    results = {"artifact": str(artifact), "repeats": repeats, "threads": threads or physical_cores()}
    loads, model = [], None

    def ttft(length):
        ids = prompt(length)

        def first_token():
            model.clear_cache()  # the same prompt again would reuse all but its last position
            return model.generate_from_ids(ids, max_new_tokens=1).text()
        return first_token

    # Prompt throughput per prefill path; the portable int4 path first, on a load of its own.
    prefill = {}
    if read_manifest(artifact).graphs.prefill_int8 is not None:
        model = Phi4MMEdge.load(artifact, provider=provider, context_length=context, threads=threads, prefill="int4")
        prefill["int4"] = {str(n): summary([n / t for t in timed(ttft(n), repeats)]) for n in PROMPT_LENGTHS
                           if n < model.decoder.cache.capacity}
    for _ in range(repeats):
        model = None  # release the previous load first: peak RSS is one model, not two
        started = time.perf_counter()
        model = Phi4MMEdge.load(artifact, provider=provider, context_length=context, threads=threads)
        loads.append(time.perf_counter() - started)
    # figures mean nothing without it
    results["provider"], results["provider_note"] = model.provider, model.provider_note
    results["load_s"] = summary(loads)
    results["prefill_precision"] = model.decoder.prefill_precision
    ttfts = {str(n): timed(ttft(n), repeats) for n in PROMPT_LENGTHS if n < model.decoder.cache.capacity}
    results["ttft_s"] = {n: summary(t) for n, t in ttfts.items()}
    prefill[model.decoder.prefill_precision] = {n: summary([int(n) / s for s in t]) for n, t in ttfts.items()}
    results["prefill_tokens_per_s"] = prefill

    # Adapters interleaved round by round (the first round warms up): a shared host's speed drifts
    # within a minute, and the ratios between adapters must not absorb that drift.
    adapters = [a for a in (NO_ADAPTER, *ADAPTERS) if a == NO_ADAPTER or a in model.adapters.names()]
    rates = {adapter: [] for adapter in adapters}
    for round_ in range(repeats + 1):
        for adapter in adapters:
            generation = model.generate_from_ids(prompt(16, seed=1), max_new_tokens=DECODE_TOKENS, adapter=adapter,
                                                 stop_at_end=False)  # a trained model may end at once
            generation.text()
            if round_:
                rates[adapter].append(generation.result.timings.decode_tokens_per_s)
    results["decode_tokens_per_s"] = {adapter: summary(r) for adapter, r in rates.items()}
    results["adapter_step_ratio"] = {adapter: statistics.median(rates[NO_ADAPTER][i] / r[i] for i in range(len(r)))
                                     for adapter, r in rates.items() if adapter != NO_ADAPTER}

    names = [a for a in ADAPTERS if a in model.adapters.names()] or [NO_ADAPTER]
    swaps = []
    for i in range(100):  # alternate none <-> an adapter: every call rebinds
        started = time.perf_counter()
        model.decoder.activate(names[i % len(names)] if i % 2 else "none")
        swaps.append(time.perf_counter() - started)
    results["adapter_swap_ms"] = {k: v * 1000 if k != "n" else v for k, v in summary(swaps).items()}

    if model.vision is not None:
        vision = {}
        crop = model.vision.geometry.crop_size
        for tiles, side in ((1, crop), (4, 2 * crop)):  # an image of exactly 1x1 and 2x2 crops
            # Noise, not one colour: a uniform image's crops are all equal, and vision.onnx encodes
            # equal crops once (the 1-tile image's tile and global view are equal anyway).
            pixels = np.random.default_rng(tiles).integers(0, 256, (side, side, 3), dtype=np.uint8)
            image = model.vision.prepare(Image.fromarray(pixels))
            vision[f"{tiles}_tiles"] = summary(timed(lambda: model.vision.features(image), repeats))
        results["vision_encoder_s"] = vision
    if model.audio is not None:
        rng = np.random.default_rng(0)
        rate = model.audio.entry.sample_rate
        audio_encoder = {}
        for seconds in (10, 30):
            clip = model.audio.prepare((0.1 * rng.standard_normal(seconds * rate).astype(np.float32), rate))
            audio_encoder[f"{seconds}s"] = summary(timed(lambda: model.audio.features(clip), repeats))
        results["audio_encoder_s"] = audio_encoder

    results["media_ttft_s"] = media_ttft(model, repeats)

    # Peak RSS of this process so far: Python and the libraries, one load at a time, its prompts
    # (1024 tokens), decode and both encoders; taken before the probes below allocate their own
    # buffers (the bandwidth probe alone reads a 1 GiB array).
    results["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    results["roofline"] = roofline(model, results["decode_tokens_per_s"], repeats)
    results["gemm_ceiling"] = gemm_ceiling(model.text, model.manifest.precision, threads=threads)
    results["artifact_mb"] = {name: entry.size / 1e6 for name, entry in model.manifest.files.items()}
    return results


PHOTO_QUESTION = "<|image_1|>What is in this photo?"
AUDIO_QUESTION = "<|audio_1|>What is said in this recording?"
FOLLOW_UP = "And what colours does it have?"


def media_ttft(model: Phi4MMEdge, repeats: int) -> dict:
    """From file to first token, the caches emptied first: a 448x448 photo (one tile and the
    global view) and 30 s of audio, each with a one-line question; then a follow-up question
    about the photo in the same conversation (its KV cache and image features reused)."""
    import soundfile

    figures = {}
    with tempfile.TemporaryDirectory() as folder:
        photo, clip = Path(folder) / "photo.png", Path(folder) / "speech.wav"
        rng = np.random.default_rng(0)
        Image.fromarray(rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)).resize((448, 448), Image.BICUBIC).save(photo)
        soundfile.write(clip, 0.1 * rng.standard_normal(30 * SAMPLE_RATE).astype(np.float32), SAMPLE_RATE)

        def ttft(messages, **media) -> tuple[float, str]:
            generation = model.generate(messages, max_new_tokens=8, **media)
            text = generation.text()
            return generation.result.timings.ttft_ms / 1000, text

        if model.vision is not None:
            firsts, follow_ups = [], []
            for round_ in range(repeats + 1):  # round 0 warms up (and opens the encoder)
                model.clear_cache()
                first, answer = ttft(PHOTO_QUESTION, images=[photo])
                conversation = [{"role": "user", "content": PHOTO_QUESTION}, {"role": "assistant", "content": answer},
                                {"role": "user", "content": FOLLOW_UP}]
                follow_up, _ = ttft(conversation, images=[photo])
                if round_:
                    firsts.append(first)
                    follow_ups.append(follow_up)
            figures["photo_448"] = summary(firsts)
            figures["photo_follow_up"] = summary(follow_ups)
            figures["follow_up_over_first"] = statistics.median(f / s for f, s in zip(follow_ups, firsts))
        if model.audio is not None:
            times = []
            for round_ in range(repeats + 1):
                model.clear_cache()
                if round_:
                    times.append(ttft(AUDIO_QUESTION, audios=[clip])[0])
                else:
                    ttft(AUDIO_QUESTION, audios=[clip])
            figures["audio_30s"] = summary(times)
    model.clear_cache()
    return figures


BANDWIDTH_BYTES = 1 << 30  # read per bandwidth measurement: far beyond any cache


def read_bandwidth(repeats: int, threads: int | None = None) -> list[float]:
    """GB/s that ONNX Runtime reaches reading memory: a row-wise ReduceSum over 1 GiB, which its
    threads split by rows (a flat ReduceSum runs on one core and reads ~35% slower here)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("ReduceSum", ["x", "axis"], ["y"], keepdims=0)], "bandwidth",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, None])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])],
                              [helper.make_tensor("axis", TensorProto.INT64, [1], [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    data = np.ones(BANDWIDTH_BYTES // 4, np.float32).reshape(1024, -1)
    return [BANDWIDTH_BYTES / 1e9 / t for t in timed(lambda: session.run(None, {"x": data}), repeats)]


def roofline(model: Phi4MMEdge, decode: dict, repeats: int) -> dict:
    """Decode tokens/s as a fraction of bandwidth / bytes read per token. A token reads every
    decoder weight and the whole lm_head table (the embedding lookup reads one row), plus the
    active adapter's weights: a built-in adapter's constants as stored, a bound one's fp32 tensors."""
    files = model.manifest.files
    base = files["decoder.onnx.data"].size + files["embed_tokens.onnx.data"].size
    adapter_bytes = {"none": 0}
    for name, tensors in model.adapters.tensors.items():
        entry = model.manifest.adapters.get(name)
        if entry is not None and entry.graph_index:  # built in: its int4/int8 constants, as stored
            adapter_bytes[name] = files[entry.file].size
        elif name != "none":  # bound as inputs: fp32 in memory
            adapter_bytes[name] = sum(int(np.prod(v.shape())) * 4 for v in tensors.values())
    bandwidth = summary(read_bandwidth(repeats))
    out = {"read_bandwidth_gb_s": bandwidth, "per_adapter": {}}
    for adapter, rates in decode.items():
        per_token = base + adapter_bytes.get(adapter, 0)
        ceiling = bandwidth["median"] * 1e9 / per_token
        out["per_adapter"][adapter] = {"bytes_per_token": per_token, "roofline_tokens_per_s": ceiling,
                                       "fraction": rates["median"] / ceiling}
    return out


MEDIA_ROWS = {"photo_448": "photo 448x448 + question", "audio_30s": "30 s audio + question",
              "photo_follow_up": "photo follow-up"}  # from the file to the first token


def table(results: dict) -> str:
    rows = [("load", "s", results["load_s"])]
    rows += [(f"ttft {n} tokens", "s", s) for n, s in results["ttft_s"].items()]
    rows += [(f"decode, adapter {a}", "tok/s", s) for a, s in results["decode_tokens_per_s"].items()]
    rows += [(f"prefill {path}, {n} tokens", "tok/s", s) for path, by_length in results["prefill_tokens_per_s"].items()
             for n, s in by_length.items()]
    rows.append(("adapter swap", "ms", results["adapter_swap_ms"]))
    rows += [(f"vision encoder, {k.replace('_', ' ')}", "s", s) for k, s in results.get("vision_encoder_s", {}).items()]
    rows += [(f"audio encoder, {k} audio", "s", s) for k, s in results.get("audio_encoder_s", {}).items()]
    media = results.get("media_ttft_s", {})
    rows += [(f"ttft {MEDIA_ROWS[k]}", "s", media[k]) for k in MEDIA_ROWS if k in media]
    lines = [f"{'measure':34} {'unit':>6} {'min':>10} {'median':>10} {'max':>10}"]
    lines += [f"{name:34} {unit:>6} {s['min']:10.4g} {s['median']:10.4g} {s['max']:10.4g}" for name, unit, s in rows]
    if "follow_up_over_first" in media:
        lines.append(f"{'ttft photo follow-up / first turn':34} {'x':>6} {media['follow_up_over_first']:10.3f}   "
                     f"(median of per-round ratios)")
    for adapter, ratio in results.get("adapter_step_ratio", {}).items():
        lines.append(f"{'decode step, ' + adapter + ' / none':34} {'x':>6} {ratio:10.3f}   "
                     f"(median of per-round ratios)")
    roof = results["roofline"]
    lines.append(f"{'read bandwidth':34} {'GB/s':>6} {roof['read_bandwidth_gb_s']['min']:10.4g} "
                 f"{roof['read_bandwidth_gb_s']['median']:10.4g} {roof['read_bandwidth_gb_s']['max']:10.4g}")
    for adapter, r in roof["per_adapter"].items():
        lines.append(f"{'decode / roofline, ' + adapter:34} {'%':>6} {100 * r['fraction']:10.1f}   "
                     f"(roofline {r['roofline_tokens_per_s']:.1f} tok/s, {r['bytes_per_token'] / 1e6:.0f} MB/token)")
    ceiling = results["gemm_ceiling"]
    for kernel, r in ceiling["kernels"].items():
        lines.append(f"{'GEMM ' + kernel:34} {'GFLOPS':>6} {r['layer_gflops']:10.1f}   (one decoder layer's linears, "
                     f"M={ceiling['rows']})")
    lines.append(f"{'peak RSS (load + runs, no probes)':34} {'MB':>6} {results['peak_rss_mb']:10.1f}")
    own = results.get("own_process")
    if own:
        lines.append(f"{'one load, own process: load':34} {'s':>6} {own['load_s']:10.3g}   (warm: verified before)")
        lines.append(f"{'one load, own process: peak RSS':34} {'MB':>6} {own['peak_rss_mb']:10.1f}   "
                     f"(prompts to {max(map(int, own['ttft_s']))} tokens, decode with every adapter)")
    lines.append(f"{'artifact total':34} {'MB':>6} {sum(results['artifact_mb'].values()):10.1f}")
    lines += peer_lines(results)
    return "\n".join(lines)


def compare(results: dict, peer: dict) -> dict:
    """Our medians over the peer's: TTFT and prefill as peer time / our time (>1: we are faster),
    decode as our tokens/s / theirs, size as ours / theirs."""
    ratios = {}
    for n, ours in results["ttft_s"].items():
        if n in peer["ttft_s"]:
            ratios[f"ttft {n}: peer time / ours"] = statistics.median(peer["ttft_s"][n]) / ours["median"]
    if peer["decode_tokens_per_s"]:
        ratios["decode no adapter: ours / peer tok/s"] = (results["decode_tokens_per_s"]["none"]["median"]
                                                          / statistics.median(peer["decode_tokens_per_s"]))
    own = results.get("own_process")
    if own:  # one load each, in its own process, on the same workload: like for like
        ratios["warm load: ours / peer s"] = own["load_s"] / peer["load_s"]
        ratios["one load's peak RSS, adapters included: ours / peer"] = own["peak_rss_mb"] / peer["peak_rss_mb"]
    if "artifact_mb" in peer:
        files = results["artifact_mb"]
        text = sum(v for k, v in files.items() if k.startswith(("decoder.", "embed")))
        ratios["int4 text artifact: ours / peer"] = text / peer["artifact_mb"]
        prefill = sum(v for k, v in files.items() if k.startswith("decoder_prefill"))
        if prefill:
            ratios["text artifact with the int8 prompt graph: ours / peer"] = (text + prefill) / peer["artifact_mb"]
    return ratios


def peer_lines(results: dict) -> list[str]:
    lines = []
    for name, peer in results.get("peers", {}).items():
        lines.append(f"\n{name}: load {peer['load_s']:.1f} s, peak RSS {peer['peak_rss_mb']:.0f} MB"
                     + (f", artifact {peer['artifact_mb']:.0f} MB" if "artifact_mb" in peer else ""))
        for n, times in peer["ttft_s"].items():
            lines.append(f"  {name} ttft {n} tokens: "
                         f"median {statistics.median(times):.3g} s ({int(n) / statistics.median(times):.1f} tok/s)")
        if peer["decode_tokens_per_s"]:
            lines.append(f"  {name} decode: median {statistics.median(peer['decode_tokens_per_s']):.3g} tok/s")
        for label, ratio in compare(results, peer).items():
            lines.append(f"  ratio {label}: {ratio:.2f}")
    return lines


def chart(results: dict, path: Path) -> bool:
    """A bar chart of the medians (log scale), with min-max whiskers. False if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    labels, medians, lows, highs = [], [], [], []
    for group, unit in (("ttft_s", "s"), ("vision_encoder_s", "s"), ("audio_encoder_s", "s")):
        for key, s in results.get(group, {}).items():
            labels.append(f"{group.split('_')[0]} {key}")
            medians.append(s["median"])
            lows.append(s["median"] - s["min"])
            highs.append(s["max"] - s["median"])
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.barh(labels, medians, xerr=[lows, highs], color="#4477aa")
    left.set_xscale("log")
    left.set_xlabel("seconds (median, min-max)")
    decode = results["decode_tokens_per_s"]
    right.bar(list(decode), [s["median"] for s in decode.values()], color="#cc6677")
    right.set_ylabel("decode tokens/s (median)")
    right.set_xlabel("adapter")
    figure.suptitle(f"phi4mm-edge bench: {Path(results['artifact']).name}")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return True


def main(args) -> dict:
    artifact = args.artifact  # with --quick and no artifact the CLI has made the bundled reference model
    if artifact is None:
        raise Phi4MMError("bench needs an ARTIFACT folder, or --quick for the bundled reference model")
    repeats = args.repeats or (2 if args.quick else 3)
    results = run_bench(Path(artifact), repeats=repeats, threads=args.threads, provider=args.provider)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(results, indent=2))  # ours are kept even if a peer fails
    threads = results["threads"]  # the peers get the same cores
    lengths = [int(n) for n in results["ttft_s"]]
    peers, failures = {}, {}
    runs = []
    from .peers import run_peer

    if args.genai:
        from .peers import genai

        runs.append(("onnxruntime-genai", lambda: genai(args.genai, lengths, repeats, DECODE_TOKENS, threads,
                                                        args.genai_python)))
    if args.torch:
        from .peers import torch_eager

        runs.append((f"pytorch-eager-{args.torch_dtype}", lambda: torch_eager(
            args.torch, lengths, repeats, DECODE_TOKENS, threads, args.torch_dtype, args.torch_python)))
    # Ours again, in a process of its own, for the load and memory figures the peers give. With
    # --rounds N the processes alternate (ours, then each peer) N times and medians are kept:
    # load times drift by 20% from minute to minute on a shared host.
    own_runs, peer_runs = [], {name: [] for name, _ in runs}
    for _ in range(args.rounds):
        try:
            # on the provider the in-process figures were measured on (--provider qnn reaches it too)
            own_runs.append(run_peer("ours_run.py", [artifact, ",".join(map(str, lengths)), repeats, DECODE_TOKENS,
                                                     threads, results["provider"]]))
        except Phi4MMError as error:
            failures["ours, own process"] = str(error)
        for name, measure in runs:
            try:
                peer_runs[name].append(measure())
            except Phi4MMError as error:  # a peer that cannot run here is a finding, not a lost run
                failures[name] = str(error)
    if own_runs:
        results["own_process"] = median_run(own_runs)
    for name, measured in peer_runs.items():
        if measured:
            peers[name] = median_run(measured)
    results["peers"], results["peer_failures"] = peers, failures
    print(table(results))
    for name, error in failures.items():
        print(f"\n{name}: not measured: {error}")
    (out / "bench.json").write_text(json.dumps(results, indent=2))
    drawn = chart(results, out / "bench.png")
    print(f"\nwrote {out / 'bench.json'}"
          + (f" and {out / 'bench.png'}" if drawn else " (no chart: pip install matplotlib)"))
    return results


def median_run(runs: list[dict]) -> dict:
    """One process's figures from several: the median load and peak RSS, every run's timings."""
    merged = dict(runs[-1])
    merged["load_s"] = statistics.median(r["load_s"] for r in runs)
    merged["peak_rss_mb"] = statistics.median(r["peak_rss_mb"] for r in runs)
    merged["ttft_s"] = {n: [t for r in runs for t in r["ttft_s"][n]] for n in runs[0]["ttft_s"]}
    merged["decode_tokens_per_s"] = [t for r in runs for t in r["decode_tokens_per_s"]]
    merged["rounds"] = len(runs)
    return merged


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("artifact", nargs="?")
    parser.add_argument("--quick", action="store_true", help="the tiny reference model, in seconds")
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--out", default="bench-results", help="folder for bench.json and bench.png")
    parser.add_argument("--cache-dir", help="with --quick: where the reference model is cached")
    parser.add_argument("--threads", type=int, help="threads for us and the peers (default: one per physical core)")
    parser.add_argument("--genai", metavar="FOLDER",
                        help="peer: an onnxruntime-genai model folder (its builder's output)")
    parser.add_argument("--genai-python", metavar="PYTHON",
                        help="interpreter that has onnxruntime-genai (default: this one)")
    parser.add_argument("--torch", metavar="PHI3_FOLDER",
                        help="peer: PyTorch eager on the Phi-3 checkpoint genai_peer writes")
    parser.add_argument("--torch-python", metavar="PYTHON",
                        help="interpreter that has torch + transformers (default: this one)")
    parser.add_argument("--torch-dtype", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--rounds", type=int, default=1,
                        help="alternate our own-process run and the peers' this many times; medians are kept")

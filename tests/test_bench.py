"""`phi4mm-edge bench --quick`: every figure the benchmarks issue lists, with its spread."""

import json

from test_runtime import phi4mm_edge


def test_bench_quick_reports_every_figure(tmp_path):
    out = phi4mm_edge("bench", "--quick", "--cache-dir", tmp_path / "cache", "--out", tmp_path / "results").stdout
    assert "ttft 1024 tokens" in out and "adapter swap" in out
    results = json.loads((tmp_path / "results" / "bench.json").read_text())
    spreads = [results["load_s"], results["adapter_swap_ms"], *results["ttft_s"].values(),
               *results["decode_tokens_per_s"].values(), *results["vision_encoder_s"].values(),
               *results["audio_encoder_s"].values(),
               *(results["media_ttft_s"][k] for k in ("photo_448", "photo_follow_up", "audio_30s"))]
    assert "ttft photo 448x448 + question" in out and "ttft photo follow-up / first turn" in out
    assert results["media_ttft_s"]["follow_up_over_first"] > 0
    assert set(results["ttft_s"]) == {"128", "512", "1024"}
    assert set(results["prefill_tokens_per_s"]) == {results["prefill_precision"]}  # the demo artifact: int4 only
    kernels = results["gemm_ceiling"]["kernels"]
    assert set(kernels) == {"int4 MatMulNBits", "fp32 MatMul", "int8 DynamicQuantizeMatMul",
                            "int8 row-scaled (prompt graph)"}
    assert all(k["layer_gflops"] > 0 for k in kernels.values())
    assert set(results["decode_tokens_per_s"]) == {"none", "vision", "speech"}
    assert set(results["vision_encoder_s"]) == {"1_tiles", "4_tiles"} \
           and set(results["audio_encoder_s"]) == {"10s", "30s"}
    assert all(0 < s["min"] <= s["median"] <= s["max"] for s in spreads)
    assert results["adapter_swap_ms"]["n"] == 100
    own = results["own_process"]  # one load in a fresh process: the figures compared with the peers'
    assert own["provider"] == results["provider"]  # the same provider in its own process (--provider reaches it)
    assert 0 < own["load_s"] < 60 and own["peak_rss_mb"] > 50 \
           and set(own["adapter_decode_tokens_per_s"]) == {"vision", "speech"}
    assert results["peak_rss_mb"] > 0 and results["artifact_mb"]["decoder.onnx.data"] > 0
    assert (tmp_path / "results" / "bench.png").stat().st_size > 10_000
    roof = results["roofline"]
    assert roof["read_bandwidth_gb_s"]["median"] > 0.1
    per_token = {a: r["bytes_per_token"] for a, r in roof["per_adapter"].items()}
    # The built-in int4 adapters' bytes: speech has the larger rank (at the tiny ranks, 8 and 12, both
    # pad B's rank dimension to one 32-wide block, so the two files can round to the same size).
    assert per_token["vision"] > per_token["none"] and per_token["speech"] >= per_token["vision"]


def test_genai_peer_checkpoint_is_the_same_text_model(checkpoints, reference, tmp_path):
    """The Phi-3 checkpoint handed to onnxruntime-genai's builder computes exactly our base model
    (fp32 reference, no adapter; 1e-5 of the logit scale covers summation order)."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from phi4mm_edge.benchmarks.genai_peer import write_phi3

    peer = AutoModelForCausalLM.from_pretrained(write_phi3(checkpoints["original"], tmp_path / "phi3"),
                                                dtype=torch.float32)
    assert type(peer).__name__ == "Phi3ForCausalLM"
    ids = torch.tensor([np.random.default_rng(0).integers(0, 199_000, 100).tolist()])  # past the LongRoPE switch
    with torch.no_grad(), reference.disable_adapter():
        expected = reference(input_ids=ids).logits
        ours = peer(input_ids=ids).logits
    assert float((ours - expected).abs().max() / expected.abs().max()) <= 1e-5


def test_bench_measures_both_prefill_paths_and_a_peer_in_one_run(artifacts, checkpoints, tmp_path):
    """An artifact with the int8 prompt graph gets prompt tokens/s for both paths, and a peer
    (PyTorch eager on the tiny Phi-3 checkpoint) is measured in the same invocation and printed
    as ratios of the medians in the JSON."""
    import statistics

    from phi4mm_edge.benchmarks.genai_peer import write_phi3

    phi3 = write_phi3(checkpoints["native"], tmp_path / "phi3")
    out = phi4mm_edge("bench", artifacts["int4"], "--repeats", "1", "--torch", phi3,
                      "--out", tmp_path / "results").stdout
    results = json.loads((tmp_path / "results" / "bench.json").read_text())
    assert set(results["prefill_tokens_per_s"]) == {"int4", "int8"} and results["prefill_precision"] == "int8"
    for path in ("int4", "int8"):
        assert set(results["prefill_tokens_per_s"][path]) == {"128", "512", "1024"}
    peer = results["peers"]["pytorch-eager-bf16"]
    assert set(peer["ttft_s"]) == {"128", "512", "1024"} and len(peer["decode_tokens_per_s"]) == 1
    ratio = statistics.median(peer["ttft_s"]["1024"]) / results["ttft_s"]["1024"]["median"]
    assert f"ratio ttft 1024: peer time / ours: {ratio:.2f}" in out


def test_the_genai_peer_runs_on_our_artifact_and_changes_none_of_its_files(artifacts):
    """`bench ARTIFACT --genai ARTIFACT`: onnxruntime-genai measured on the artifact's own graphs
    (export writes genai's files into it), through its decoder-only overlay (no adapter, as ours
    are measured), threads set by a config overlay: the folder's files stay byte for byte as
    exported, so its manifest's sha256 list still holds (the peer used to rewrite
    genai_config.json to set the threads)."""
    from phi4mm_edge.benchmarks.peers import genai
    from phi4mm_edge.runtime.verify import verify_artifact

    folder = artifacts["int4"]
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and p.suffix == ".json"}
    assert "genai_config.json" in before and "genai_text.json" in before
    result = genai(folder, [128], 1, 4, 2)
    assert len(result["ttft_s"]["128"]) == 1 and result["ttft_s"]["128"][0] > 0
    assert len(result["decode_tokens_per_s"]) == 1 and result["decode_tokens_per_s"][0] > 0
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and p.suffix == ".json"} == before
    verify_artifact(folder, "full")  # every file re-hashed against the manifest


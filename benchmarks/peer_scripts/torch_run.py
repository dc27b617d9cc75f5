"""PyTorch eager peer: python torch_run.py PHI3_FOLDER LENGTHS REPEATS DECODE_TOKENS THREADS DTYPE.
transformers' Phi3ForCausalLM, eager, one forward for the prompt (last position's logits only,
as ours) and one per decoded token with the cache. Prints one JSON line."""

import json
import os
import sys
import time

os.environ["HF_HUB_OFFLINE"] = "1"
import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402
from peer_common import peak_rss_mb  # noqa: E402

folder, lengths, repeats, decode_tokens, threads, dtype = (sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]),
                                                           int(sys.argv[5]), sys.argv[6])
torch.set_num_threads(threads)
started = time.perf_counter()
model = AutoModelForCausalLM.from_pretrained(folder, dtype={"bf16": torch.bfloat16, "fp32": torch.float32}[dtype],
                                             attn_implementation="eager").eval()
result = {"load_s": time.perf_counter() - started, "ttft_s": {}, "decode_tokens_per_s": [], "dtype": dtype}
with torch.inference_mode():
    for n in map(int, lengths.split(",")):
        ids = torch.from_numpy(np.random.default_rng(0).integers(0, 199_000, (1, n)))  # bench.prompt(n)
        times = []
        for repeat in range(repeats + 1):
            begin = time.perf_counter()
            out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            first = time.perf_counter()
            if repeat:
                times.append(first - begin)
            if n == 128 and repeat:
                past = out.past_key_values
                for _ in range(decode_tokens):
                    out = model(input_ids=token, past_key_values=past, use_cache=True)
                    past, token = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
                result["decode_tokens_per_s"].append(decode_tokens / (time.perf_counter() - first))
        result["ttft_s"][str(n)] = times
result["peak_rss_mb"] = peak_rss_mb()
print(json.dumps(result))

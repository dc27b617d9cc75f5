"""What the CPU offers, read at load time: physical cores (the default thread count) and whether
the int8 prompt path has a fast integer GEMM here.

The int8 prompt graph runs MatMulIntegerToFloat, i.e. MLAS's uint8 x int8 GEMM. MLAS has wide
kernels for it on x86 with AVX2 (and AVX-VNNI, AVX-512 VNNI, AMX above it) and on ARM64 with the
dot-product instructions; measured here (AVX2, no VNNI) at ~2x MatMulNBits' prompt throughput.
Elsewhere (SSE-only x86, ARM64 without dotprod) its advantage is unmeasured, so the portable int4
path (MatMulNBits, the decode kernels) stays the choice.
"""

import os
from pathlib import Path

from ..errors import Phi4MMError

INT8_GEMM_FEATURES = ("AVX2", "ASIMDDP")  # numpy's names: x86 AVX2, ARM64 dot product
# Integer dot products that accumulate in 32 bits (no int16 pair sums to saturate), so 8-bit
# weights are exact there: numpy's AVX512VNNI and ASIMDDP, and Linux's avx_vnni (AVX-VNNI) and
# amx_int8 flags, which numpy's table does not name.
UNSATURATED_INT8_FEATURES = ("AVX512VNNI", "ASIMDDP", "avx_vnni", "amx_int8")
PREFILL_PRECISIONS = ("auto", "int4", "int8")


def cpu_features() -> dict:
    """numpy's run-time CPU feature table ({'AVX2': True, ...}), the same on every OS, plus the
    Linux /proc/cpuinfo flags it lacks (lower case, e.g. 'avx_vnni', 'amx_int8')."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:  # numpy 1.x
        from numpy.core._multiarray_umath import __cpu_features__
    features = dict(__cpu_features__)
    try:
        flags = next((line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("flags")), [])
    except OSError:  # not Linux
        flags = []
    features.update({flag: True for flag in flags if flag in UNSATURATED_INT8_FEATURES})
    return features


def logical_cpus() -> int:
    """Logical CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def physical_cores() -> int:
    """Physical cores this process may run on (SMT siblings counted once)."""
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    cores = set()
    for cpu in allowed:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(((topology / "physical_package_id").read_text().strip(),
                       (topology / "core_id").read_text().strip()))
        except OSError:  # not Linux, or no sysfs: count logical CPUs
            return max(1, len(list(allowed)))
    return max(1, len(cores))


def int8_weight_bits_for(features: dict | None = None) -> int:
    """The int8 prompt graph's weight width for this CPU (export's `--prefill-weight-bits auto`):
    8 where its int8 dot products accumulate in 32 bits, 7 elsewhere. At 8 bits the weights'
    rounding step halves for the same bytes and the same kernel (measured on an AMX/AVX-512 VNNI
    Xeon: equal speed, a linear's error 1.9% -> 1.2%; benchmarks/RESULTS.md). Such a graph runs its
    int8 prompts only on such CPUs (choose_prefill_precision)."""
    features = cpu_features() if features is None else features
    return 8 if any(features.get(name) for name in UNSATURATED_INT8_FEATURES) else 7


def choose_prefill_precision(requested: str, has_int8_graph: bool, features: dict | None = None,
                             int8_weight_bits: int = 7) -> str:
    """How prompts run: "int8" (the int8 prompt graph, decoder_prefill.onnx) or "int4" (decoder.onnx,
    as decode). A graph with 8-bit weights runs only where integer dot products do not saturate
    (elsewhere its products would be clipped: wrong, not just slower)."""
    if requested not in PREFILL_PRECISIONS:
        raise Phi4MMError(f"prefill precision {requested!r} is not one of {PREFILL_PRECISIONS}")
    if requested == "int8" and not has_int8_graph:
        raise Phi4MMError("this artifact has no int8 prompt graph: re-export it with `--prefill int8`, "
                          "or use --prefill int4")
    if int8_weight_bits not in (7, 8):
        raise Phi4MMError(f"the manifest says the int8 prompt graph has {int8_weight_bits}-bit weights; this runtime "
                          f"knows 7 and 8: re-export the artifact")
    features = cpu_features() if features is None else features
    exact_here = int8_weight_bits <= int8_weight_bits_for(features)
    if requested == "int8" and not exact_here:
        raise Phi4MMError("this artifact's int8 prompt graph has 8-bit weights, which need a CPU with VNNI, AMX or ARM "
                          "dotprod (here its int8 products would saturate): use --prefill int4, or re-export with "
                          "`--prefill int8 --prefill-weight-bits 7` for this CPU")
    if requested != "auto":
        return requested
    fast = any(features.get(name) for name in INT8_GEMM_FEATURES)
    return "int8" if has_int8_graph and fast and exact_here else "int4"

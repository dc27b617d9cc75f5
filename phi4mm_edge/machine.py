"""The machine a figure was measured on, for the record beside it (benchmarks, training)."""

from pathlib import Path

GEMM_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")


def cpu_description() -> str:
    """The CPU model name, its logical CPUs and which of the GEMM-relevant flags it has (Linux)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return "unknown CPU"
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "?")
    flags = set(next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), []))
    cpus = sum(1 for line in lines if line.startswith("processor"))
    return f"{model}, {cpus} CPUs; " + ", ".join(f"{flag} {'yes' if flag in flags else 'no'}" for flag in GEMM_FLAGS)

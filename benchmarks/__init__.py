"""Latency and memory, measured against the peers in the same run (the bench suite lands with
the benchmarks issue)."""

"""Micro-benchmarks of single operators: the engine's smoke test and the gate's reference unit."""

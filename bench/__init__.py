"""Benchmarks: ``python -m bench NAME [--json]`` (SPEC §9)."""

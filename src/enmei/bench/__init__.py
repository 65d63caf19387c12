"""Benchmarks behind ``enmei bench``: each module has ``run(...) -> dict`` with the figures it names."""

"""Benchmarks reachable from the CLI (`edgespec bench …`); scripts under benchmarks/ wrap them."""

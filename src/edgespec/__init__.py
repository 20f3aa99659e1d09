"""edgespec: distributed, lossless speculative decoding over heterogeneous edge networks.

The package root imports nothing heavy: `edgespec plan` and `edgespec sim` must start fast and
run where torch is not installed. The model-facing API lives in `edgespec.api`.
"""

__version__ = "0.1.0"

"""Builders for small planning problems with round numbers, so latencies can be computed by hand."""

from __future__ import annotations

import math
from pathlib import Path

from edgespec.plan.scenario import LinkSpec, ModelShape, NodeSpec, ServingSystem, SpecConfig, Task

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

# 1 layer, h = 2, h_ff = 4, V = 8, plain FFN, 1-byte weights:
#   FLOPs per token = 4h² + 4h·kv + 4·ctx·h + 4h·h_ff + 2hV = 16 + 16 + 8·ctx + 32 + 32 = 96 + 8·ctx
#   parameters = 2h² + 2h·kv + 2h·h_ff + 2Vh = 8 + 8 + 16 + 32 = 64 → 64 bytes; KV = 2·1·2·1 = 4 bytes/token
TOY_MODEL = ModelShape("toy", n_layers=1, hidden=2, ffn_hidden=4, vocab=8, swiglu=False, dtype_bytes=1.0)


def toy_system(memory_bytes: float = math.inf, q_mode: str = "ids", draft_flops: float = 1e4) -> ServingSystem:
    """Drafter 10 kFLOP/s, verifier 1 kFLOP/s (pure compute), link 1000 B/s each way with 10 ms latency."""
    return ServingSystem(
        drafter=NodeSpec("d", TOY_MODEL, effective_flops=draft_flops, memory_bytes=memory_bytes),
        verifier=NodeSpec("v", TOY_MODEL, effective_flops=1e3, memory_bytes=memory_bytes),
        link=LinkSpec(uplink_bps=8000.0, downlink_bps=8000.0, latency_s=0.01),
        speculation=SpecConfig(alpha=0.5, q_mode=q_mode, top_k=2, id_bytes=4, prob_bytes=2, verdict_bytes=8,
                               message_overhead_bytes=0),
    )


def toy_task(task_id: int = 0, input_tokens: int = 4, output_tokens: int = 6, alpha: float = 0.5,
             upload_bytes: float = 100.0, efficiency: float = 1.0) -> Task:
    return Task(task_id, input_tokens, output_tokens, alpha, upload_bytes, spectral_efficiency_bps_per_hz=efficiency)


"""The verifier node (`edgespec serve`): hosts the target model and verifies drafts from many drafter nodes in batches.

Modules, one concept each:
- `node`: `VerifierConfig`, `VerifierNode` — the asyncio server (connections, admission, queueing, verdicts);
- `scheduler`: `Scheduler` — when to close a batch and which drafts go in it, round-robin across drafter nodes;
- `runner`: `VerifierRunner` — the target model, per-session transcripts and KV rows, one ragged forward per batch;
- `intake`: received draft blocks -> validated `DraftBatch`es (BAD_DRAFT errors name the wire field);
- `kvbudget`: `KvBudget` — admission control: sessions reserve KV tokens against a budget;
- `metrics`: `VerifierMetrics` — Prometheus metrics with vLLM's spec-decode names, per drafter node;
- `cli`: `serve_command` — the `edgespec serve` command.
See docs/serving.md.
"""

import importlib

# Lazy exports (PEP 562): `edgespec serve --help` and the CLI module must not pay for torch.
_EXPORTS = {
    "Admission": "kvbudget", "KvBudget": "kvbudget",
    "MetricsServer": "metrics", "VerifierMetrics": "metrics",
    "VerifierConfig": "node", "VerifierNode": "node",
    "DraftItem": "runner", "RoundResult": "runner", "VerifierRunner": "runner", "round_seed": "runner",
    "QueuedDraft": "scheduler", "Scheduler": "scheduler", "SchedulerConfig": "scheduler",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"edgespec.server.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'edgespec.server' has no attribute {name!r}")


__all__ = [
    "VerifierConfig",
    "VerifierNode",
    "VerifierRunner",
    "DraftItem",
    "RoundResult",
    "round_seed",
    "Scheduler",
    "SchedulerConfig",
    "QueuedDraft",
    "KvBudget",
    "Admission",
    "VerifierMetrics",
    "MetricsServer",
]

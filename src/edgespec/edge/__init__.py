"""The drafter node (`edgespec edge`): hosts a draft model, serves users through an OpenAI-compatible HTTP API and sends drafts to verifier nodes.

Modules, one concept each:
- `routing`: which verifier a new session joins (join-shortest-queue over load hints);
- `client`: connections to verifier nodes (handshake, sessions, reconnect with backoff, resume from the transcript);
- `kvrows`: the draft model's KV cache with one row leased per active session;
- `drafting`: one batched draft pass with q exactly as the wire carries it (fp16, renormalised);
- `policies`: γ policies by name (static, heuristic, confidence, odld, leviathan);
- `text`: incremental detokenisation and stop strings;
- `engine`: the drafting loop for all sessions, pipelined drafting, verdicts -> transcript -> text;
- `http`: the OpenAI-compatible API (Starlette);
- `node`: `EdgeConfig` and `EdgeNode` (engine + client + HTTP server);
- `cli`: `edge_command`, the `edgespec edge` command.
"""

import importlib

__all__ = ["EdgeConfig", "EdgeNode"]


def __getattr__(name: str):
    """Lazy exports (PEP 562): the CLI imports `edgespec.edge.cli` without paying for torch."""
    if name in __all__:
        return getattr(importlib.import_module("edgespec.edge.node"), name)
    raise AttributeError(f"module 'edgespec.edge' has no attribute {name!r}")

"""Helpers shared by the node tests: a verifier node on an ephemeral loopback port, stopped on exit."""

from __future__ import annotations

import contextlib

LOOPBACK = "127.0.0.1"


@contextlib.asynccontextmanager
async def loopback_verifier(target, **settings):
    """A verifier node (edgespec.server) for `target` on 127.0.0.1 (port 0, 1 ms batch window unless `settings` say otherwise)."""
    from edgespec.server import VerifierConfig, VerifierNode

    node = VerifierNode(VerifierConfig(**{"host": LOOPBACK, "port": 0, "batch_window_ms": 1.0, **settings}), target=target)
    await node.start()
    try:
        yield node
    finally:
        await node.stop()

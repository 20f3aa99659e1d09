"""Helpers for the drafter node's tests: run coroutines with a deadline, AD references, nodes on 127.0.0.1, an HTTP client, SSE parsing."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Optional

from edgespec.edge import EdgeConfig, EdgeNode
from edgespec.models.decoder import GenerationConfig, generate_ad
from edgespec.spec.sampling import SamplingParams
from node_helpers import LOOPBACK, loopback_verifier

try:  # transformers' hub client brings httpx2; plain httpx has the same API
    import httpx2 as httpx
except ImportError:  # pragma: no cover
    import httpx  # type: ignore[no-redef]

PROMPTS = ["w5 w9 w3", "w17 w2", "w40 w41 w42 w43 w44", "w7", "w60 w12 w8 w30"]


def run(coro, timeout_s: float = 90.0):
    """Run a coroutine in a fresh event loop, failing after `timeout_s`."""
    return asyncio.run(asyncio.wait_for(coro, timeout_s))


def encode(lm, text: str) -> list[int]:
    """What the HTTP API does with a text prompt: BOS first, then the tokens."""
    bos = lm.tokenizer.bos_token_id
    return ([bos] if bos is not None else []) + lm.tokenize(text)


def ad_text(target, prompt: str, max_tokens: int, stop_at_eos: bool = True) -> str:
    """Target-only greedy decoding (`edgespec generate --mode ad`), the reference at temperature 0."""
    cfg = GenerationConfig(max_new_tokens=max_tokens, sampling=SamplingParams(temperature=0.0), stop_at_eos=stop_at_eos)
    return generate_ad(target, [encode(target, prompt)], cfg)[0].text


def free_port() -> int:
    """A TCP port nothing listens on right now (for a verifier that is not there)."""
    import socket

    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def verifier_node(target, port: int = 0, **overrides):
    """A verifier node (edgespec.server) for `target` on 127.0.0.1, stopped on exit."""
    return loopback_verifier(target, port=port, **overrides)


@contextlib.asynccontextmanager
async def edge_node(draft, verifiers, *, wait: bool = True, **overrides):
    """A drafter node for `draft` with its HTTP API on an ephemeral port; waits for a verifier unless `wait` is False."""
    settings = dict(verifiers=tuple(verifiers), http_host=LOOPBACK, http_port=0, gamma_policy="static", gamma=3)
    settings.update(overrides)
    node = EdgeNode(EdgeConfig(**settings), draft=draft)
    await node.start()
    try:
        if wait:
            assert await node.wait_connected(10.0), "the drafter node did not connect to a verifier"
        yield node
    finally:
        await node.stop()


def client(node: EdgeNode, timeout_s: float = 60.0):
    return httpx.AsyncClient(base_url=node.http_url, timeout=timeout_s)


async def stream_events(http, path: str, body: dict) -> list:
    """POST with stream=true and return the parsed SSE events ("[DONE]" kept as a string)."""
    events = []
    async with http.stream("POST", path, json={**body, "stream": True}) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            if not line:
                continue
            assert line.startswith("data: "), line
            data = line[len("data: "):]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def streamed_text(events: list, chat: bool = False) -> str:
    out = []
    for ev in events:
        if isinstance(ev, dict) and ev.get("choices"):
            choice = ev["choices"][0]
            out.append((choice["delta"].get("content") or "") if chat else choice["text"])
    return "".join(out)


def final_chunk(events: list) -> Optional[dict]:
    for ev in events:
        if isinstance(ev, dict) and ev.get("choices") and ev["choices"][0]["finish_reason"]:
            return ev
    return None

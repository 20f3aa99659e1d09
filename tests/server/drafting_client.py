"""A small test-side drafter node: talks the real protocol to a verifier node and drafts with a toy draft model via `draft_blocks`.

Not the product's drafter (edgespec.edge): it exists so the verifier's tests depend only on the wire
protocol. One connection, many concurrent sessions; a reader task routes every received event to its
session's queue.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field
from typing import Optional

import torch

from edgespec.models.decoder import draft_blocks
from edgespec.protocol import DrafterConnection, ProtocolError, connect, pack_q
from edgespec.protocol import messages as m
from edgespec.spec.sampling import SamplingParams


@dataclass
class SessionResult:
    """What one session produced, and what the drafter saw on the way."""

    session_id: int
    prompt: list[int]
    tokens: list[int] = field(default_factory=list)
    rounds: int = 0
    accepted: int = 0
    errors: list[ProtocolError] = field(default_factory=list)


class TestDrafter:
    """One drafter connection to a verifier node; `await generate(...)` runs sessions to their token budget."""

    __test__ = False  # not a pytest class

    def __init__(self, url: str, draft_model, node_id: str = "test-edge", auth_token: Optional[str] = None, ssl=None):
        self.url, self.draft, self.node_id, self.auth_token, self.ssl = url, draft_model, node_id, auth_token, ssl
        self.conn = DrafterConnection()
        self.transport = None
        self._queues: dict[int, asyncio.Queue] = {}
        self._hello: Optional[asyncio.Future] = None
        self._reader: Optional[asyncio.Task] = None
        self._sids = itertools.count(1)

    async def __aenter__(self) -> "TestDrafter":
        self.transport = await connect(self.url, auth_token=self.auth_token, ssl=self.ssl)
        self._hello = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read())
        await self.send(m.hello(self.node_id, ["toy-draft"]))
        await asyncio.wait_for(self._hello, 10)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        if self.transport is not None:
            await self.transport.close()

    async def send(self, envelope) -> None:
        await self.transport.send(self.conn.send(envelope))

    async def _read(self) -> None:
        while True:
            envelope = await self.transport.recv()
            event = self.conn.receive(envelope)
            if event is None:
                continue
            if event.kind == "hello_ack":
                self._hello.set_result(event.message)
            elif event.session_id is not None and event.session_id in self._queues:
                self._queues[event.session_id].put_nowait(event)
            else:  # an error without a session
                self._queues.setdefault(0, asyncio.Queue()).put_nowait(event)

    def new_session_id(self) -> int:
        sid = next(self._sids)
        self._queues[sid] = asyncio.Queue()
        return sid

    async def next_event(self, sid: int, timeout_s: float = 30.0):
        return await asyncio.wait_for(self._queues[sid].get(), timeout_s)

    async def open(self, prompt: list[int], sampling: m.Sampling, max_new_tokens: int):
        """Open a session; returns (session id, the first event: session_opened or error)."""
        sid = self.new_session_id()
        await self.send(m.open_session(sid, prompt, sampling, draft_model_id="toy-draft", max_new_tokens=max_new_tokens))
        return sid, await self.next_event(sid)

    async def run_session(
        self,
        prompt: list[int],
        *,
        sampling: m.Sampling = m.Sampling(temperature=0.0),
        max_new_tokens: int = 16,
        gamma: int = 3,
        q_mode: str = "tokens",
        top_k: int = 4,
        draft_temperature: Optional[float] = None,
        seed: int = 0,
        close: bool = True,
    ) -> SessionResult:
        """Open a session, draft and apply verdicts until `max_new_tokens` tokens, then close it."""
        sid, first = await self.open(prompt, sampling, max_new_tokens)
        if first.kind != "session_opened":
            raise ProtocolError.from_message(first.message)
        result = SessionResult(sid, list(prompt))
        await self.draft_until(result, max_new_tokens=max_new_tokens, sampling=sampling, gamma=gamma, q_mode=q_mode, top_k=top_k, draft_temperature=draft_temperature, seed=seed)
        if close:
            await self.send(m.close(sid))
            event = await self.next_event(sid)
            assert event.kind == "close", event
        return result

    async def draft_until(self, result: SessionResult, *, max_new_tokens: int, sampling: m.Sampling, gamma: int, q_mode: str, top_k: int = 4, draft_temperature: Optional[float] = None, seed: int = 0) -> None:
        """Draft rounds for an open session until it has `max_new_tokens` tokens."""
        sid = result.session_id
        # q modes other than tokens-only need a sampled q: draft at temperature 1 unless told otherwise
        temp = draft_temperature if draft_temperature is not None else (sampling.temperature if q_mode == "tokens" else max(sampling.temperature, 1.0))
        params = SamplingParams(temperature=temp)
        gen = torch.Generator().manual_seed(seed * 1000 + sid)
        kv = self.draft.new_kv(1)
        while len(result.tokens) < max_new_tokens:
            transcript = result.prompt + result.tokens
            g = min(gamma, max_new_tokens - len(result.tokens) - 1)
            out = draft_blocks(self.draft, kv, [transcript], [g], params, q_mode, top_k, gen)
            block = out.blocks[0]
            mode = out.q_mode
            if mode == "full":
                q = pack_q("full", q_probs=out.q_probs.numpy())
            elif mode == "topk":
                q = pack_q("topk", q_probs=out.q_probs.numpy(), q_ids=out.q_ids.numpy())
            else:
                q = pack_q("tokens")
            await self.send(m.draft(sid, len(transcript), block, q))
            event = await self.next_event(sid)
            if event.kind == "error":
                result.errors.append(ProtocolError.from_message(event.message))
                raise result.errors[-1]
            assert event.kind == "verdict", event
            n, tok = event.message.accepted, event.message.next_token_id
            result.rounds += 1
            result.accepted += n
            result.tokens.extend(block[:n] + [tok])
        del result.tokens[max_new_tokens:]


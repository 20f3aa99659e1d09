"""Round timing: every verdict says how long the verifier held its draft, its batch's target forwards and its wait behind other batches' forwards; the rest is a per-node histogram on /metrics."""

import asyncio
import re
import urllib.request

from edgespec.protocol import pack_q
from edgespec.protocol import messages as m
from edgespec.server.node import busy_wait_s

from server_helpers import PROMPTS, run, running_node
from drafting_client import TestDrafter

GAMMA_TOKENS = [1, 2, 3]  # any in-vocabulary block: tokens-only q is valid for every draft


async def _verdicts(drafter: TestDrafter, prompt: list[int], rounds: int) -> list:
    """Open a greedy session and send `rounds` drafts back to back; the verdict messages."""
    sid, opened = await drafter.open(prompt, m.Sampling(temperature=0.0), max_new_tokens=4 * rounds)
    assert opened.kind == "session_opened", opened
    position, out = opened.message.position, []
    for _ in range(rounds):
        await drafter.send(m.draft(sid, position, GAMMA_TOKENS, pack_q("tokens")))
        event = await drafter.next_event(sid)
        assert event.kind == "verdict", event
        out.append(event.message)
        position += event.message.accepted + 1
    return out


def _histogram_count(text: str, node: str) -> float:
    match = re.search(rf'^edgespec_verifier_round_overhead_seconds_count{{node="{node}"}} (\S+)$', text, re.M)
    assert match, "the round overhead histogram is not on /metrics"
    return float(match.group(1))


def test_every_verdict_carries_its_round_timing_and_the_overhead_is_on_metrics(toy_pair):
    draft, target = toy_pair

    async def main():
        async with running_node(target, metrics_port=0, max_batch_size=1) as node:  # one draft per batch: the others wait behind it
            async with TestDrafter(node.url, draft, "edge-t") as d:
                per_session = await asyncio.gather(*(_verdicts(d, p, rounds=3) for p in PROMPTS[:4]))
            text = await asyncio.to_thread(lambda: urllib.request.urlopen(node.metrics_url, timeout=10).read().decode())
            return [v for vs in per_session for v in vs], text

    verdicts, text = run(main())
    assert len(verdicts) == 12 and all(v.HasField("timing") for v in verdicts)
    for v in verdicts:
        t = v.timing
        assert t.forward_us > 0 and t.server_us >= t.forward_us + t.busy_wait_us, t
    assert any(v.timing.busy_wait_us > 0 for v in verdicts), "with batches of one draft, some draft must wait behind another's forward"
    assert _histogram_count(text, "edge-t") == len(verdicts)
    assert "edgespec_verifier_round_overhead_seconds_bucket" in text


def test_busy_wait_is_the_overlap_of_the_wait_with_forward_windows():
    windows = [(0.0, 1.0), (2.0, 3.0), (4.0, 5.0)]
    assert busy_wait_s(0.5, 4.5, windows) == 0.5 + 1.0 + 0.5
    assert busy_wait_s(1.0, 2.0, windows) == 0.0  # waited between forwards only
    assert busy_wait_s(6.0, 7.0, windows) == 0.0
    assert busy_wait_s(0.0, 10.0, []) == 0.0

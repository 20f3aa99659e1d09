"""The drafter node's Prometheus /metrics: it scrapes, the numbers move with the traffic and agree with /stats, per-session series stay bounded and go when their request ends."""

import asyncio

from prometheus_client.parser import text_string_to_metric_families

from edgespec.edge.engine import GenerationFailed, GenerationRequest
from edgespec.spec.sampling import SamplingParams

from edge_helpers import LOOPBACK, PROMPTS, client, edge_node, encode, free_port, run, verifier_node


def _samples(text: str) -> dict:
    """(sample name, sorted labels) -> value."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def _sessions(samples: dict) -> set:
    return {dict(labels)["session"] for name, labels in samples if name == "edgespec_edge_session_tokens"}


async def _scrape(http) -> dict:
    r = await http.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return _samples(r.text)


def test_metrics_scrape_and_move_with_traffic(toy_pair):
    draft, target = toy_pair
    sampled = SamplingParams(temperature=1.0)

    async def main():
        async with verifier_node(target) as v, edge_node(draft, [f"{LOOPBACK}:{v.port}"], gamma_policy="heuristic", gamma=2, q_mode="topk", top_k=4) as node:
            address = f"{LOOPBACK}:{v.port}"
            async with client(node) as http:
                before = await _scrape(http)
                # one long request running: its per-session series appear, and go when it ends
                long_req = node.engine.submit(GenerationRequest(tuple(encode(target, PROMPTS[0])), 200, sampled, stop_at_eos=False))
                events = long_req.__aiter__()
                await events.__anext__()  # its first text
                during = await _scrape(http)
                rest = [node.engine.submit(GenerationRequest(tuple(encode(target, p)), 12, sampled, stop_at_eos=False)) for p in PROMPTS[1:]]
                await asyncio.gather(long_req.result(), *(h.result() for h in rest))
                after = await _scrape(http)
                return address, before, during, after, node.stats()

    address, before, during, after, stats = run(main())
    # before: all zero, no sessions
    assert _value(before, "edgespec_edge_requests_running") == 0 and _value(before, "spec_decode_num_drafts_total") == 0
    assert not _sessions(before)
    # during: one request running, with its series
    assert _value(during, "edgespec_edge_requests_running") == 1
    assert len(_sessions(during)) == 1 and _value(during, "edgespec_edge_session_series_omitted") == 0
    # after: the counters moved and agree with /stats; the session series are gone
    assert _value(after, "edgespec_edge_requests_running") == 0 and not _sessions(after)
    assert _value(after, "edgespec_edge_requests_finished_total") == len(PROMPTS) == stats["requests_finished"]
    assert _value(after, "edgespec_edge_completion_tokens_total") == 200 + 12 * (len(PROMPTS) - 1)
    drafts = _value(after, "spec_decode_num_drafts_total")
    assert drafts == stats["rounds"] > 0
    assert _value(after, "spec_decode_num_draft_tokens_total") == stats["drafted_tokens"]
    assert _value(after, "spec_decode_num_accepted_tokens_total") == stats["accepted_tokens"] > 0
    per_pos = sum(v for (name, _), v in after.items() if name == "spec_decode_num_accepted_tokens_per_pos_total")
    assert per_pos == stats["accepted_tokens"]
    assert _value(after, "edgespec_edge_gamma_count") == drafts and _value(after, "edgespec_edge_gamma_sum") == stats["drafted_tokens"]
    assert _value(after, "edgespec_edge_round_seconds_count") == drafts and _value(after, "edgespec_edge_round_seconds_sum") > 0
    # bytes: /stats was read a moment later (close acknowledgements may arrive in between)
    assert 0 < _value(after, "edgespec_edge_uplink_bytes_total", verifier=address) <= stats["uplink_bytes"]
    assert 0 < _value(after, "edgespec_edge_downlink_bytes_total", verifier=address) <= stats["downlink_bytes"]
    assert _value(after, "edgespec_edge_verifier_connected", verifier=address) == 1
    assert 0 < _value(after, "edgespec_edge_draft_passes_total") <= stats["draft_passes"]  # a pass may release rows after the last verdict


def test_per_session_series_are_bounded(toy_pair):
    draft, target = toy_pair

    async def main():
        async with verifier_node(target) as v, edge_node(draft, [f"{LOOPBACK}:{v.port}"]) as node:
            node.metrics.max_session_series = 2
            handles = [node.engine.submit(GenerationRequest(tuple(encode(target, p)), 300, SamplingParams(0.0), stop_at_eos=False)) for p in PROMPTS[:4]]
            await asyncio.sleep(0)
            samples = _samples(node.metrics.render().decode())
            keys = [r.key for r in node.engine.running()]
            for h in handles:
                h.cancel()
            return samples, keys

    samples, keys = run(main())
    assert _value(samples, "edgespec_edge_requests_running") == 4
    assert _sessions(samples) == {str(k) for k in keys[:2]}  # the two oldest
    assert _value(samples, "edgespec_edge_session_series_omitted") == 2


def test_failed_requests_are_counted(toy_pair):
    draft, target = toy_pair

    async def main():
        async with edge_node(draft, [f"{LOOPBACK}:{free_port()}"], wait=False, unavailable_timeout_s=0.3) as node:
            handle = node.engine.submit(GenerationRequest(tuple(encode(target, PROMPTS[0])), 4, SamplingParams(0.0)))
            try:
                await handle.result()
            except GenerationFailed:
                pass
            async with client(node) as http:
                return await _scrape(http)

    samples = run(main())
    assert _value(samples, "edgespec_edge_requests_failed_total") == 1
    assert _value(samples, "edgespec_edge_requests_finished_total") == 0

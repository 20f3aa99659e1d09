"""Framework overhead at the drafter: each round's time outside model forwards, from the verdict's RoundTiming, reaches /stats."""

import asyncio

from edge_helpers import LOOPBACK, PROMPTS, client, edge_node, run, verifier_node


def test_stats_report_round_overhead_of_every_round(toy_pair):
    draft, target = toy_pair

    async def main():
        async with verifier_node(target) as v, edge_node(draft, [f"{LOOPBACK}:{v.port}"]) as node:
            async with client(node) as http:
                body = {"max_tokens": 24, "temperature": 0, "ignore_eos": True}
                outs = await asyncio.gather(*(http.post("/v1/completions", json={**body, "prompt": p}) for p in PROMPTS[:3]))
                assert all(r.status_code == 200 for r in outs)
                stats = (await http.get("/stats")).json()
            return stats, list(node.engine.stats.round_overhead_s), list(node.engine.stats.verifier_overhead_s)

    stats, totals, verifier_shares = run(main())
    assert stats["rounds"] > 0 and stats["round_overhead_samples"] == stats["rounds"] == len(totals) == len(verifier_shares)
    assert 0 < stats["round_overhead_ms_p50"] <= stats["round_overhead_ms_p90"]
    assert stats["verifier_overhead_ms_p50"] is not None
    # the verifier's share is part of the round: the drafter's window (sent → applied) encloses the verifier's
    assert all(total >= share >= 0 for total, share in zip(totals, verifier_shares))

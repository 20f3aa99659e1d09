"""The verifier node's Prometheus endpoint: vLLM's spec-decode names per drafter node, batch size, queue depth, verify time, bytes, sessions."""

import asyncio
import re
import urllib.request

from server_helpers import PROMPTS, run, running_node
from drafting_client import TestDrafter


def _value(text: str, sample: str) -> float:
    match = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.M)
    assert match, f"{sample} not in /metrics"
    return float(match.group(1))


def test_metrics_endpoint_serves_vllm_names_per_node(toy_pair):
    draft, target = toy_pair

    async def main():
        async with running_node(target, metrics_port=0, batch_window_ms=20.0) as node:
            async with TestDrafter(node.url, draft, "edge-a") as a, TestDrafter(node.url, draft, "edge-b") as b:
                results = await asyncio.gather(*(c.run_session(p, max_new_tokens=12, gamma=3) for c, p in zip((a, b, a, b), PROMPTS)))
            url = node.metrics_url
            assert url.startswith("http://127.0.0.1:") and node.metrics_port > 0
            text = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=10).read().decode())
            return results, text

    results, text = run(main())
    for node, mine in (("edge-a", results[0::2]), ("edge-b", results[1::2])):
        label = f'{{node="{node}"}}'
        assert _value(text, f"spec_decode_num_drafts_total{label}") == sum(r.rounds for r in mine)
        assert _value(text, f"spec_decode_num_accepted_tokens_total{label}") == sum(r.accepted for r in mine)
        drafted = _value(text, f"spec_decode_num_draft_tokens_total{label}")
        assert sum(r.accepted for r in mine) <= drafted <= 3 * sum(r.rounds for r in mine)
        per_pos = [_value(text, f'spec_decode_num_accepted_tokens_per_pos_total{{node="{node}",position="{j}"}}') for j in range(3)]
        assert sum(per_pos) == sum(r.accepted for r in mine) and per_pos[0] >= per_pos[1] >= per_pos[2]
        assert _value(text, f"edgespec_verifier_received_bytes_total{label}") > 0
        assert _value(text, f"edgespec_verifier_active_sessions{label}") == 0
    # batching happened: more drafts than batches
    assert _value(text, "edgespec_verifier_batch_size_sum") > _value(text, "edgespec_verifier_batch_size_count") > 0
    assert _value(text, "edgespec_verifier_verify_seconds_count") == _value(text, "edgespec_verifier_batch_size_count")
    assert "edgespec_verifier_queue_depth" in text

"""The drafter node gives its sessions' AWC policies one shared per-node state: pooled acceptance and wire floor, one γ for the node."""

from edgespec.edge.client import ClientConfig
from edgespec.edge.engine import DraftEngine, EngineConfig, GenerationRequest
from edgespec.policy.awc import AwcGamma, AwcNodeStats
from edgespec.spec.sampling import GREEDY

from edge_helpers import PROMPTS, ad_text, encode, run, verifier_node
from node_helpers import LOOPBACK


def test_awc_sessions_of_one_engine_share_its_node_stats_and_stay_lossless(toy_pair):
    draft, target = toy_pair
    prompts = PROMPTS[:3]
    want = [ad_text(target, p, 20, stop_at_eos=False) for p in prompts]

    async def main():
        async with verifier_node(target) as v:
            engine = DraftEngine(draft, EngineConfig(q_mode="tokens", gamma_policy="awc", gamma=3, max_gamma=8),
                                 ClientConfig(verifiers=(f"{LOOPBACK}:{v.port}",), node_id="edge-awc"))  # fmt: skip
            await engine.start()
            try:
                handles = [engine.submit(GenerationRequest(tuple(encode(draft, p)), max_tokens=20, sampling=GREEDY, stop_at_eos=False))
                           for p in prompts]
                policies = [h._session.policy for h in handles]
                finished = [await h.result() for h in handles]
            finally:
                await engine.stop()
            return engine, policies, finished

    engine, policies, finished = run(main())
    assert [f.text for f in finished] == want  # AWC changes γ, never the output
    stats = AwcNodeStats.of(engine._policy_state)
    assert all(isinstance(p, AwcGamma) and p.features.node is stats for p in policies)  # one node state for all its sessions
    prior = stats.prior(None)  # every session's verdicts went into the node's pooled acceptance (no request class at the node)
    assert prior is not None and prior[1] > 0
    assert stats.net_floor_s is not None  # and into its wire floor (the verdicts carry rtt and server timing)

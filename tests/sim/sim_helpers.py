"""Small simulator configurations for tests: constant costs, near-ideal links, one request class."""

from __future__ import annotations

from edgespec.sim.config import DrafterGroup, RequestClass, SimConfig, Speculation, VerifierConfig, Workload
from edgespec.sim.costs import ConstantCost
from edgespec.sim.links import LinkModel

FAST = 1e15  # bits/s: transmission time ~1e-13 s per message


def tiny_config(*, alpha: float = 0.7, gamma: int = 4, output_tokens: int = 64, input_tokens: int = 16, nodes: int = 1,
                draft_step_s: float = 0.01, verify_s: float = 0.05, latency_s: float = 0.0, uplink_bps: float = FAST,
                mode: str = "sd", requests: int = 1, kind: str = "closed", rate_per_s: float = 10.0, seed: int = 0,
                verifiers: VerifierConfig = VerifierConfig(window_s=0.0), gamma_policy: str = "static", **extra) -> SimConfig:
    link = LinkModel(uplink_bps, latency_s)
    down = LinkModel(FAST, latency_s)
    return SimConfig(
        classes=(RequestClass("req", input_tokens, output_tokens),),
        drafters=(DrafterGroup("nodes", nodes, link, down, alpha=alpha),),
        draft_cost=ConstantCost(draft_step_s),
        verify_cost=ConstantCost(verify_s),
        verifiers=verifiers,
        workload=Workload(kind, requests, rate_per_s=rate_per_s),
        speculation=Speculation(mode=mode, gamma=gamma, max_gamma=max(gamma, 8), gamma_policy=gamma_policy),
        seed=seed,
        **extra,
    )

"""What a testbed runs: nodes, their links and device speeds, the serving settings — read from a simulator scenario file."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

from edgespec.sim.config import SimConfig
from edgespec.sim.links import LinkModel

__all__ = ["DrafterSpec", "ServingSpec", "TestbedSpec", "spec_from_scenario", "spec_from_config"]


@dataclass(frozen=True)
class DrafterSpec:
    """One drafter node: its group in the scenario, its link per direction and its device slowdown (draft time ×)."""

    name: str
    group: str
    uplink: LinkModel
    downlink: LinkModel
    slowdown: float = 1.0
    weight: float = 1.0  # share of open-loop arrivals


@dataclass(frozen=True)
class ServingSpec:
    """Settings of the real nodes (`edgespec serve` / `edgespec edge` flags)."""

    gamma_policy: str = "static"
    gamma: int = 4
    max_gamma: int = 8
    q_mode: str = "topk"
    top_k: int = 8
    pipeline: bool = False
    batch_window_ms: float = 2.0
    merge_share: float = 0.5
    max_batch_size: int = 0
    max_batch_tokens: int = 2048
    kv_budget_tokens: int = 0  # 0: the verifier's default
    pin_verifiers: bool = True  # verifiers on the last CPU, everything else on the others (a server of its own), where there are ≥ 2 CPUs
    verifier_threads: int = 1
    drafter_threads: int = 1
    target_dir: Optional[Path] = None  # None: the bundled pair
    draft_dir: Optional[Path] = None
    extra_serve_args: tuple[str, ...] = ()
    extra_edge_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class TestbedSpec:
    """A whole testbed: drafter nodes, verifier count, serving settings, and the scenario it came from."""

    __test__ = False  # not a pytest class

    drafters: tuple[DrafterSpec, ...]
    verifiers: int = 1
    serving: ServingSpec = field(default_factory=ServingSpec)
    name: str = "testbed"

    def __post_init__(self) -> None:
        if not self.drafters:
            raise ValueError("a testbed needs at least one drafter node")
        if not 1 <= self.verifiers <= 250 or len(self.drafters) > 250:
            raise ValueError("a testbed holds 1-250 verifiers and up to 250 drafter nodes")
        names = [d.name for d in self.drafters]
        if len(set(names)) != len(names):
            raise ValueError(f"drafter names must be unique, got {names}")


def spec_from_config(config: SimConfig, serving: ServingSpec) -> TestbedSpec:
    """One drafter node per simulated drafter node (groups expanded: d0, d1, ...), the scenario's verifier count."""
    drafters: list[DrafterSpec] = []
    for group in config.drafters:
        for _ in range(group.count):
            i = len(drafters)
            drafters.append(DrafterSpec(f"d{i}", group.name, group.uplink, group.downlink, group.slowdown, group.weight))
    return TestbedSpec(tuple(drafters), config.verifiers.count, serving, config.name)


def spec_from_scenario(path: Path | str, **overrides) -> tuple[TestbedSpec, SimConfig]:
    """Read a simulator scenario (docs/simulator.md) as a testbed; `overrides` replace `ServingSpec` fields."""
    from edgespec.plan.scenario import load_scenario
    from edgespec.sim.scenario import load_sim_config

    config = load_sim_config(path)
    spec = load_scenario(path).system.speculation
    v, s = config.verifiers, config.speculation
    if config.speculation.mode != "sd":
        raise ValueError(f"the testbed runs distributed SD; {path} has [sim] mode = {config.speculation.mode!r}")
    q_mode = {"ids": "tokens"}.get(spec.q_mode, spec.q_mode)  # the planner calls tokens-only drafts "ids"
    serving = ServingSpec(gamma_policy=s.gamma_policy, gamma=s.gamma, max_gamma=s.max_gamma, q_mode=q_mode,
                          top_k=spec.top_k or 8, batch_window_ms=v.window_s * 1e3, merge_share=v.merge_share, max_batch_size=v.max_batch_size,
                          max_batch_tokens=v.max_batch_tokens, kv_budget_tokens=v.kv_budget_tokens)
    if overrides:
        serving = replace(serving, **overrides)
    return spec_from_config(config, serving), config

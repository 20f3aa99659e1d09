"""One testbed run of a scenario: bring the testbed up, run the workload, collect per-node figures and the relay's byte counts, tear down."""

from __future__ import annotations

import time
from dataclasses import asdict, replace
from typing import Callable, Optional

from edgespec.sim.config import SimConfig
from edgespec.testbed.bed import Testbed, link_name
from edgespec.testbed.spec import TestbedSpec
from edgespec.testbed.workload import RequestRecord, WorkloadSpec, run_workload, summarize_records

__all__ = ["run_scenario", "workload_of"]


def workload_of(config: SimConfig, *, requests: Optional[int] = None, temperature: float = 0.0) -> WorkloadSpec:
    """The scenario's workload and request classes as the testbed's users send them."""
    w = config.workload if requests is None else replace(config.workload, requests=requests)
    return WorkloadSpec(w, config.classes, temperature, seed=config.seed)


def run_on(bed: Testbed, work: WorkloadSpec, say: Callable[[str], None] = lambda _: None) -> dict:
    """Run a workload on a testbed that is up; the report (per node and overall, with every request)."""
    nodes = {name: (bed.net.netns_of(name), d.node.port) for name, d in bed.drafters.items() if d.node is not None}
    weights = {d.spec.name: d.spec.weight for d in bed.drafters.values()}
    before = bed.relay_stats()
    wire0 = {name: bed.net.wire_bytes(name) for name in nodes}
    done = [0]

    def progress(r: RequestRecord) -> None:
        done[0] += 1
        if done[0] % max(1, work.workload.requests // 10) == 0 or r.error:
            say(f"{done[0]}/{work.workload.requests} requests" + (f" (error on {r.node}: {r.error})" if r.error else ""))

    start = time.perf_counter()
    records = run_workload(nodes, work, weights=weights, on_record=progress)
    wall_s = time.perf_counter() - start
    after = bed.relay_stats()
    wire = {name: tuple(b - a for a, b in zip(wire0[name], bed.net.wire_bytes(name))) for name in nodes}
    return _report(bed.spec, records, wall_s, before, after, wire)


def _bytes(stats: dict, name: str, direction: str) -> int:
    return int(stats.get(name, {}).get(f"{direction}_bytes", 0))


def _report(spec: TestbedSpec, records: list[RequestRecord], wall_s: float, before: dict, after: dict,
            wire: dict[str, tuple[int, int]]) -> dict:
    summary = summarize_records(records)
    nodes = {}
    for d in spec.drafters:  # in the spec's order: d0, d1, ...
        n = nodes[d.name] = summary["nodes"].get(d.name, {"requests": 0, "errors": 0})
        links = [link_name(d.name, v) for v in range(spec.verifiers)]
        up = sum(_bytes(after, k, "up") - _bytes(before, k, "up") for k in links)
        down = sum(_bytes(after, k, "down") - _bytes(before, k, "down") for k in links)
        wire_up, wire_down = wire.get(d.name, (0, 0))
        tokens = n.get("tokens", 0)
        n.update(group=d.group, uplink_mbps=d.uplink.rate_bps / 1e6, downlink_mbps=d.downlink.rate_bps / 1e6,
                 latency_ms=d.uplink.latency_s * 1e3, slowdown=d.slowdown, uplink_bytes=up, downlink_bytes=down,
                 uplink_bytes_per_token=up / tokens if tokens else None,
                 uplink_bytes_per_round=up / n["rounds"] if n.get("rounds") else None,
                 uplink_wire_bytes=wire_up, downlink_wire_bytes=wire_down,
                 uplink_wire_bytes_per_token=wire_up / tokens if tokens else None)
    summary["nodes"] = nodes
    return {"scenario": spec.name, "wall_s": wall_s, "requests_done": sum(r.error is None for r in records),
            **summary, "requests": [asdict(r) for r in records]}


def run_scenario(spec: TestbedSpec, config: SimConfig, *, requests: Optional[int] = None, temperature: float = 0.0,
                 tag: Optional[str] = None, say: Callable[[str], None] = lambda _: None) -> dict:
    """Up, workload, report, down."""
    work = workload_of(config, requests=requests, temperature=temperature)
    with Testbed(spec, tag=tag, say=say) as bed:
        say(f"running {work.workload.requests} requests ({work.workload.kind})")
        return run_on(bed, work, say)

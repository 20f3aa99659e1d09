"""Faults on the testbed: each fault's stated outcome, whether it held, and the time to recover.

Regime: the bundled pair, greedy, static γ = 4, 160-token answers (EOS ignored), one verifier with a KV
budget for two such sessions, three drafter nodes — d0 on a clean 20/50 Mbit/s link with 5 ms one way,
d1 on a 5/20 Mbit/s link with 20 ms one way, 5 ms mean jitter and 5 % loss per message (200 ms per
retransmission), d2 on a device three times slower (a third of a core) — and, for the failover, a second
testbed with two verifiers and one drafter node. The same faults as tests/testbed/test_faults.py
(`edgespec.testbed.faults`), run `--repeats` times each; every text is compared with an undisturbed run.

Recovery: verifier restart — from the restarted verifier announcing its address to the next token;
link cut — from the link coming back to the next token; drafter killed — from the kill to the
verifier having closed its sessions and freed all their KV; failover — from the kill to the next token.

Run (as root): .venv/bin/python benchmarks/testbed_faults.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

from rich.console import Console
from rich.table import Table

from edgespec.sim.links import LinkModel
from edgespec.testbed import faults
from edgespec.testbed.bed import Testbed
from edgespec.testbed.spec import DrafterSpec, ServingSpec, TestbedSpec

BODY = faults.request_body(max_tokens=160)
SESSION_KV = 6 + 160 + 4


def _link(rate_bps: float, latency_s: float, jitter_s: float = 0.0, loss: float = 0.0) -> LinkModel:
    return LinkModel(rate_bps, latency_s, jitter_s, loss, 0.2)


def _serving(**kw) -> ServingSpec:
    return ServingSpec(gamma_policy="static", gamma=4, max_gamma=4, q_mode="topk", **kw)


def single_verifier_faults(repeats: int, say) -> list[faults.FaultOutcome]:
    spec = TestbedSpec((
        DrafterSpec("d0", "clean", _link(20e6, 0.005), _link(50e6, 0.005)),
        DrafterSpec("d1", "lossy", _link(5e6, 0.02, 0.005, 0.05), _link(20e6, 0.02, 0.005, 0.05)),
        DrafterSpec("d2", "slow", _link(20e6, 0.005), _link(50e6, 0.005), slowdown=3.0),
    ), verifiers=1, serving=_serving(kv_budget_tokens=2 * SESSION_KV + 40), name="faults")
    out = []
    with Testbed(spec, say=say) as bed:
        ref = faults.reference(bed, "d0", BODY)
        for r in range(repeats):
            say(f"round {r + 1}/{repeats}")
            out += [faults.verifier_restart(bed, "d0", BODY, ref), faults.link_cut(bed, "d0", BODY, ref, cut_s=3.0),
                    faults.drafter_killed(bed, "d0", BODY, ref),
                    faults.steady_request(bed, "d1", BODY, ref, "5 % loss and jitter on the link", clean_node="d0"),
                    faults.steady_request(bed, "d2", BODY, ref, "a device 3x slower (CPU quota)", clean_node="d0"),
                    faults.kv_budget(bed, ["d0", "d1", "d2"], BODY, ref, concurrent=4)]
    return out


def failover(repeats: int, say) -> list[faults.FaultOutcome]:
    spec = TestbedSpec((DrafterSpec("d0", "clean", _link(20e6, 0.005), _link(50e6, 0.005)),), verifiers=2, serving=_serving(), name="failover")
    out = []
    for r in range(repeats):  # a fresh pair of verifiers each time: one of them dies
        with Testbed(spec, say=say) as bed:
            out.append(faults.verifier_failover(bed, "d0", BODY, faults.reference(bed, "d0", BODY)))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    say = lambda m: print(f"· {m}", file=sys.stderr)  # noqa: E731
    outcomes = single_verifier_faults(args.repeats, say) + failover(args.repeats, say)

    by_fault: dict[str, list[faults.FaultOutcome]] = {}
    for o in outcomes:
        by_fault.setdefault(o.fault, []).append(o)
    table = Table(title=f"testbed faults, {args.repeats} runs each (bundled pair, greedy, 160 tokens)")
    for col in ("fault", "stated outcome", "held", "recovery s (median, max)", "detail (last run)"):
        table.add_column(col, justify="right" if col.startswith(("held", "recovery")) else "left")
    rows = []
    for fault, os_ in by_fault.items():
        rec = [o.recovery_s for o in os_ if o.recovery_s is not None]
        held = sum(o.text_equal for o in os_)
        last = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in os_[-1].detail.items() if k not in ("chars", "ref_chars", "error")}
        table.add_row(fault, os_[0].expected, f"{held}/{len(os_)}",
                      f"{statistics.median(rec):.2f}, {max(rec):.2f}" if rec else "–", json.dumps(last))
        rows.append({"fault": fault, "expected": os_[0].expected, "held": held, "runs": len(os_),
                     "recovery_s": rec, "recovery_median_s": statistics.median(rec) if rec else None,
                     "details": [o.detail for o in os_]})
    Console(width=220).print(table)
    ok = all(r["held"] == r["runs"] for r in rows)
    print(json.dumps({"benchmark": "testbed_faults", "repeats": args.repeats, "all_held": ok, "faults": rows}))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

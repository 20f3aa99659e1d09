"""Chrome-trace (about://tracing, Perfetto) timeline of a traced run: each request's rounds by phase, each verifier's batches."""

from __future__ import annotations

import json
from pathlib import Path

from edgespec.sim.run import SimRun

__all__ = ["chrome_trace", "write_chrome_trace"]

_PHASES = ("draft", "upload", "queue", "verify", "downlink")


def chrome_trace(run: SimRun, max_requests: int = 200) -> dict:
    """Trace events (microseconds) for the first `max_requests` requests and every verifier batch; needs `record_rounds`."""
    events: list[dict] = [{"name": "process_name", "ph": "M", "pid": 1, "args": {"name": "requests"}}]
    for s in sorted(run.sessions, key=lambda s: s.key)[:max_requests]:
        events.append({"name": "thread_name", "ph": "M", "pid": 1, "tid": s.key, "args": {"name": f"request {s.key} (node {s.node.index})"}})
        for r in s.round_log or ():
            stamps, gamma, accepted = r[:6], r[6], r[7]
            for name, t0, t1 in zip(_PHASES, stamps, stamps[1:]):
                if t1 > t0:
                    events.append({"name": name, "ph": "X", "pid": 1, "tid": s.key, "ts": t0 * 1e6, "dur": (t1 - t0) * 1e6,
                                   "args": {"gamma": gamma, "accepted": accepted}})
    for v in run.verifiers:
        pid = 100 + v.index
        events.append({"name": "process_name", "ph": "M", "pid": pid, "args": {"name": f"verifier {v.index}"}})
        for start, end, size in v.spans or ():
            events.append({"name": f"batch of {size}", "ph": "X", "pid": pid, "tid": 0, "ts": start * 1e6, "dur": (end - start) * 1e6,
                           "args": {"batch_size": size}})
    return {"traceEvents": events, "displayTimeUnit": "ms"}


def write_chrome_trace(run: SimRun, path: Path | str, max_requests: int = 200) -> None:
    Path(path).write_text(json.dumps(chrome_trace(run, max_requests)), encoding="utf-8")

"""Faults injected into a running testbed, each with the outcome it must have and the time the system took to recover.

Every fault runs a temperature-0 request that streams while the fault happens and compares its text
with an undisturbed run of the same request (`reference`): no token the user saw may be lost,
duplicated or changed. Recovery is measured from the moment the fault ends (or is injected, where
it has no end) to the next token the user receives, or to the state the fault must restore.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from edgespec.testbed.bed import Testbed
from edgespec.testbed.netns import TestbedError, enter_netns
from edgespec.testbed.workload import complete

__all__ = ["FaultOutcome", "Stream", "reference", "request_body", "verifier_restart", "link_cut", "drafter_killed",
           "steady_request", "kv_budget", "verifier_failover"]


@dataclass(frozen=True)
class FaultOutcome:
    """What happened: the fault, the outcome it must have, whether every text matched, and the recovery time."""

    fault: str
    expected: str
    text_equal: bool
    recovery_s: Optional[float]
    detail: dict = field(default_factory=dict)


def request_body(prompt: str = "def fibonacci(n):\n", max_tokens: int = 160) -> dict:
    """A greedy request that runs for a while (so a fault lands mid-generation)."""
    return {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0, "ignore_eos": True}


class Stream:
    """A streamed completion running in the background from inside a drafter's namespace; text chunks are timestamped."""

    def __init__(self, bed: Testbed, node: str, body: dict) -> None:
        self.port = bed.drafters[node].node.port  # type: ignore[union-attr]
        self.netns = bed.net.netns_of(node)
        self.body = body
        self.chunks: list[tuple[float, str]] = []
        self.result: Optional[dict] = None
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.start_s = time.monotonic()
        self._thread.start()

    def _run(self) -> None:
        enter_netns(self.netns)
        result = complete(self.port, self.body, clock=time.monotonic, on_text=self._on_text)
        with self._cond:
            self.result = result
            self._cond.notify_all()

    def _on_text(self, t: float, text: str) -> None:
        with self._cond:
            self.chunks.append((t, text))
            self._cond.notify_all()

    def wait_chunks(self, n: int, timeout_s: float = 60.0) -> None:
        """Block until `n` text chunks arrived (raises if the stream ends or stalls first)."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.chunks) >= n or self.result is not None, timeout_s):
                raise TestbedError(f"no {n} text chunks within {timeout_s:.0f} s")
            if len(self.chunks) < n:
                raise TestbedError(f"the request ended after {len(self.chunks)} chunks (wanted {n} before the fault): {self.result}")

    def join(self, timeout_s: float = 120.0) -> dict:
        self._thread.join(timeout_s)
        if self.result is None:
            raise TestbedError(f"the request did not finish within {timeout_s:.0f} s")
        return self.result

    def first_after(self, t: float) -> Optional[float]:
        """Seconds from `t` to the first text chunk after it (None if none came)."""
        later = [c for c, _ in self.chunks if c > t]
        return min(later) - t if later else None

    @property
    def text(self) -> str:
        return self.result["text"] if self.result else "".join(t for _, t in self.chunks)


def reference(bed: Testbed, node: str, body: dict) -> str:
    """The request's text with nothing disturbed."""
    result = Stream(bed, node, body).join()
    if result["error"]:
        raise TestbedError(f"reference request failed: {result['error']}")
    return result["text"]


def _outcome(fault: str, expected: str, stream: Stream, ref: str, recovery_s: Optional[float], **detail) -> FaultOutcome:
    result = stream.result or {}
    detail.update(error=result.get("error"), chars=len(stream.text), ref_chars=len(ref))
    return FaultOutcome(fault, expected, result.get("error") is None and stream.text == ref, recovery_s, detail)


# ----------------------------------------------------------------------------- the faults


def wait_until(check: Callable[[], bool], timeout_s: float, every_s: float = 0.1) -> float:
    """Poll `check` until it holds; the seconds it took (raises `TestbedError` on timeout)."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout_s:
            raise TestbedError(f"condition not reached within {timeout_s:.0f} s")
        time.sleep(every_s)
    return time.monotonic() - start



def verifier_restart(bed: Testbed, node: str, body: dict, ref: str, down_s: float = 1.0) -> FaultOutcome:
    """Kill verifier 0 mid-generation (SIGKILL), restart it after `down_s`; the session resumes from the drafter's transcript."""
    stream = Stream(bed, node, body)
    stream.wait_chunks(3)
    killed = time.monotonic()
    bed.kill("v0")
    time.sleep(down_s)
    bed.start_verifier(0)
    back = time.monotonic()
    stream.join()
    return _outcome("verifier killed and restarted", "the request finishes with the undisturbed text", stream, ref,
                    stream.first_after(back), outage_s=stream.first_after(killed), restart_s=back - killed)


def link_cut(bed: Testbed, node: str, body: dict, ref: str, cut_s: float = 3.0) -> FaultOutcome:
    """Take the drafter's link down for `cut_s` mid-generation, then restore it (TCP carries the stalled messages over)."""
    stream = Stream(bed, node, body)
    stream.wait_chunks(3)
    bed.cut(node, True)
    time.sleep(cut_s)
    bed.cut(node, False)
    restored = time.monotonic()
    stream.join()
    return _outcome(f"link cut for {cut_s:g} s", "the request finishes with the undisturbed text", stream, ref,
                    stream.first_after(restored))


def _node_gauge(bed: Testbed, metric: str, node: str, verifier: int = 0) -> float:
    return bed.metrics(verifier).get(f'{metric}{{node="{node}"}}', 0.0)


def drafter_killed(bed: Testbed, node: str, body: dict, ref: str) -> FaultOutcome:
    """SIGKILL a drafter node mid-session: the verifier must close its sessions and free their KV; the restarted node serves again."""
    stream = Stream(bed, node, body)
    stream.wait_chunks(3)
    held = _node_gauge(bed, "edgespec_verifier_active_sessions", node)
    bed.kill(node)
    def freed() -> bool:  # one scrape per poll
        got = bed.metrics()
        return (got.get(f'edgespec_verifier_active_sessions{{node="{node}"}}', 0.0) == 0
                and got.get("edgespec_verifier_kv_tokens_reserved", 0.0) == 0 and got.get("edgespec_verifier_kv_tokens_in_use", 0.0) == 0)

    freed_s = wait_until(freed, 60.0)
    bed.start_drafter(node)
    again = Stream(bed, node, body)
    again.join()
    return _outcome("drafter node killed mid-session", "its sessions close and all their KV is freed; restarted, it serves the same text",
                    again, ref, freed_s, sessions_before_kill=held)


def steady_request(bed: Testbed, node: str, body: dict, ref: str, label: str, clean_node: Optional[str] = None) -> FaultOutcome:
    """A request on a degraded node (lossy link, slow device): same text, and how much slower than on a clean node."""
    start = time.monotonic()
    stream = Stream(bed, node, body)
    stream.join()
    took = time.monotonic() - start
    detail: dict = {"latency_s": took}
    if clean_node is not None:
        t0 = time.monotonic()
        Stream(bed, clean_node, body).join()
        detail["clean_latency_s"] = time.monotonic() - t0
    quota = bed.drafters[node].quota
    if quota is not None:
        detail["throttled_s"] = quota.throttled_s()
    return _outcome(label, "the request finishes with the undisturbed text, only slower", stream, ref, None, **detail)


def kv_budget(bed: Testbed, nodes: list[str], body: dict, ref: str, concurrent: int) -> FaultOutcome:
    """More concurrent sessions than the verifier's KV budget holds: extra opens are refused (BUSY) and retried; every text is right."""
    refused0 = sum(v for k, v in bed.metrics().items() if k.startswith("edgespec_verifier_sessions_refused_total"))
    streams = [Stream(bed, nodes[i % len(nodes)], body) for i in range(concurrent)]
    for s in streams:
        s.join(300.0)
    refused = sum(v for k, v in bed.metrics().items() if k.startswith("edgespec_verifier_sessions_refused_total")) - refused0
    wrong = [i for i, s in enumerate(streams) if s.result["error"] or s.text != ref]  # type: ignore[index]
    return FaultOutcome("verifier at its KV budget", "new sessions are refused (BUSY) and retried; running ones are unharmed",
                        not wrong, None, {"sessions": concurrent, "refused": refused, "wrong": wrong,
                                          "errors": [s.result["error"] for s in streams if s.result["error"]]})  # type: ignore[index]


def verifier_failover(bed: Testbed, node: str, body: dict, ref: str) -> FaultOutcome:
    """Two verifiers, the one serving the session killed: the session moves to the other."""
    stream = Stream(bed, node, body)
    stream.wait_chunks(3)
    serving = [i for i in range(bed.spec.verifiers) if _node_gauge(bed, "edgespec_verifier_active_sessions", node, i) > 0]
    victim = serving[0] if serving else 0
    killed = time.monotonic()
    bed.kill(f"v{victim}")
    stream.join()
    return _outcome("one of two verifiers killed", "the session moves to the other verifier and finishes with the undisturbed text",
                    stream, ref, stream.first_after(killed), killed_verifier=f"v{victim}")

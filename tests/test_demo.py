"""`edgespec demo` end to end: real verifier and drafter node processes on loopback, lossless greedy output, clean shutdown."""

import json
import os
import subprocess
import sys
import uuid

import pytest


def _tagged_processes(tag: str) -> list[int]:
    """Live processes whose environment carries `tag` (the demo's node processes inherit it)."""
    needle = f"EDGESPEC_TEST_TAG={tag}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if needle in f.read().split(b"\0"):
                        found.append(int(entry))
            except OSError:
                continue
    return found


@pytest.mark.slow
def test_distributed_demo_is_lossless_and_stops_every_node():
    tag = uuid.uuid4().hex
    proc = subprocess.Popen([sys.executable, "-m", "edgespec.cli", "demo", "--prompts", "1", "--max-tokens", "8", "--loads", "1,3",
                             "--duration-s", "0.5", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ, EDGESPEC_TEST_TAG=tag))
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    report = json.loads(out.strip().splitlines()[-1])
    assert set(report["nodes"]) == {"edge-adaptive", "edge-static", "edge-tokens", "edge-small"}
    for name, node in report["nodes"].items():
        assert node["greedy_equal_ad"] == "1/1", name
        assert node["completion_tokens"] == 2 * 8  # one greedy and one sampled request of 8 tokens
    assert report["lossless"]
    sweep = {(r["sessions"], r["policy"]): r for r in report["sweep"]}
    assert set(sweep) == {(load, policy) for load in (1, 3) for policy in ("ad", "static", "adaptive")}
    for (load, policy), row in sweep.items():
        assert row["completion_tokens"] >= load * 8 and row["tokens_per_s"] > 0  # every client finished at least one request
        assert row["ratio_to_ad"] == pytest.approx(row["tokens_per_s"] / sweep[load, "ad"]["tokens_per_s"])
    assert sweep[1, "ad"]["mean_gamma"] == 0 and sweep[1, "static"]["mean_gamma"] > 0
    assert _tagged_processes(tag) == []  # every node process was stopped

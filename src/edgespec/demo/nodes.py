"""Node processes for the distributed demo: start `edgespec serve` / `edgespec edge` as child processes, wait until they listen, stop them cleanly."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import deque
from dataclasses import dataclass, field
from typing import Optional, Sequence

__all__ = ["NodeProcess", "NodeStartError", "post_json", "start_node", "stop_all"]

READY = {
    "serve": re.compile(r"listening on ws://(?P<host>[^:\s]+):(?P<port>\d+)"),
    "edge": re.compile(r"serving on http://(?P<host>[^:\s]+):(?P<port>\d+)"),
}


class NodeStartError(RuntimeError):
    """A node process exited or stayed silent before it announced its address."""


@dataclass
class NodeProcess:
    """One running node: its name, role, address and the last lines it printed."""

    name: str
    role: str  # "serve" | "edge"
    proc: subprocess.Popen
    host: str = ""
    port: int = 0
    tail: deque = field(default_factory=lambda: deque(maxlen=40))

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"


def _pump(node: NodeProcess, lines: "queue.Queue[Optional[str]]") -> None:
    """Copy the child's output into its tail and a queue (None at EOF)."""
    assert node.proc.stdout is not None
    for line in node.proc.stdout:
        node.tail.append(line.rstrip())
        lines.put(line)
    lines.put(None)


def start_node(name: str, role: str, args: Sequence[str], *, threads: int, timeout_s: float = 120.0,
               prefix: Sequence[str] = ()) -> NodeProcess:
    """Start `edgespec <role> <args>` with `threads` torch threads; return once it prints its address.

    `prefix` goes before the command, e.g. `["ip", "netns", "exec", NS]` to run the node in a network namespace.
    """
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    cmd = [*prefix, sys.executable, "-m", "edgespec.cli", role, *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)  # Ctrl-C reaches the demo only; it stops the children itself
    node = NodeProcess(name, role, proc)
    lines: "queue.Queue[Optional[str]]" = queue.Queue()
    threading.Thread(target=_pump, args=(node, lines), daemon=True).start()
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            stop_all([node])
            raise NodeStartError(f"{name} did not announce its address within {timeout_s:.0f} s:\n" + "\n".join(node.tail))
        if line is None:
            raise NodeStartError(f"{name} exited with code {proc.wait()}:\n" + "\n".join(node.tail))
        match = READY[role].search(line)
        if match:
            node.host, node.port = match["host"], int(match["port"])
            return node


def stop_all(nodes: Sequence[NodeProcess], timeout_s: float = 15.0) -> None:
    """SIGINT every node (their clean shutdown path), then kill whatever is still running after `timeout_s`."""
    for node in nodes:
        if node.proc.poll() is None:
            node.proc.send_signal(signal.SIGINT)
    deadline = time.monotonic() + timeout_s
    for node in nodes:
        try:
            node.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            node.proc.kill()
            node.proc.wait()


def post_json(url: str, body: dict, timeout_s: float = 600.0) -> dict:
    """POST `body` as JSON to a node's HTTP API; its JSON reply (urllib's HTTPError on a non-2xx status)."""
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:
        return json.loads(resp.read())

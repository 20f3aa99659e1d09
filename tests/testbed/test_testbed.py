"""The testbed itself: capability probe, namespaces and shaping that leave the host untouched, CPU quotas, cleanup after interrupts.

Everything past the probe needs root, network namespaces, veth, a bridge and tbf; where the kernel
lacks one, the tests skip with the probe's reason.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edgespec.testbed.cgroup import CpuQuota
from edgespec.testbed.check import probe
from edgespec.testbed.netns import PREFIX, Network, in_netns, netns_names, run_cmd
from edgespec.testbed.relay import RelayLink, RelayProcess, link_model

CAPS = probe()
needs_testbed = pytest.mark.skipif(CAPS.missing is not None, reason=CAPS.summary())
needs_quota = pytest.mark.skipif(CAPS.missing is not None or CAPS.cpu_quota is not None,
                                 reason=CAPS.summary() if CAPS.missing else f"no CPU quota: {CAPS.cpu_quota}")
ROOT = Path(__file__).resolve().parents[2]


def tag(letter: str) -> str:
    """A testbed tag of this process only, so concurrent test runs never share (or tear down) each other's namespaces."""
    return f"{letter}{os.getpid() % 100000}"


def test_probe_names_what_is_missing_or_what_it_found():
    caps = probe()
    text = caps.summary()
    if caps.missing:
        assert text.startswith("testbed unavailable: ") and caps.missing in text
    else:
        assert text.startswith("testbed available: namespaces, veth, bridge, tbf")
        assert ("netem" in text) and ("CPU quota" in text)
    assert not netns_names(f"{PREFIX}probe"), "the probe left a namespace behind"


def _host_view() -> str:
    """Everything of the host's network a testbed must not touch."""
    return "\n".join(run_cmd(args).stdout for args in (["ip", "-o", "link"], ["ip", "-o", "addr"], ["ip", "route"]))


def _transfer_bps(net: Network, src: str, dst_address: str, dst: str, nbytes: int) -> float:
    """Send `nbytes` from node `src` to a sink in node `dst`; the goodput seen by the sink."""
    ready, got = threading.Event(), {}

    def sink() -> None:
        with in_netns(net.netns_of(dst)):
            srv = socket.create_server((dst_address, 0))
        srv.settimeout(30)
        got["port"] = srv.getsockname()[1]
        ready.set()
        conn, _ = srv.accept()
        conn.settimeout(30)
        n, start = 0, time.perf_counter()
        while chunk := conn.recv(1 << 16):
            n += len(chunk)
        got["bps"] = n * 8 / (time.perf_counter() - start)
        conn.close()
        srv.close()

    thread = threading.Thread(target=sink)
    thread.start()
    ready.wait(5)
    with in_netns(net.netns_of(src)):
        client = socket.create_connection((dst_address, got["port"]), timeout=30)
    client.sendall(b"x" * nbytes)
    client.close()
    thread.join(30)
    return got["bps"]


@needs_testbed
def test_network_up_shapes_each_direction_and_down_leaves_the_host_as_it_was():
    before = _host_view()
    net = Network(tag("n"))
    try:
        net.up()
        net.add_node("v0", "10.88.1.1")
        net.add_node("d0", "10.88.2.1", uplink_bps=4e6, downlink_bps=16e6)
        assert set(netns_names(net.prefix)) == {f"{net.prefix}hub", f"{net.prefix}v0", f"{net.prefix}d0"}
        assert "10.88.2.1/16" in run_cmd(["ip", "-n", f"{net.prefix}d0", "-o", "addr"]).stdout
        assert "10.88" not in run_cmd(["ip", "-o", "addr"]).stdout, "a testbed address leaked into the host"
        up_bps = _transfer_bps(net, "d0", "10.88.1.1", "v0", 1_000_000)
        down_bps = _transfer_bps(net, "v0", "10.88.2.1", "d0", 4_000_000)
        assert 0.8 * 4e6 < up_bps < 1.05 * 4e6, up_bps  # TCP/IP headers take a few percent of the rate
        assert 0.8 * 16e6 < down_bps < 1.05 * 16e6, down_bps
        net.cut("d0", True)
        with in_netns(net.netns_of("d0")), pytest.raises(OSError):
            socket.create_connection(("10.88.1.1", 9), timeout=1.0)
    finally:
        net.down()
    assert not netns_names(net.prefix)
    assert _host_view() == before


@needs_testbed
def test_relay_in_the_hub_adds_the_link_latency_both_ways():
    net = Network(tag("r"))
    try:
        net.up()
        net.add_node("v0", "10.88.1.1")
        net.add_node("d0", "10.88.2.1", uplink_bps=50e6, downlink_bps=50e6)
        with in_netns(net.netns_of("v0")):
            echo = socket.create_server(("10.88.1.1", 0))
        port = echo.getsockname()[1]

        echo.settimeout(30)

        def serve() -> None:
            conn, _ = echo.accept()
            conn.settimeout(30)
            while data := conn.recv(4096):
                conn.sendall(data)
            conn.close()

        threading.Thread(target=serve, daemon=True).start()
        link = RelayLink("d0-v0", "10.88.1.1", port, listen_host="10.88.0.1", up=link_model(0.02), down=link_model(0.02))
        with RelayProcess([link], prefix=net.exec_prefix("hub")).start() as relay:
            with in_netns(net.netns_of("d0")):
                client = socket.create_connection(("10.88.0.1", relay.ports["d0-v0"]), timeout=30)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            rtts = []
            for _ in range(10):
                start = time.perf_counter()
                client.sendall(b"ping")
                assert client.recv(16) == b"ping"
                rtts.append(time.perf_counter() - start)
            client.close()
        rtts.sort()
        assert 0.040 <= rtts[5] < 0.040 + 0.025, rtts
    finally:
        net.down()


BUSY_CHILD = """
import sys, time
sys.stdin.readline()  # start only once the parent has placed this process
wall_s, cpu_s = time.perf_counter(), time.process_time()
x = 0
for i in range(6_000_000):
    x += i
print(time.perf_counter() - wall_s, time.process_time() - cpu_s)
"""


def _busy(quota: CpuQuota | None) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of a fixed busy loop, run in `quota` if given."""
    proc = subprocess.Popen([sys.executable, "-c", BUSY_CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    if quota is not None:
        quota.add(proc.pid)
    out, _ = proc.communicate("go\n", timeout=120)
    wall_s, cpu_s = map(float, out.split())
    return wall_s, cpu_s


@needs_quota
def test_cpu_quota_makes_a_process_a_slower_device():
    # The quota is a cap on CPU share, so it is checked as one: a busy process in a
    # quarter-core group gets at most a quarter of each wall second, however loaded the
    # host is (a loaded host only lowers the share; comparing wall times with a free
    # run does not hold on a shared 2-core machine, where the free run is slowed too).
    quota = CpuQuota(tag("c"), "slow", 0.25)
    try:
        free_wall_s, _ = _busy(None)
        slow_wall_s, slow_cpu_s = _busy(quota)
        assert quota.throttled_s() > 0
    finally:
        quota.delete()
    assert slow_cpu_s / slow_wall_s <= 0.25 * 1.2, (slow_cpu_s, slow_wall_s)
    assert slow_wall_s > free_wall_s, (free_wall_s, slow_wall_s)
    assert not quota.path.exists()


TINY = """
[scenario]
name = "testbed-tiny"
[uplink]
bandwidth_hz = 1e6
upload_bytes_per_token = 4
[drafter]
name = "bundled-draft-cpu"
profile = "{profiles}/bundled_draft_cpu.json"
[drafter.model]
name = "bundled-draft"
n_layers = 2
hidden = 128
ffn_hidden = 384
vocab = 8192
[verifier]
name = "bundled-target-cpu"
profile = "{profiles}/bundled_target_cpu.json"
[verifier.model]
name = "bundled-target"
n_layers = 6
hidden = 512
ffn_hidden = 1376
vocab = 8192
[link]
uplink_bps = 10e6
downlink_bps = 10e6
latency_s = 0.005
[speculation]
q_mode = "ids"
alpha = 0.8
[[task]]
name = "code"
input_tokens = 8
output_tokens = 16
spectral_efficiency_bps_per_hz = 1.0
[sim]
gamma = 4
[[sim.drafter_group]]
name = "one"
count = 1
slowdown = 2.0
[sim.workload]
kind = "closed"
requests = 2
"""


def _scenario(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY.format(profiles=ROOT / "examples" / "profiles"))
    return path


class _Testbed:
    """A `testbed up` process whose output is read to the end (a full pipe never stalls it), for the interrupt tests."""

    def __init__(self, scenario: Path, tag: str, *, sigint_ignored: bool = False) -> None:
        env = dict(os.environ, PYTHONFAULTHANDLER="1")  # SIGABRT makes it print every thread's stack
        # `sigint_ignored`: started the way a script's background job (`cmd &`) is, with SIGINT ignored (inherited across exec)
        preexec = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if sigint_ignored else (lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        self.proc = subprocess.Popen([sys.executable, "-m", "edgespec.cli", "testbed", "up", "--scenario", str(scenario), "--tag", tag],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True, env=env,
                                     preexec_fn=preexec)
        self.lines: list[str] = []
        up = threading.Event()
        self._reader = threading.Thread(target=self._read, args=(up,), daemon=True)
        self._reader.start()
        up.wait(300)
        if not up.is_set():
            raise AssertionError("testbed up did not come up:\n" + self.output(abort=True))

    def _read(self, up: threading.Event) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            self.lines.append(line)
            if "testbed up" in line:
                up.set()
        up.set()  # exited early: the caller sees why in the output

    def output(self, abort: bool = False) -> str:
        """What it printed; with `abort`, first its threads' stacks and the process tree (a hang's diagnosis)."""
        tree = ""
        if abort and self.proc.poll() is None:
            tree = subprocess.run(["ps", "-eo", "pid,pgid,stat,etime,args", "--forest"], capture_output=True, text=True).stdout
            tree += "".join(f"{who} {line}" for who, pid in (("test", "self"), ("testbed", str(self.proc.pid)))
                            for line in open(f"/proc/{pid}/status") if line.startswith(("Sig", "Shd")))
            self.proc.send_signal(signal.SIGABRT)
            self.proc.wait(30)
        self._reader.join(10)
        return "".join(self.lines) + tree

    def wait(self, timeout_s: float) -> int:
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"testbed up still running after {timeout_s:.0f} s:\n" + self.output(abort=True)) from None


@needs_quota
@pytest.mark.slow
def test_interrupted_testbed_tears_everything_down_and_down_clears_a_killed_one(tmp_path):
    scenario, t = _scenario(tmp_path), tag("i")
    mine = f"{PREFIX}{t}-"
    bed = _Testbed(scenario, t, sigint_ignored=True)  # the harder case: a plain Python program would ignore the Ctrl-C
    assert len(netns_names(mine)) == 3, bed.output()  # hub, v0, d0
    os.killpg(bed.proc.pid, signal.SIGINT)  # Ctrl-C
    assert bed.wait(60) == 0, bed.output()
    assert not netns_names(mine), "Ctrl-C left namespaces behind"

    bed = _Testbed(scenario, t)
    os.kill(bed.proc.pid, signal.SIGKILL)  # nothing of ours runs: `testbed down` must clean up
    bed.wait(10)
    assert len(netns_names(mine)) == 3
    done = subprocess.run([sys.executable, "-m", "edgespec.cli", "testbed", "down", "--tag", t], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "removed 3 namespace(s) and 1 cgroup(s)" in done.stdout, done.stdout
    assert not netns_names(mine)


def test_testbed_check_command_exit_code_matches_the_probe():
    done = subprocess.run([sys.executable, "-m", "edgespec.cli", "testbed", "check"], capture_output=True, text=True, timeout=60)
    assert done.returncode == (1 if CAPS.missing else 0)
    assert done.stdout.strip() == CAPS.summary()


@pytest.mark.skipif(os.geteuid() != 0, reason="checks what a user other than root is told; this run is not root")
def test_a_user_other_than_root_is_refused_clearly():
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child drops to user nobody and asks the probe (already imported: no file access needed)
        try:
            os.setgid(65534)
            os.setuid(65534)
            os.write(write, probe().summary().encode())
        finally:
            os._exit(0)
    os.close(write)
    answer = os.read(read, 4096).decode()
    os.waitpid(pid, 0)
    os.close(read)
    assert answer == "testbed unavailable: must run as root (network namespaces, tc and cgroups need it)"


def test_testbed_run_refuses_a_bad_scenario_clearly(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(TINY.format(profiles=ROOT / "examples" / "profiles").replace('kind = "closed"', 'kind = "bursty"'))
    done = subprocess.run([sys.executable, "-m", "edgespec.cli", "testbed", "run", "--scenario", str(bad)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "sim.workload.kind" in done.stderr and "bursty" in done.stderr

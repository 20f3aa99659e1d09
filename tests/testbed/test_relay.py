"""The testbed's delay relay on loopback: the simulator's link model per direction, order, loss, cuts, resets, and its process entry."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import socketserver
import statistics
import subprocess
import sys
import threading
import time

import pytest

from edgespec.testbed.relay import (
    NO_DELAY, Relay, RelayConfigError, RelayLink, RelayProcess, config_dict, link_model, load_config, parse_config,
)

LOOPBACK = "127.0.0.1"
SLACK_S = 0.015  # scheduling noise allowed above a model delay on a loaded two-core machine


def run(coro, timeout_s: float = 15.0):
    return asyncio.run(asyncio.wait_for(coro, timeout_s))


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Echo until EOF, then close."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


@contextlib.asynccontextmanager
async def relayed(*links: tuple[str, object, object, int]):
    """An echo server behind a started Relay with one link per (name, up, down, seed)."""
    server = await asyncio.start_server(_echo, LOOPBACK, 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with Relay([RelayLink(name, LOOPBACK, port, up=up, down=down, seed=seed) for name, up, down, seed in links]) as relay:
            yield relay
    finally:
        server.close()


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return reader, writer


async def round_trips(port: int, count: int, size_bytes: int = 16) -> list[float]:
    """Round-trip times of `count` messages sent one at a time on one connection."""
    reader, writer = await connect(port)
    out = []
    for i in range(count):
        message = str(i).zfill(size_bytes).encode()
        start_s = time.perf_counter()
        writer.write(message)
        assert await reader.readexactly(len(message)) == message
        out.append(time.perf_counter() - start_s)
    writer.close()
    return out


async def parallel_round_trips(port: int, connections: int, count: int) -> list[float]:
    return [rtt for rtts in await asyncio.gather(*(round_trips(port, count) for _ in range(connections))) for rtt in rtts]


def test_round_trip_is_up_plus_down_latency():
    async def main():
        async with relayed(("l", link_model(latency_s=0.03), link_model(latency_s=0.01), 0)) as relay:
            return await round_trips(relay.port("l"), 10)

    rtts = run(main())
    assert min(rtts) >= 0.04 - 1e-4  # never earlier than the model
    assert statistics.median(rtts) <= 0.04 + SLACK_S


def test_jitter_mean_and_median_match_the_model():
    latency_s, jitter_s = 0.005, 0.01
    model = link_model(latency_s=latency_s, jitter_s=jitter_s)

    async def main():
        async with relayed(("l", model, model, 7)) as relay:
            return await parallel_round_trips(relay.port("l"), 4, 40)

    rtts = run(main())
    assert min(rtts) >= 2 * latency_s - 1e-4
    # a round trip is 2 latencies plus the sum of two exponentials: Gamma(2, jitter_s), mean 2 θ, median 1.678 θ
    assert 2 * (latency_s + jitter_s) - 0.005 <= statistics.mean(rtts) <= 2 * (latency_s + jitter_s) + 0.005 + SLACK_S / 2
    median_s = 2 * latency_s + 1.678 * jitter_s
    assert median_s - 0.005 <= statistics.median(rtts) <= median_s + 0.005 + SLACK_S / 2


def test_order_is_kept_under_jitter():
    model = link_model(jitter_s=0.005)

    async def main():
        async with relayed(("l", model, model, 3)) as relay:
            reader, writer = await connect(relay.port("l"))
            for i in range(300):
                writer.write(b"%d\n" % i)
                if i % 3 == 0:
                    await asyncio.sleep(0)  # separate chunks: separate jitter draws
            got = [int(await reader.readline()) for _ in range(300)]
            writer.close()
            return got, relay.stats()["l"]

    got, stats = run(main())
    assert got == list(range(300))
    assert stats["up_chunks"] > 10 and stats["down_bytes"] == stats["up_bytes"]


def test_loss_adds_the_expected_retransmission_delay():
    loss, retransmit_s = 0.3, 0.03
    model = link_model(loss=loss, retransmit_s=retransmit_s)

    async def main():
        async with relayed(("l", model, NO_DELAY, 11)) as relay:
            return await parallel_round_trips(relay.port("l"), 4, 50)

    rtts = run(main())
    # with no latency a round trip is (failures × retransmit_s) plus loopback noise well under retransmit_s / 2
    failures = [round(rtt / retransmit_s) for rtt in rtts]
    expected = loss / (1 - loss)  # mean of a geometric count of failures: sd 0.78, standard error 0.055 over 200 messages
    assert abs(statistics.mean(failures) - expected) < 0.2
    assert abs(failures.count(0) / len(failures) - (1 - loss)) < 0.13
    extra_s = statistics.mean(rtts) - statistics.mean(rtt for rtt, k in zip(rtts, failures) if k == 0)  # minus the loopback overhead
    assert abs(extra_s - expected * retransmit_s) < 0.2 * retransmit_s
    assert sum(rtt >= k * retransmit_s - 1e-4 for rtt, k in zip(rtts, failures)) >= 0.9 * len(rtts)  # all but a rare 15 ms stall


def test_same_seed_gives_the_same_delays():
    model = link_model(jitter_s=0.02)

    async def main():  # three relays with a link of the same name: seeds 5, 5 and 6
        async with relayed(("l", model, NO_DELAY, 5)) as a, relayed(("l", model, NO_DELAY, 5)) as b, relayed(("l", model, NO_DELAY, 6)) as c:
            return await asyncio.gather(*(round_trips(relay.port("l"), 12) for relay in (a, b, c)))

    a, b, c = run(main())
    assert statistics.median(abs(x - y) for x, y in zip(a, b)) < 0.005
    assert statistics.median(abs(x - y) for x, y in zip(a, c)) > 0.005
    first = RelayLink("a", LOOPBACK, 1, seed=5)
    assert first.rng("up", 0).random() == first.rng("up", 0).random() != first.rng("up", 1).random() != first.rng("down", 0).random()


def test_rate_bps_adds_fifo_serialisation_delay():
    model = link_model(rate_bps=80_000.0)  # 1000 bytes take 0.1 s

    async def main():
        async with relayed(("l", model, NO_DELAY, 0)) as relay:
            single = await round_trips(relay.port("l"), 1, size_bytes=1000)
            reader, writer = await connect(relay.port("l"))
            start_s = time.perf_counter()
            writer.write(b"x" * 1000)
            await asyncio.sleep(0.01)
            writer.write(b"y" * 1000)
            await reader.readexactly(2000)
            writer.close()
            return single[0], time.perf_counter() - start_s

    single_s, pair_s = run(main())
    assert 0.1 - 1e-4 <= single_s <= 0.1 + 3 * SLACK_S  # single samples: a wider margin for a stall
    assert 0.2 - 1e-4 <= pair_s <= 0.2 + 3 * SLACK_S


def test_cut_holds_data_until_the_cut_ends_and_spares_other_links():
    model = link_model(latency_s=0.01)

    async def main():
        async with relayed(("a", model, model, 0), ("b", model, model, 0)) as relay:
            reader, writer = await connect(relay.port("a"))
            writer.write(b"before")
            assert await reader.readexactly(6) == b"before"
            relay.set_cut("a", True)
            writer.write(b"during")
            pending = asyncio.ensure_future(reader.readexactly(6))
            other = await round_trips(relay.port("b"), 3)  # link b is not cut
            await asyncio.sleep(0.25)
            held = relay.stats()["a"]
            assert not pending.done()
            relay.set_cut("a", False)
            start_s = time.perf_counter()
            got = await asyncio.wait_for(pending, 2.0)
            writer.close()
            return got, time.perf_counter() - start_s, held, other

    got, after_s, held, other = run(main())
    assert got == b"during"
    assert held["cut"] is True and held["up_held_bytes"] == 6 and held["up_bytes"] == 6
    assert 0.01 - 1e-4 <= after_s <= 0.01 + 6 * SLACK_S  # held data goes at once; the echo then takes the down latency
    assert max(other) <= 0.5


def test_reset_drops_the_client_connection():
    async def main():
        async with relayed(("l", link_model(latency_s=0.005), NO_DELAY, 0)) as relay:
            reader, writer = await connect(relay.port("l"))
            writer.write(b"ping")
            assert await reader.readexactly(4) == b"ping"
            assert relay.reset("l") == 1
            with contextlib.suppress(ConnectionError):
                assert await asyncio.wait_for(reader.read(100), 2.0) == b""
            writer.close()
            again = await round_trips(relay.port("l"), 1)  # the link still accepts new connections
            await asyncio.sleep(0.05)
            return relay.stats()["l"], again

    stats, again = run(main())
    assert stats["connections"] == 2 and stats["open"] == 0 and len(again) == 1


def test_half_close_and_close_are_forwarded():
    model = link_model(latency_s=0.01)

    async def main():
        async with relayed(("l", model, model, 0)) as relay:
            reader, writer = await connect(relay.port("l"))
            writer.write(b"bye")
            writer.write_eof()  # the echo server sees EOF after the data, echoes and closes
            got = await asyncio.wait_for(reader.read(), 2.0)
            writer.close()
            await asyncio.sleep(0.05)
            return got, relay.stats()["l"]

    got, stats = run(main())
    assert got == b"bye"
    assert stats["open"] == 0 and stats["up_bytes"] == 3 and stats["down_bytes"] == 3


def test_refused_upstream_closes_the_client():
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        closed_port = s.getsockname()[1]

    async def main():
        async with Relay([RelayLink("l", LOOPBACK, closed_port)]) as relay:
            reader, writer = await connect(relay.port("l"))
            with contextlib.suppress(ConnectionError):
                assert await asyncio.wait_for(reader.read(100), 2.0) == b""
            writer.close()
            return relay.stats()["l"]

    assert run(main())["open"] == 0


class _EchoHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        with contextlib.suppress(OSError):
            while data := self.request.recv(65536):
                self.request.sendall(data)


@contextlib.contextmanager
def threaded_echo_server():
    server = socketserver.ThreadingTCPServer((LOOPBACK, 0), _EchoHandler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_process_entry_relays_reports_and_exits_on_eof():
    with threaded_echo_server() as port:
        links = [RelayLink("d1", LOOPBACK, port, up=link_model(latency_s=0.01)), RelayLink("d2", LOOPBACK, port)]
        relay = RelayProcess(links).start()
        try:
            assert set(relay.ports) == {"d1", "d2"} and all(p > 0 for p in relay.ports.values())
            assert relay.addresses["d1"][0] == LOOPBACK
            with socket.create_connection((LOOPBACK, relay.ports["d1"]), timeout=5) as s:
                start_s = time.perf_counter()
                s.sendall(b"hello")
                assert s.recv(100) == b"hello"
                assert time.perf_counter() - start_s >= 0.01 - 1e-4
                relay.cut("d1", True)
                relay.cut("d1", False)
                stats = relay.stats()
                assert stats["d1"]["up_bytes"] == 5 and stats["d1"]["down_chunks"] == 1 and stats["d2"]["connections"] == 0
                assert relay.reset("d1") == 1
                with contextlib.suppress(ConnectionError):
                    assert s.recv(100) == b""
            with pytest.raises(KeyError):
                relay.cut("nope", True)
            proc = relay.process
        finally:
            final = relay.stop()
    assert proc.returncode == 0
    assert final["d1"]["up_bytes"] == 5 and final["d1"]["open"] == 0


def test_process_entry_exits_cleanly_on_sigterm(tmp_path):
    path = tmp_path / "relay.json"
    path.write_text(json.dumps({"links": [{"name": "x", "upstream_host": LOOPBACK, "upstream_port": 9}]}))
    with RelayProcess(path) as relay:
        proc = relay.process
        proc.send_signal(signal.SIGTERM)
        proc.wait(5)
        final = relay.stop()
    assert proc.returncode == 0 and final["x"]["connections"] == 0


BASE = {"name": "x", "upstream_host": LOOPBACK, "upstream_port": 9000}


@pytest.mark.parametrize("change, message", [
    ({"upstream_port": None}, "missing field 'upstream_port'"),
    ({"name": None}, "missing field 'name'"),
    ({"up": {"latency_s": -0.1}}, "up.latency_s must be >= 0"),
    ({"down": {"loss": 1.0}}, "down.loss must be in [0, 1)"),
    ({"down": {"loss": -0.1}}, "down.loss must be in [0, 1)"),
    ({"up": {"rate_bps": 0}}, "rate_bps must be > 0"),
    ({"up": {"latency": 0.1}}, "unknown field(s) 'latency'"),
    ({"upstream_port": "80"}, "upstream_port must be an integer"),
    ({"listen_port": 70000}, "listen_port must be in [0, 65535]"),
])
def test_bad_config_is_reported_clearly(change, message):
    entry = {k: v for k, v in {**BASE, **change}.items() if v is not None}
    with pytest.raises(RelayConfigError) as err:
        parse_config({"links": [entry]})
    assert message in str(err.value)


def test_config_shape_errors_and_round_trip(tmp_path):
    for raw in ({}, {"links": []}, [], {"links": [BASE], "extra": 1}):
        with pytest.raises(RelayConfigError):
            parse_config(raw)
    with pytest.raises(RelayConfigError, match="duplicate link name"):
        parse_config({"links": [BASE, BASE]})
    links = [RelayLink("a", "10.0.0.1", 8765, "0.0.0.0", 9000, link_model(0.01, 0.002, 0.05, 0.1), link_model(rate_bps=1e6), 4)]
    assert parse_config(json.loads(json.dumps(config_dict(links)))) == links
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(RelayConfigError, match="not valid JSON"):
        load_config(tmp_path / "bad.json")


def test_process_entry_rejects_a_bad_config(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"links": [{**BASE, "up": {"latency_s": -1}}]}))
    done = subprocess.run([sys.executable, "-m", "edgespec.testbed.relay", "--config", str(path)],
                          capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert done.returncode == 2 and "bad config" in done.stderr and "latency_s must be >= 0" in done.stderr
    with pytest.raises(RuntimeError, match="latency_s must be >= 0"):
        RelayProcess(path).start()

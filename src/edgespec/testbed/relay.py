"""A user-space TCP relay that gives each direction of a link the simulator's delay model (latency, jitter, loss, optional rate), one socket read being one message."""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import math
import os
import queue
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

from edgespec.sim.links import Link, LinkModel

__all__ = [
    "LinkModel", "link_model", "NO_DELAY", "RelayLink", "Relay", "RelayProcess", "RelayConfigError",
    "parse_config", "load_config", "config_dict", "main",
]

READ_CHUNK_BYTES = 256 * 1024  # asyncio reads at most this much per recv: one "message" of the model
HIGH_WATER_BYTES = 4 * 1024 * 1024  # held (not yet delivered) bytes per direction above which the source is paused
LOW_WATER_BYTES = 1024 * 1024  # ... and below which it is read again
_EPSILON_S = max(time.get_clock_info("monotonic").resolution, 1e-6)
DIRECTIONS = ("up", "down")  # up: client -> upstream, down: upstream -> client


def link_model(latency_s: float = 0.0, jitter_s: float = 0.0, loss: float = 0.0, retransmit_s: float = 0.2,
               rate_bps: Optional[float] = None) -> LinkModel:
    """The simulator's `LinkModel` for one relay direction; `rate_bps=None` (the default: tc shapes bandwidth) is an infinite rate."""
    return LinkModel(math.inf if rate_bps is None else rate_bps, latency_s, jitter_s, loss, retransmit_s)


NO_DELAY = link_model()


class RelayConfigError(ValueError):
    """A relay configuration that cannot be used (missing or unknown field, bad value)."""


@dataclass(frozen=True)
class RelayLink:
    """One relayed link: connections to listen_host:listen_port (0 = ephemeral) are forwarded to upstream_host:upstream_port.

    `up` applies to client -> upstream bytes, `down` to upstream -> client bytes; `seed` seeds their random draws.
    """

    name: str
    upstream_host: str
    upstream_port: int
    listen_host: str = "127.0.0.1"
    listen_port: int = 0
    up: LinkModel = NO_DELAY
    down: LinkModel = NO_DELAY
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or any(c.isspace() for c in self.name):
            raise RelayConfigError(f"link name must be a non-empty string without spaces, got {self.name!r}")
        if not 0 <= self.listen_port <= 65535 or not 0 < self.upstream_port <= 65535:
            raise RelayConfigError(f"link {self.name!r}: listen_port must be in [0, 65535] and upstream_port in [1, 65535]")

    def rng(self, direction: str, connection: int) -> random.Random:
        """The random stream of one direction of the `connection`-th accepted connection (never the global RNG)."""
        return random.Random(f"{self.seed}/{self.name}/{direction}/{connection}")


# ---------------------------------------------------------------------------------------------- config


_LINK_KEYS = ("name", "listen_host", "listen_port", "upstream_host", "upstream_port", "up", "down", "seed")
_MODEL_KEYS = ("latency_s", "jitter_s", "loss", "retransmit_s", "rate_bps")


def _number(raw: dict, key: str, default: Optional[float], where: str) -> Optional[float]:
    value = raw.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RelayConfigError(f"{where}.{key} must be a finite number, got {value!r}")
    return float(value)


def _integer(raw: dict, key: str, default: Optional[int], where: str) -> int:
    if key not in raw and default is None:
        raise RelayConfigError(f"{where}: missing field {key!r}")
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise RelayConfigError(f"{where}.{key} must be an integer, got {value!r}")
    return value


def _string(raw: dict, key: str, default: Optional[str], where: str) -> str:
    if key not in raw and default is None:
        raise RelayConfigError(f"{where}: missing field {key!r}")
    value = raw.get(key, default)
    if not isinstance(value, str) or not value:
        raise RelayConfigError(f"{where}.{key} must be a non-empty string, got {value!r}")
    return value


def _no_unknown(raw: dict, known: Sequence[str], where: str) -> None:
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise RelayConfigError(f"{where}: unknown field(s) {', '.join(map(repr, unknown))} (known: {', '.join(known)})")


def _model(raw: Any, where: str) -> LinkModel:
    """One direction's model from {latency_s, jitter_s, loss, retransmit_s, rate_bps}; every field is optional."""
    if not isinstance(raw, dict):
        raise RelayConfigError(f"{where} must be an object with fields {', '.join(_MODEL_KEYS)}")
    _no_unknown(raw, _MODEL_KEYS, where)
    values = {key: _number(raw, key, default, where) for key, default in (("latency_s", 0.0), ("jitter_s", 0.0), ("retransmit_s", 0.2))}
    for key, value in values.items():
        if value < 0:
            raise RelayConfigError(f"{where}.{key} must be >= 0, got {value}")
    loss = _number(raw, "loss", 0.0, where)
    if not 0.0 <= loss < 1.0:
        raise RelayConfigError(f"{where}.loss must be in [0, 1), got {loss}")
    rate_bps = _number(raw, "rate_bps", None, where)
    if rate_bps is not None and rate_bps <= 0:
        raise RelayConfigError(f"{where}.rate_bps must be > 0 or null (no rate limit), got {rate_bps}")
    return link_model(loss=loss, rate_bps=rate_bps, **values)


def _link(raw: Any, where: str) -> RelayLink:
    if not isinstance(raw, dict):
        raise RelayConfigError(f"{where} must be an object")
    if isinstance(raw.get("name"), str):
        where = f"{where} ({raw['name']!r})"
    _no_unknown(raw, _LINK_KEYS, where)
    return RelayLink(
        name=_string(raw, "name", None, where),
        upstream_host=_string(raw, "upstream_host", None, where),
        upstream_port=_integer(raw, "upstream_port", None, where),
        listen_host=_string(raw, "listen_host", "127.0.0.1", where),
        listen_port=_integer(raw, "listen_port", 0, where),
        up=_model(raw.get("up", {}), f"{where}.up"),
        down=_model(raw.get("down", {}), f"{where}.down"),
        seed=_integer(raw, "seed", 0, where),
    )


def parse_config(raw: Any) -> list[RelayLink]:
    """Links from a config object `{"links": [{name, upstream_host, upstream_port, listen_host?, listen_port?, up?, down?, seed?}, ...]}`."""
    if not isinstance(raw, dict) or not isinstance(raw.get("links"), list) or not raw["links"]:
        raise RelayConfigError("config must be a JSON object with a non-empty 'links' list")
    _no_unknown(raw, ("links",), "config")
    links = [_link(entry, f"links[{i}]") for i, entry in enumerate(raw["links"])]
    names = [link.name for link in links]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise RelayConfigError(f"duplicate link name(s): {', '.join(duplicates)}")
    return links


def load_config(path: Union[str, Path]) -> list[RelayLink]:
    """Links from a JSON config file (see `parse_config`)."""
    try:
        raw = json.loads(Path(path).read_text())
    except OSError as e:
        raise RelayConfigError(f"cannot read {path}: {e.strerror or e}") from None
    except json.JSONDecodeError as e:
        raise RelayConfigError(f"{path} is not valid JSON: {e}") from None
    return parse_config(raw)


def _model_dict(model: LinkModel) -> dict:
    rate = None if math.isinf(model.rate_bps) else model.rate_bps
    return {"latency_s": model.latency_s, "jitter_s": model.jitter_s, "loss": model.loss, "retransmit_s": model.retransmit_s, "rate_bps": rate}


def config_dict(links: Sequence[RelayLink]) -> dict:
    """The config object (JSON-ready) that `parse_config` turns back into `links`."""
    return {"links": [{"name": l.name, "listen_host": l.listen_host, "listen_port": l.listen_port, "upstream_host": l.upstream_host,
                       "upstream_port": l.upstream_port, "up": _model_dict(l.up), "down": _model_dict(l.down), "seed": l.seed} for l in links]}


# ---------------------------------------------------------------------------------------------- relay


class _LinkState:
    """A served link: its listening server, cut flag, open connections and delivered byte/chunk counters."""

    def __init__(self, spec: RelayLink) -> None:
        self.spec = spec
        self.server: Optional[asyncio.AbstractServer] = None
        self.cut = False
        self.accepted = 0
        self.connections: set[_Connection] = set()
        self.counters = {d: {"bytes": 0, "chunks": 0} for d in DIRECTIONS}

    def stats(self) -> dict:
        held = {d: sum(c.directions[d].held_bytes for c in self.connections) for d in DIRECTIONS}
        out: dict[str, Any] = {f"{d}_{k}": v for d in DIRECTIONS for k, v in self.counters[d].items()}
        out.update({f"{d}_held_bytes": held[d] for d in DIRECTIONS})
        out.update(connections=self.accepted, open=len(self.connections), cut=self.cut)
        return out


class _Direction:
    """One direction of one connection: each chunk received is delivered to the sink at the link model's arrival time, in order."""

    def __init__(self, link: Link, state: _LinkState, name: str, on_eof: Callable[[], None]) -> None:
        self.link, self.state, self.name, self.on_eof = link, state, name, on_eof
        self.loop = asyncio.get_running_loop()
        self.queue: collections.deque[tuple[float, Optional[bytes]]] = collections.deque()  # (arrival_s, chunk or None = EOF)
        self.timer: Optional[asyncio.TimerHandle] = None
        self.source: Optional[asyncio.Transport] = None
        self.sink: Optional[asyncio.Transport] = None
        self.held_bytes = 0
        self.sink_paused = self.source_paused = False
        self.eof_delivered = False

    def push(self, chunk: bytes) -> None:
        """A chunk read from the source now: one message of the model."""
        self.queue.append((self.link.send(self.loop.time(), len(chunk)), chunk))
        self.held_bytes += len(chunk)
        self.update_reading()
        self.arm()

    def push_eof(self) -> None:
        """The source half-closed: the EOF follows the data after the propagation latency (no jitter, loss or RNG draw)."""
        link = self.link
        arrival_s = max(max(self.loop.time(), link.free_at_s) + link.model.latency_s, link.last_arrival_s)
        self.queue.append((arrival_s, None))
        self.arm()

    def arm(self) -> None:
        """Schedule delivery of the head of the queue, unless already scheduled, cut, or the sink is not connected yet."""
        if self.timer is None and self.queue and self.sink is not None and not self.state.cut:
            self.timer = self.loop.call_at(self.queue[0][0], self.deliver)

    def deliver(self) -> None:
        self.timer = None
        if self.sink is None or self.sink.is_closing() or self.state.cut:
            return
        due_s = self.loop.time() + _EPSILON_S
        counter = self.state.counters[self.name]
        while self.queue and self.queue[0][0] <= due_s:
            chunk = self.queue.popleft()[1]
            if chunk is None:
                self.deliver_eof()
                return
            self.sink.write(chunk)
            self.held_bytes -= len(chunk)
            counter["bytes"] += len(chunk)
            counter["chunks"] += 1
        self.update_reading()
        self.arm()

    def deliver_eof(self) -> None:
        if self.sink.can_write_eof():
            self.sink.write_eof()
        self.eof_delivered = True
        self.on_eof()

    def update_reading(self) -> None:
        """Pause the source while too much is held or the sink's buffer is full; resume when both drain."""
        if self.source is None or self.source.is_closing():
            return
        busy = self.sink_paused or self.held_bytes > (LOW_WATER_BYTES if self.source_paused else HIGH_WATER_BYTES)
        if busy != self.source_paused:
            self.source_paused = busy
            (self.source.pause_reading if busy else self.source.resume_reading)()

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.queue.clear()
        self.held_bytes = 0


class _Side(asyncio.Protocol):
    """One socket of a relayed connection: what it reads feeds `inbound`, its write buffer throttles `outbound`."""

    def __init__(self, connection: "_Connection", inbound: _Direction, outbound: _Direction) -> None:
        self.connection, self.inbound, self.outbound = connection, inbound, outbound
        self.transport: Optional[asyncio.Transport] = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.connection.closing:  # the upstream connected just as the connection was aborted
            transport.abort()
            return
        _set_nodelay(transport)
        self.inbound.source = self.transport
        self.outbound.sink = self.transport
        self.outbound.arm()

    def data_received(self, data: bytes) -> None:
        self.inbound.push(data)

    def eof_received(self) -> bool:
        self.inbound.push_eof()
        return True  # keep the transport open: the other direction may still carry data (half-close)

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.connection.lost(self, exc)

    def pause_writing(self) -> None:
        self.outbound.sink_paused = True
        self.outbound.update_reading()

    def resume_writing(self) -> None:
        self.outbound.sink_paused = False
        self.outbound.update_reading()


def _set_nodelay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _Connection:
    """An accepted client connection and its upstream connection, pumped both ways through the link model."""

    def __init__(self, state: _LinkState) -> None:
        spec = state.spec
        index = state.accepted
        state.accepted += 1
        self.state = state
        self.directions = {d: _Direction(Link(getattr(spec, d), spec.rng(d, index)), state, d, self.maybe_finish) for d in DIRECTIONS}
        self.client = _Side(self, self.directions["up"], self.directions["down"])
        self.upstream = _Side(self, self.directions["down"], self.directions["up"])
        self.closing = False
        self.lost_sides: set[int] = set()
        self.connect_task: Optional[asyncio.Task] = None

    def accepted(self) -> _Side:
        self.state.connections.add(self)
        self.connect_task = asyncio.get_running_loop().create_task(self.connect())
        return self.client

    async def connect(self) -> None:
        spec = self.state.spec
        try:
            await asyncio.get_running_loop().create_connection(lambda: self.upstream, spec.upstream_host, spec.upstream_port)
        except OSError:
            self.abort()

    def maybe_finish(self) -> None:
        """Both directions delivered their EOF: close both sockets (buffered data is flushed first)."""
        if all(d.eof_delivered for d in self.directions.values()):
            self.closing = True
            for side in (self.client, self.upstream):
                if side.transport is not None:
                    side.transport.close()

    def abort(self) -> None:
        """Drop the connection both ways (RST), discarding what is held."""
        self.closing = True
        if self.connect_task is not None and not self.connect_task.done():
            self.connect_task.cancel()
        for d in self.directions.values():
            d.cancel()
        for side in (self.client, self.upstream):
            if side.transport is not None:
                side.transport.abort()
        self.state.connections.discard(self)

    def lost(self, side: _Side, exc: Optional[Exception]) -> None:
        self.lost_sides.add(id(side))
        if not self.closing:  # an error or an unexpected close on one side drops the other side too
            self.abort()
        elif len(self.lost_sides) == 2:
            self.state.connections.discard(self)

    def resume(self) -> None:
        for d in self.directions.values():
            d.arm()


class Relay:
    """Serves many relayed links in one asyncio loop; each direction of each connection follows its link model.

    The model is the simulator's (`edgespec.sim.links.Link`, reused here): per message, the propagation
    latency `latency_s`, exponential jitter of mean `jitter_s`, FIFO order (a message never arrives before
    the previous one), loss `loss` where each lost attempt costs one more transmission plus `retransmit_s`,
    and, when `rate_bps` is set, serialisation at that rate. A *message* for the relay is one chunk read
    from the socket: the protocol writes each message in one write with TCP_NODELAY, so a small message
    is one chunk, but a message larger than a segment burst may be split, and messages sent back to back
    may be read as one chunk (one jitter and one loss draw). A half-close or close is forwarded after the
    data (after `latency_s`). While a link is cut nothing is delivered on it either way; what is held is
    delivered when the cut ends (like TCP retransmitting across a short outage). A direction holds at most
    about HIGH_WATER_BYTES before it stops reading its source (like a TCP window), so its throughput is
    bounded by HIGH_WATER_BYTES / latency_s (4 MiB / 0.1 s = 335 Mbit/s): far above edge link rates.
    """

    def __init__(self, links: Sequence[RelayLink]) -> None:
        names = [link.name for link in links]
        if len(set(names)) != len(names):
            raise RelayConfigError(f"duplicate link names in {names}")
        self._links = {link.name: _LinkState(link) for link in links}

    async def start(self) -> None:
        """Listen on every link (raises OSError when a port cannot be bound, closing what was opened)."""
        loop = asyncio.get_running_loop()
        try:
            for state in self._links.values():
                state.server = await loop.create_server(lambda s=state: _Connection(s).accepted(), state.spec.listen_host, state.spec.listen_port)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Stop listening and abort every connection."""
        for state in self._links.values():
            if state.server is not None:
                state.server.close()
            for conn in list(state.connections):
                conn.abort()
        for state in self._links.values():
            if state.server is not None:
                await state.server.wait_closed()
                state.server = None

    async def __aenter__(self) -> "Relay":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def names(self) -> list[str]:
        return list(self._links)

    def address(self, name: str) -> tuple[str, int]:
        """(host, port) a link listens on (the bound port when the config said 0)."""
        server = self._state(name).server
        if server is None:
            raise RuntimeError("the relay is not started")
        host, port = server.sockets[0].getsockname()[:2]
        return host, port

    def port(self, name: str) -> int:
        return self.address(name)[1]

    def set_cut(self, name: str, cut: bool) -> None:
        """Cut a link (hold everything both ways) or end the cut (deliver what is due, in order)."""
        state = self._state(name)
        state.cut = bool(cut)
        if not cut:
            for conn in state.connections:
                conn.resume()

    def reset(self, name: str) -> int:
        """Abort every connection on a link (both sockets get a RST, held data is dropped); returns how many."""
        state = self._state(name)
        connections = list(state.connections)
        for conn in connections:
            conn.abort()
        return len(connections)

    def stats(self) -> dict[str, dict]:
        """Per link: delivered {up,down}_bytes and {up,down}_chunks, held bytes, connections accepted, open, cut."""
        return {name: state.stats() for name, state in self._links.items()}

    def _state(self, name: str) -> _LinkState:
        try:
            return self._links[name]
        except KeyError:
            raise KeyError(f"no link named {name!r} (links: {', '.join(self._links)})") from None


# ---------------------------------------------------------------------------------------------- process entry


def _command(relay: Relay, line: str) -> str:
    """The reply line to one stdin control line."""
    words = line.split()
    try:
        if words == ["stats"]:
            return json.dumps(relay.stats(), sort_keys=True)
        if len(words) == 3 and words[0] == "cut" and words[2] in ("on", "off"):
            relay.set_cut(words[1], words[2] == "on")
            return f"ok cut {words[1]} {words[2]}"
        if len(words) == 2 and words[0] == "reset":
            return f"ok reset {words[1]} {relay.reset(words[1])}"
    except KeyError as e:
        return f"error: {e.args[0]}"
    return f"error: unknown command {line.strip()!r} (commands: cut NAME on|off, reset NAME, stats)"


def _stdin_lines(loop: asyncio.AbstractEventLoop, lines: "asyncio.Queue[Optional[str]]") -> None:
    """Thread body: forward stdin lines to the loop, then None at EOF."""
    def put(item: Optional[str]) -> None:
        try:
            loop.call_soon_threadsafe(lines.put_nowait, item)
        except RuntimeError:  # the loop already closed (stopped by a signal)
            pass

    pending = b""
    while chunk := _read_stdin():  # raw reads: no buffered-stream lock for a daemon thread to hold at exit
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for line in complete:
            put(line.decode(errors="replace"))
    if pending:
        put(pending.decode(errors="replace"))
    put(None)


def _read_stdin() -> bytes:
    try:
        return os.read(sys.stdin.fileno(), 65536)
    except OSError:
        return b""


def _say(line: str) -> None:
    print(line, flush=True)


async def _serve(links: Sequence[RelayLink]) -> int:
    relay = Relay(links)
    try:
        await relay.start()
    except OSError as e:
        print(f"relay: cannot listen: {e}", file=sys.stderr, flush=True)
        return 1
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[Optional[str]] = asyncio.Queue()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lines.put_nowait, None)
    threading.Thread(target=_stdin_lines, args=(loop, lines), name="relay-stdin", daemon=True).start()
    for name in relay.names:
        host, port = relay.address(name)
        _say(f"relay {name} listening on {host}:{port}")
    _say("relay ready")
    while (line := await lines.get()) is not None:
        if line.strip():
            _say(_command(relay, line))
    _say(json.dumps(relay.stats(), sort_keys=True))
    await relay.close()
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`python -m edgespec.testbed.relay --config FILE.json`: serve the links until stdin EOF, SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m edgespec.testbed.relay", description=__doc__,
                                     epilog="stdin commands: 'cut NAME on|off', 'reset NAME', 'stats'. Exits at stdin EOF, SIGTERM or SIGINT.")
    parser.add_argument("--config", required=True, help="JSON file: {\"links\": [{name, upstream_host, upstream_port, listen_host, listen_port, up, down, seed}]}")
    args = parser.parse_args(argv)
    try:
        links = load_config(args.config)
    except RelayConfigError as e:
        print(f"relay: bad config: {e}", file=sys.stderr, flush=True)
        return 2
    return asyncio.run(_serve(links))


# ---------------------------------------------------------------------------------------------- Python-side helper


def _pump_lines(stream: Any, sink: "queue.Queue[Optional[str]]") -> None:
    for line in stream:
        sink.put(line.rstrip("\n"))
    sink.put(None)


@dataclass
class RelayProcess:
    """Runs `python -m edgespec.testbed.relay` as a child process (after `prefix`, e.g. ["ip", "netns", "exec", "ns1"]) and drives it over stdin.

    `config` is a JSON config file or a list of `RelayLink`s (written to a temporary file). Use as a
    context manager, or call `start()` and `stop()`.
    """

    config: Union[str, Path, Sequence[RelayLink]]
    prefix: Sequence[str] = ()
    python: str = sys.executable
    ready_timeout_s: float = 10.0
    reply_timeout_s: float = 5.0
    env: Optional[dict[str, str]] = None
    addresses: dict[str, tuple[str, int]] = field(default_factory=dict, init=False)
    final_stats: Optional[dict] = field(default=None, init=False)
    _proc: Optional[subprocess.Popen] = field(default=None, init=False, repr=False)
    _lines: "queue.Queue[Optional[str]]" = field(default_factory=queue.Queue, init=False, repr=False)
    _stderr: "queue.Queue[Optional[str]]" = field(default_factory=queue.Queue, init=False, repr=False)
    _tmp: Optional[str] = field(default=None, init=False, repr=False)

    @property
    def process(self) -> Optional[subprocess.Popen]:
        """The running child process (None before `start()` and after `stop()`)."""
        return self._proc

    @property
    def ports(self) -> dict[str, int]:
        return {name: port for name, (_, port) in self.addresses.items()}

    def start(self) -> "RelayProcess":
        """Start the process and wait for its `relay ready` line (RuntimeError with its stderr if it exits or times out first)."""
        path = self._config_path()
        argv = [*self.prefix, self.python, "-m", "edgespec.testbed.relay", "--config", str(path)]
        self._proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1, env=self.env)
        for stream, sink in ((self._proc.stdout, self._lines), (self._proc.stderr, self._stderr)):
            threading.Thread(target=_pump_lines, args=(stream, sink), daemon=True).start()
        try:
            self._wait_ready()
        except BaseException:
            self.stop(timeout_s=1.0)
            raise
        return self

    def _wait_ready(self) -> None:
        deadline_s = time.monotonic() + self.ready_timeout_s
        while (line := self._next_line(deadline_s - time.monotonic(), "the ready line")) != "relay ready":
            words = line.split()
            if len(words) == 5 and words[0] == "relay" and words[2:4] == ["listening", "on"]:
                host, _, port = words[4].rpartition(":")
                self.addresses[words[1]] = (host, int(port))

    def cut(self, name: str, on: bool = True) -> None:
        self._request(f"cut {name} {'on' if on else 'off'}")

    def reset(self, name: str) -> int:
        """Abort every connection on a link; returns how many were aborted."""
        return int(self._request(f"reset {name}").split()[-1])

    def stats(self) -> dict[str, dict]:
        return json.loads(self._request("stats"))

    def stop(self, timeout_s: float = 5.0) -> Optional[dict]:
        """Close stdin (the relay prints its final stats and exits), killing it after `timeout_s`; returns the final stats."""
        proc, self._proc = self._proc, None
        if proc is not None:
            try:
                proc.stdin.close()
                proc.wait(timeout_s)
            except (OSError, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait()
            self.final_stats = self._last_json()
        if self._tmp is not None:
            os.unlink(self._tmp)
            self._tmp = None
        return self.final_stats

    def __enter__(self) -> "RelayProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _config_path(self) -> Path:
        if isinstance(self.config, (str, Path)):
            return Path(self.config)
        fd, self._tmp = tempfile.mkstemp(prefix="edgespec-relay-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(config_dict(self.config), f)
        return Path(self._tmp)

    def _request(self, command: str) -> str:
        if self._proc is None:
            raise RuntimeError("the relay process is not running")
        self._proc.stdin.write(command + "\n")
        self._proc.stdin.flush()
        reply = self._next_line(self.reply_timeout_s, f"a reply to {command!r}")
        if reply.startswith("error:"):
            raise KeyError(reply[len("error:"):].strip()) if "no link named" in reply else RuntimeError(reply)
        return reply

    def _next_line(self, timeout_s: float, what: str) -> str:
        try:
            line = self._lines.get(timeout=max(timeout_s, 0.0))
        except queue.Empty:
            raise RuntimeError(f"relay: no {what} within the timeout; stderr: {self._stderr_text()!r}") from None
        if line is None:
            raise RuntimeError(f"relay exited before {what}; stderr: {self._stderr_text()!r}")
        return line

    def _stderr_text(self) -> str:
        out = []
        while True:
            try:
                line = self._stderr.get(timeout=0.2 if self._proc is not None and self._proc.poll() is not None else 0.0)
            except queue.Empty:
                break
            if line is None:
                break
            out.append(line)
        return "\n".join(out)

    def _last_json(self) -> Optional[dict]:
        last = None
        try:
            while (line := self._lines.get(timeout=1.0)) is not None:
                last = line if line.startswith("{") else last
        except queue.Empty:
            pass
        return json.loads(last) if last is not None else None


if __name__ == "__main__":
    sys.exit(main())

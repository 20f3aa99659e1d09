"""A drafter node: the draft model, the drafting engine, the verifier connections and the OpenAI-compatible HTTP server, started and stopped together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import uvicorn

from edgespec.edge.client import ClientConfig
from edgespec.edge.engine import DraftEngine, EngineConfig
from edgespec.edge.http import create_app
from edgespec.edge.metrics import EdgeMetrics
from edgespec.models.runtime import CausalLM

__all__ = ["EdgeConfig", "EdgeNode", "parse_verifiers"]

log = logging.getLogger(__name__)


def parse_verifiers(spec: str) -> tuple[str, ...]:
    """"HOST:PORT[,HOST:PORT...]" -> a tuple of addresses (each checked)."""
    addresses = tuple(a.strip() for a in spec.split(",") if a.strip())
    if not addresses:
        raise ValueError("no verifier address given (expected HOST:PORT[,HOST:PORT...])")
    for address in addresses:
        if "://" in address:
            continue
        host, sep, port = address.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"verifier address must be HOST:PORT, got {address!r}")
    return addresses


@dataclass(frozen=True)
class EdgeConfig:
    """Everything a drafter node needs: where the verifiers are, which draft model, the HTTP address, drafting settings."""

    verifiers: tuple[str, ...]
    draft_dir: Optional[Path] = None  # None: the bundled draft model
    http_host: str = "127.0.0.1"
    http_port: int = 8000  # 0: an ephemeral port (see EdgeNode.http_port)
    q_mode: str = "topk"
    top_k: int = 8
    gamma_policy: str = "adaptive"
    gamma: int = 4
    max_gamma: int = 16
    load_aware: bool = False  # put a policy other than "adaptive" behind the speculation gate too
    probe_every: int = 0
    pipeline: bool = False
    pipeline_min_hit_rate: float = 0.5
    auth_token: Optional[str] = None
    tls_ca_file: Optional[Path] = None  # CA trusted for wss:// verifiers (None: the system's trust store)
    node_id: str = "edge"
    model_name: Optional[str] = None  # the id in /v1/models (default: the verifier's target model id)
    seed: int = 0
    device: str = "cpu"
    connect_timeout_s: float = 5.0
    unavailable_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if isinstance(self.verifiers, str):
            object.__setattr__(self, "verifiers", parse_verifiers(self.verifiers))
        if not self.verifiers:
            raise ValueError("at least one verifier address is needed")
        if not 0 <= self.http_port < 65536:
            raise ValueError(f"http_port must be in [0, 65535], got {self.http_port}")

    def engine_config(self) -> EngineConfig:
        return EngineConfig(q_mode=self.q_mode, top_k=self.top_k, gamma_policy=self.gamma_policy, gamma=self.gamma,
                            max_gamma=self.max_gamma, load_aware=self.load_aware, probe_every=self.probe_every, pipeline=self.pipeline,
                            pipeline_min_hit_rate=self.pipeline_min_hit_rate,
                            seed=self.seed)

    def client_config(self, draft_model_id: str) -> ClientConfig:
        return ClientConfig(verifiers=tuple(self.verifiers), auth_token=self.auth_token, tls_ca_file=self.tls_ca_file, node_id=self.node_id, draft_model_id=draft_model_id,
                            connect_timeout_s=self.connect_timeout_s, unavailable_timeout_s=self.unavailable_timeout_s)


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the node (or its CLI) decides when to stop."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


class EdgeNode:
    """A running drafter node: `await start()`, then serve on `http_port` until `await stop()`."""

    def __init__(self, config: EdgeConfig, draft: Optional[CausalLM] = None):
        config.engine_config()  # validate the drafting settings before anything is loaded
        self.config = config
        self.draft = draft
        self.engine: Optional[DraftEngine] = None
        self.metrics: Optional[EdgeMetrics] = None  # Prometheus, served at /metrics on the HTTP port
        self._server: Optional[_Server] = None
        self._serve_task: Optional[asyncio.Task] = None

    @property
    def draft_model_id(self) -> str:
        path = getattr(self.draft, "path", None) if self.draft is not None else self.config.draft_dir
        return Path(path).name if path else "draft"

    def model_id(self) -> str:
        if self.config.model_name:
            return self.config.model_name
        target = self.engine.pool.target_model_id() if self.engine is not None else None
        return target or "edgespec"

    def health(self) -> dict:
        pool = self.engine.pool
        return {
            "status": "ok" if pool.connected else "no_verifier",
            "node_id": self.config.node_id,
            "active_sessions": self.engine.active_sessions,
            "verifiers": pool.status(),
        }

    def stats(self) -> dict:
        """Node-wide counters: requests, tokens, acceptance, γ, draft batch size, uplink bytes per drafted token."""
        out = self.engine.stats.to_dict()
        links = self.engine.pool.status()
        uplink = sum(link["bytes_sent"] for link in links)
        out.update(node_id=self.config.node_id, active_sessions=self.engine.active_sessions, uplink_bytes=uplink,
                   downlink_bytes=sum(link["bytes_received"] for link in links),
                   uplink_bytes_per_drafted_token=uplink / out["drafted_tokens"] if out["drafted_tokens"] else 0.0,
                   q_mode=self.config.q_mode, gamma_policy=self.config.gamma_policy, pipeline=self.config.pipeline, verifiers=links)
        return out

    async def start(self) -> None:
        """Load the draft model (if none was given), connect to the verifiers and start the HTTP server."""
        if self.draft is None:
            path = self.config.draft_dir
            if path is None:
                from edgespec.models.bundle import bundled_path

                path = bundled_path("draft")
            self.draft = await asyncio.to_thread(CausalLM.load, path, self.config.device)
        self.engine = DraftEngine(self.draft, self.config.engine_config(), self.config.client_config(self.draft_model_id))
        await self.engine.start()
        context = int(getattr(self.draft.config, "max_position_embeddings", 0) or 2048)
        app = create_app(self.engine, self.model_id, context, self.health, self.stats)
        self.metrics = EdgeMetrics(self.engine)
        self.engine.on_round = self.metrics.observe_round
        app.router.routes.append(self.metrics.route())
        uv_config = uvicorn.Config(app, host=self.config.http_host, port=self.config.http_port, log_level="warning",
                                   lifespan="off", access_log=False, timeout_graceful_shutdown=2)
        try:  # bind here, so a taken port is an OSError for the caller (uvicorn would sys.exit)
            host = self.config.http_host
            sock = socket.create_server((host, self.config.http_port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
        except OSError:
            await self.engine.stop()
            raise
        self._server = _Server(uv_config)
        self._serve_task = asyncio.create_task(self._server.serve(sockets=[sock]), name="edgespec-edge-http")
        while not self._server.started:
            if self._serve_task.done():
                await self.engine.stop()
                self._serve_task.result()
                raise RuntimeError(f"the HTTP server on {self.config.http_host}:{self.config.http_port} did not start")
            await asyncio.sleep(0.01)
        log.info("drafter node %s: HTTP on %s", self.config.node_id, self.http_url)

    @property
    def http_port(self) -> int:
        if self._server is None or not self._server.servers:
            raise RuntimeError("the node is not started")
        return self._server.servers[0].sockets[0].getsockname()[1]

    @property
    def http_url(self) -> str:
        host = self.config.http_host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.http_port}"

    async def wait_connected(self, timeout_s: float = 10.0) -> bool:
        """True once at least one verifier is connected."""
        return await self.engine.pool.wait_connected(timeout_s)

    async def stop(self) -> None:
        """Stop the HTTP server, fail what is still running, close the verifier connections."""
        if self._server is not None:
            self._server.should_exit = True
        if self.engine is not None:
            await self.engine.stop()
        if self._serve_task is not None:
            try:
                await self._serve_task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        self._server = self._serve_task = None

    async def __aenter__(self) -> "EdgeNode":
        await self.start()
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.stop()

"""`edgespec serve`: run a verifier node from the command line until SIGINT/SIGTERM (register `serve_command` on the typer app)."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path
from typing import Optional

import typer

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the node imports torch; `edgespec --help` and `edgespec plan` must not
    from edgespec.server.node import VerifierConfig

__all__ = ["serve_command", "run_node"]


async def run_node(config: VerifierConfig, *, target=None, announce=print, stop: Optional[asyncio.Event] = None) -> None:
    """Start a verifier node, announce its address in one flushed line, serve until SIGINT/SIGTERM (or `stop` is set), then stop cleanly."""
    from edgespec.server.node import VerifierNode

    node = VerifierNode(config, target=target)
    await node.start()
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread, or no signals here
            pass
    metrics = f" (metrics {node.metrics_url})" if node.metrics_url else ""
    announce(f"edgespec verifier listening on {node.url}{metrics}; target {node.model_id}, vocab {node.runner.vocab_size}", flush=True)
    try:
        await stop.wait()
    finally:
        await node.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.remove_signal_handler(sig)
            except (NotImplementedError, RuntimeError):
                pass


def _read_node_tokens(path: Optional[Path], auth_token_file: Optional[Path]) -> Optional[dict[str, str]]:
    """node id -> token from --node-tokens-file (None without it); bad files and --auth-token-file with it exit 2 naming the option."""
    if path is None:
        return None
    if auth_token_file is not None:
        raise typer.BadParameter("give --auth-token-file (one token for every drafter node) or --node-tokens-file (a token per node), not both",
                                 param_hint="--node-tokens-file")
    from edgespec.server.credentials import read_node_tokens  # torch-free

    try:
        return read_node_tokens(path)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--node-tokens-file") from None


def _refuse_missing_auth(host: str, auth_token, allow_no_auth: bool) -> None:
    """Exit 2 at once (before torch and the model load) when listening beyond loopback with no token and no --allow-no-auth."""
    from edgespec.server.kvbudget import missing_auth_error  # torch-free

    refusal = missing_auth_error(host, auth_token, allow_no_auth)
    if refusal is not None:
        typer.echo(f"edgespec serve: {refusal}", err=True)
        raise typer.Exit(2)


def serve_command(
    target: Optional[Path] = typer.Option(None, "--target", help="target model directory or .gguf file (default: the --pair's target)"),
    pair: str = typer.Option("bundled", "--pair", help="named pair whose target to serve: bundled or smollm2 (fetched on first use)"),
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on (0.0.0.0 for every interface; beyond loopback needs --auth-token-file)"),
    port: int = typer.Option(7700, "--port", help="WebSocket port (0 = pick a free one)"),
    metrics_port: Optional[int] = typer.Option(None, "--metrics-port", help="Prometheus /metrics port (off if unset, 0 = pick a free one)"),
    metrics_host: str = typer.Option(
        "127.0.0.1", "--metrics-host", help="address /metrics listens on; it has no authentication, so loopback unless you say otherwise (even with --host 0.0.0.0)"
    ),
    max_batch_tokens: int = typer.Option(2048, "--max-batch-tokens", help="target positions per verification batch"),
    max_batch_size: int = typer.Option(0, "--max-batch-size", help="drafts per batch (0 = no limit, 1 = batching off)"),
    batch_window_ms: float = typer.Option(
        0.0, "--batch-window-ms", min=0.0,
        help="how long the oldest queued draft may wait for others to join its batch (0: none; drafts that arrive together in a Batch frame, or during a forward, batch anyway)",
    ),
    merge_share: float = typer.Option(
        0.5, "--merge-share", min=0.0, max=1.0,
        help="a batch missing sessions whose drafts are due back holds for them, up to this share of a forward's fixed cost (0: off)",
    ),
    kv_budget_tokens: int = typer.Option(262_144, "--kv-budget-tokens", help="KV tokens all sessions may reserve (prompt + max_new_tokens + max γ each)"),
    max_sessions_per_node: int = typer.Option(0, "--max-sessions-per-node", min=0, help="open sessions per drafter node id; more are refused BUSY (0 = no limit)"),
    max_tokens_in_flight_per_node: int = typer.Option(
        0, "--max-tokens-in-flight-per-node", min=0,
        help="Σ (γ + 1) of one drafter node's drafts queued or being verified; a draft over it is refused BUSY, to be resent (0 = no limit)",
    ),
    auth_token_file: Optional[Path] = typer.Option(None, "--auth-token-file", help="file holding the bearer token drafter nodes must present (required beyond loopback)"),
    node_tokens_file: Optional[Path] = typer.Option(
        None, "--node-tokens-file",
        help="file of 'NODE_ID TOKEN' lines, one token per drafter node (mode 600): a node is the id its token belongs to, for limits and metrics (instead of --auth-token-file)",
    ),
    allow_no_auth: bool = typer.Option(
        False, "--allow-no-auth", help="INSECURE: listen beyond loopback without an auth token, so anyone who can reach the port can use the verifier"
    ),
    tls_cert: Optional[Path] = typer.Option(None, "--tls-cert", help="TLS certificate (PEM) for wss://"),
    tls_key: Optional[Path] = typer.Option(None, "--tls-key", help="TLS private key (PEM) for wss://"),
    device: str = typer.Option("cpu", "--device", help="torch device of the target model: cpu, cuda or cuda:N"),
    dtype: str = typer.Option("float32", "--dtype", help="target dtype: float32, bfloat16 or float16"),
    cuda_graphs: bool = typer.Option(False, "--cuda-graphs", help="capture decode/verify steps as CUDA graphs (the default with --device cuda)"),
    no_cuda_graphs: bool = typer.Option(False, "--no-cuda-graphs", help="run every step eagerly on CUDA"),
) -> None:
    """Run a verifier node: host the target model and verify drafts from drafter nodes in batches."""
    if (tls_cert is None) != (tls_key is None):
        raise typer.BadParameter("give both --tls-cert and --tls-key, or neither")
    auth_token = None
    if auth_token_file is not None:
        try:
            auth_token = auth_token_file.read_text().strip()
        except OSError as exc:
            raise typer.BadParameter(f"cannot read the auth token file: {exc}") from None
        if not auth_token:
            raise typer.BadParameter(f"{auth_token_file} is empty")
    node_tokens = _read_node_tokens(node_tokens_file, auth_token_file)
    _refuse_missing_auth(host, auth_token or node_tokens, allow_no_auth)
    from edgespec.models.cli import pair_path
    from edgespec.models.device import DeviceError, device_options

    try:  # a missing GPU or an unknown dtype fails here, before the model loads
        opts = device_options(device, dtype, cuda_graphs or None, no_cuda_graphs)
    except DeviceError as exc:
        typer.echo(f"edgespec serve: {exc}", err=True)
        raise typer.Exit(2) from None
    from edgespec.server.node import VerifierConfig

    target = pair_path(pair, "target", target)

    try:  # bad settings fail here, before the model loads
        config = VerifierConfig(
            target_dir=target, host=host, port=port, metrics_port=metrics_port, metrics_host=metrics_host, max_batch_tokens=max_batch_tokens,
            max_batch_size=max_batch_size, batch_window_ms=batch_window_ms, merge_share=merge_share, kv_budget_tokens=kv_budget_tokens,
            max_sessions_per_node=max_sessions_per_node, max_tokens_in_flight_per_node=max_tokens_in_flight_per_node,
            auth_token=auth_token, node_tokens=node_tokens, allow_no_auth=allow_no_auth, tls_cert=tls_cert, tls_key=tls_key, device=str(opts.device),
            dtype=str(opts.dtype).removeprefix("torch."), cuda_graphs=opts.cuda_graphs,
        )
    except ValueError as exc:
        typer.echo(f"edgespec serve: {exc}", err=True)
        raise typer.Exit(2) from None
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    from edgespec.models.runtime import ModelLoadError

    try:
        asyncio.run(run_node(config))
    except (OSError, ModelLoadError) as exc:  # the port is taken, the model directory is missing or broken
        typer.echo(f"edgespec serve: {exc}", err=True)
        raise typer.Exit(1) from None

"""`edgespec edge`: run a drafter node until SIGINT/SIGTERM (a plain typer command function; the app registers it)."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path
from typing import Optional

import typer

__all__ = ["edge_command"]


def _read_token(path: Optional[Path]) -> Optional[str]:
    if path is None:
        return None
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise typer.BadParameter(f"cannot read {path}: {exc}", param_hint="--auth-token-file") from None
    if not token:
        raise typer.BadParameter(f"{path} is empty", param_hint="--auth-token-file")
    return token


def edge_command(
    verifier: str = typer.Option(..., "--verifier", help="Verifier node(s): HOST:PORT[,HOST:PORT...] (wss://HOST:PORT for TLS)."),
    draft: Optional[Path] = typer.Option(None, "--draft", help="Draft model directory or .gguf file (default: the --pair's draft)."),
    pair: str = typer.Option("bundled", "--pair", help="Named pair whose draft to run: bundled or smollm2 (fetched on first use)."),
    http_host: str = typer.Option("127.0.0.1", "--http-host", help="Address of the OpenAI-compatible HTTP API."),
    http_port: int = typer.Option(8000, "--http-port", min=0, max=65535, help="HTTP port (0: any free port)."),
    q_mode: str = typer.Option("topk", "--q-mode", help="q on the wire: full | topk | tokens (temperature 0 always sends tokens)."),
    top_k: int = typer.Option(8, "--top-k", min=1, help="K for --q-mode topk."),
    gamma_policy: str = typer.Option(
        "adaptive", "--gamma-policy",
        help="γ policy: adaptive (AWC, γ = 0 where the verifier's load makes speculating lose) | static | heuristic | confidence | odld | "
             "leviathan | goodput | awc | awc_analytic | awc_solo.",
    ),
    gamma: int = typer.Option(4, "--gamma", min=0, max=32, help="γ of the static policy, start of the adaptive ones."),
    max_gamma: int = typer.Option(16, "--max-gamma", min=0, max=32, help="Upper bound on γ for every policy."),
    load_aware: bool = typer.Option(
        False, "--load-aware/--no-load-aware", help="Put the chosen policy behind the speculation gate (γ = 0 where speculating loses); adaptive always is."
    ),
    pipeline: bool = typer.Option(False, "--pipeline/--no-pipeline", help="Pipelined drafting: draft the next block while this one is verified."),
    pipeline_min_hit_rate: float = typer.Option(
        0.5, "--pipeline-min-hit-rate", min=0.0, max=1.0,
        help="With --pipeline, a session drafts speculatively while the draft model has other sessions' blocks to draft only at this hit rate (0: always).",
    ),
    auth_token_file: Optional[Path] = typer.Option(None, "--auth-token-file", help="File holding the verifiers' bearer token."),
    tls_ca_file: Optional[Path] = typer.Option(
        None, "--tls-ca-file", exists=True, dir_okay=False, help="PEM CA certificate(s) to trust for wss:// verifiers (default: the system's trust store)."
    ),
    node_id: str = typer.Option("edge", "--node-id", help="Name of this node (verifier logs and metrics)."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed of the draft sampler."),
    threads: int = typer.Option(0, "--threads", min=0, help="torch CPU threads for drafting (0: torch's default). Use 1 when nodes share a small machine."),
) -> None:
    """Run a drafter node: a draft model behind an OpenAI-compatible API, verified by verifier nodes."""
    from edgespec.edge.node import EdgeConfig, EdgeNode, parse_verifiers
    from edgespec.models.cli import pair_path
    from edgespec.models.runtime import ModelLoadError

    draft = pair_path(pair, "draft", draft)

    try:
        config = EdgeConfig(
            verifiers=parse_verifiers(verifier), draft_dir=draft, http_host=http_host, http_port=http_port, q_mode=q_mode,
            top_k=top_k, gamma_policy=gamma_policy, gamma=gamma, max_gamma=max_gamma, load_aware=load_aware, pipeline=pipeline,
            pipeline_min_hit_rate=pipeline_min_hit_rate,
            auth_token=_read_token(auth_token_file), tls_ca_file=tls_ca_file, node_id=node_id, seed=seed,
        )
        config.engine_config()
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2)
    if threads:
        import torch

        torch.set_num_threads(threads)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def main() -> None:
        node = EdgeNode(config)
        await node.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        print(f"edgespec edge: serving on {node.http_url} (verifiers: {', '.join(config.verifiers)})", flush=True)
        try:
            await stop.wait()
        finally:
            await node.stop()

    try:
        asyncio.run(main())
    except (ModelLoadError, FileNotFoundError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2)
    except OSError as exc:  # e.g. the HTTP port is taken
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1)
    sys.stdout.flush()

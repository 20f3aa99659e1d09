"""The `edgespec` command line: demo, generate, bench, plan (typer app; heavy imports happen inside commands)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="edgespec: lossless distributed speculative decoding for edge networks.",
)


@app.command()
def plan(
    scenario: Path = typer.Option(..., "--scenario", help="Scenario file (TOML)."),
    json_out: bool = typer.Option(False, "--json", help="End with one JSON object on the last line."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write a figure of the plan to this PNG."),
) -> None:
    """Plan batching, speculation length and bandwidth for a deployment (never imports torch)."""
    from edgespec.plan.cli import run_plan

    raise typer.Exit(run_plan(scenario=scenario, json_out=json_out, plot=plot))


if __name__ == "__main__":  # pragma: no cover
    app()

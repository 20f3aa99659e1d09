"""`edgespec testbed check|up|run|down`: the emulated edge network from the command line."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from edgespec.testbed.netns import TestbedError

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Emulated edge network: real nodes in network namespaces with shaped links (needs root).")


def _load(scenario: Path, **overrides):
    from edgespec.plan.scenario import ScenarioError
    from edgespec.testbed.spec import spec_from_scenario

    try:
        return spec_from_scenario(scenario, **overrides)
    except (ScenarioError, ValueError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2)


@app.command()
def check() -> None:
    """Say whether this machine can run the testbed (root, namespaces, veth, bridge, tbf, netem, CPU quotas)."""
    from edgespec.testbed.check import probe

    caps = probe()
    typer.echo(caps.summary())
    raise typer.Exit(1 if caps.missing else 0)


_TAG = typer.Option(None, "--tag", help="Name of the testbed (1-6 letters or digits; default: random).")


@app.command()
def down(tag: Optional[str] = typer.Option(None, "--tag", help="Only the testbed with this tag (default: every testbed).")) -> None:
    """Remove testbed namespaces, processes and cgroups left on this machine (after a crash or kill -9)."""
    from edgespec.testbed.bed import teardown_all

    namespaces, groups = teardown_all(tag)
    typer.echo(f"removed {namespaces} namespace(s) and {groups} cgroup(s)")


@app.command()
def up(scenario: Path = typer.Option(..., "--scenario", help="Simulator scenario file (docs/simulator.md)."),
       tag: Optional[str] = _TAG) -> None:
    """Bring the scenario's testbed up and keep it running until Ctrl-C; print how to reach each node."""
    from edgespec.testbed.bed import Testbed

    console = Console()
    spec, _ = _load(scenario)
    try:
        with Testbed(spec, tag=tag, say=lambda m: console.print(f"· {m}")) as bed:
            for name, d in bed.drafters.items():
                assert d.node is not None
                console.print(f"{name}: ip netns exec {bed.net.netns_of(name)} curl http://127.0.0.1:{d.node.port}/v1/models")
            console.print(f"verifier metrics: ip netns exec {bed.net.netns_of('v0')} curl http://127.0.0.1:9700/metrics")
            console.print("testbed up; Ctrl-C tears it down")
            while True:
                time.sleep(3600)
    except (TestbedError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1)
    except KeyboardInterrupt:
        console.print("· torn down")


@app.command()
def run(
    scenario: Path = typer.Option(..., "--scenario", help="Simulator scenario file (docs/simulator.md)."),
    requests: Optional[int] = typer.Option(None, "--requests", min=1, help="Override the workload's number of requests."),
    temperature: float = typer.Option(0.0, "--temperature", min=0.0, help="Sampling temperature of every request."),
    json_out: bool = typer.Option(False, "--json", help="End with one JSON object on the last line."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the report (with every request) as JSON."),
    tag: Optional[str] = _TAG,
) -> None:
    """Bring the testbed up, run the scenario's workload through the drafter nodes' OpenAI APIs, report, tear down."""
    from edgespec.testbed.run import run_scenario

    console = Console(stderr=json_out, width=max(Console().width, 150))
    spec, config = _load(scenario)
    try:
        report = run_scenario(spec, config, requests=requests, temperature=temperature, tag=tag,
                              say=lambda m: console.print(f"· {m}"))
    except TestbedError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1)
    console.print(report_table(report))
    if out is not None:
        out.write_text(json.dumps(report, indent=1))
    if json_out:
        typer.echo(json.dumps({k: v for k, v in report.items() if k != "requests"}))
    raise typer.Exit(1 if report["errors"] else 0)


def _ms(x: Optional[float]) -> str:
    return "–" if x is None else f"{x * 1e3:.1f}"


def report_table(report: dict) -> Table:
    """Per drafter node: link, device, requests, latency, TTFT, throughput, acceptance, uplink bytes per token."""
    table = Table(title_justify="left", title=f"testbed: {report['scenario']}, {report['requests_done']} requests in {report['wall_s']:.1f} s")
    for col in ("node", "link up/down Mbit/s", "one-way ms", "slowdown", "requests", "mean latency ms", "p95 ms",
                "mean TTFT ms", "tok/s", "acceptance", "uplink B/token wire (payload)"):
        table.add_column(col, justify="left" if col == "node" else "right")
    for name, n in report["nodes"].items():
        acc = n.get("acceptance")
        table.add_row(name, f"{n['uplink_mbps']:g}/{n['downlink_mbps']:g}", f"{n['latency_ms']:g}", f"{n['slowdown']:g}",
                      f"{n['requests'] - n['errors']}/{n['requests']}", _ms(n.get("mean_latency_s")), _ms(n.get("p95_latency_s")),
                      _ms(n.get("mean_ttft_s")), f"{n.get('throughput_tokens_per_s', 0):.1f}",
                      "–" if acc is None else f"{acc:.2f}",
                      f"{n.get('uplink_wire_bytes_per_token') or 0:.1f} ({n.get('uplink_bytes_per_token') or 0:.1f})")
    return table

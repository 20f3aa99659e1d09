"""`serve_command` as a typer command (options, help, bad options) and `run_node`, the loop behind it: one flushed address line, clean stop."""

import asyncio
import re

import typer
from typer.testing import CliRunner

from edgespec.server.cli import run_node, serve_command
from edgespec.server.node import VerifierConfig

from server_helpers import PROMPTS, ad_tokens, run
from drafting_client import TestDrafter


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("serve")(serve_command)
    app.command("other")(lambda: None)  # two commands, so "serve" is a subcommand as in edgespec's app
    return app


def test_help_lists_the_options():
    out = CliRunner().invoke(_app(), ["serve", "--help"], terminal_width=200)
    assert out.exit_code == 0
    for option in ("--target", "--host", "--port", "--metrics-port", "--max-batch-tokens", "--batch-window-ms", "--kv-budget-tokens", "--auth-token-file", "--tls-cert", "--tls-key"):
        assert option in out.output


def test_bad_options_fail_clearly(tmp_path):
    out = CliRunner().invoke(_app(), ["serve", "--tls-cert", str(tmp_path / "c.pem")])
    assert out.exit_code != 0 and "tls" in out.output.lower()
    empty = tmp_path / "token"
    empty.write_text("\n")
    out = CliRunner().invoke(_app(), ["serve", "--auth-token-file", str(empty)])
    assert out.exit_code != 0 and "empty" in out.output
    out = CliRunner().invoke(_app(), ["serve", "--target", str(tmp_path / "nope"), "--port", "0"])
    assert out.exit_code == 1 and "not found" in out.output


def test_run_node_announces_serves_and_stops(toy_pair):
    draft, target = toy_pair
    lines = []

    async def main():
        stop = asyncio.Event()
        config = VerifierConfig(host="127.0.0.1", port=0, metrics_port=0)
        task = asyncio.create_task(run_node(config, target=target, announce=lambda line, flush: lines.append(line), stop=stop))
        while not lines:
            await asyncio.sleep(0.01)
        url = re.search(r"(ws://\S+)", lines[0]).group(1)
        assert "metrics http://127.0.0.1:" in lines[0]
        async with TestDrafter(url, draft) as d:
            tokens = (await d.run_session(PROMPTS[0], max_new_tokens=8)).tokens
        stop.set()
        await task
        return tokens

    assert run(main()) == ad_tokens(target, [PROMPTS[0]], 8)[0]
    assert lines[0].startswith("edgespec verifier listening on ws://127.0.0.1:")

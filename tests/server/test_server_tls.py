"""Transport security end to end: an auth token is required beyond loopback (config, CLI, node), and the product's drafter decodes over wss:// with the CA trusted, exactly as AD."""

import asyncio
import logging
import subprocess
import sys
import time

import pytest
import typer
from typer.testing import CliRunner

from edgespec.edge import EdgeConfig, EdgeNode
from edgespec.edge.cli import edge_command
from edgespec.edge.engine import GenerationRequest
from edgespec.protocol import ErrorCode, ProtocolError, connect
from edgespec.server import VerifierConfig, VerifierNode
from edgespec.server.kvbudget import is_loopback_host
from edgespec.spec.sampling import GREEDY

from drafting_client import TestDrafter
from node_helpers import LOOPBACK
from tls_helpers import self_signed_cert
from server_helpers import PROMPTS, run, running_node

TOKEN = "s3cret-token"
BEYOND_LOOPBACK = ["0.0.0.0", "::", "10.1.2.3", "192.168.0.7", "example.org", ""]


# ---------------------------------------------------------------- auth beyond loopback


def test_loopback_hosts():
    assert all(is_loopback_host(h) for h in ("127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost", "LocalHost"))
    assert not any(is_loopback_host(h) for h in BEYOND_LOOPBACK)


@pytest.mark.parametrize("host", BEYOND_LOOPBACK)
def test_config_refuses_to_listen_beyond_loopback_without_a_token(host):
    with pytest.raises(ValueError) as info:
        VerifierConfig(host=host)
    message = str(info.value)
    assert f"refusing to listen on {host!r} without an auth token" in message and "--auth-token-file" in message and "--allow-no-auth" in message
    assert VerifierConfig(host=host, auth_token=TOKEN).auth_token == TOKEN
    assert VerifierConfig(host=host, allow_no_auth=True).exposed_without_auth


def test_config_on_loopback_needs_no_token():
    for host in ("127.0.0.1", "::1", "localhost"):
        assert not VerifierConfig(host=host).exposed_without_auth


def test_serve_cli_refuses_beyond_loopback_without_a_token_at_once():
    """`edgespec serve --host 0.0.0.0` exits 2 with the reason, before torch is imported or a model loaded."""
    code = ("import sys; from typer.testing import CliRunner; from edgespec.cli import app; "
            "r = CliRunner().invoke(app, ['serve', '--host', '0.0.0.0', '--port', '0']); "
            "print(r.exit_code, 'torch' in sys.modules); print(r.output)")  # fmt: skip
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    elapsed_s = time.perf_counter() - start
    status, message = out.stdout.split("\n", 1)
    assert status == "2 False", out
    assert "refusing to listen on '0.0.0.0' without an auth token" in message and "--allow-no-auth" in message
    assert elapsed_s < 30  # the interpreter and typer only (a model load would add torch)


def test_serve_cli_help_says_allow_no_auth_is_insecure():
    app = typer.Typer()
    app.command("serve")(__import__("edgespec.server.cli", fromlist=["serve_command"]).serve_command)
    app.command("other")(lambda: None)
    out = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "300", "TERMINAL_WIDTH": "300"})
    assert out.exit_code == 0 and "--allow-no-auth" in out.output and "INSECURE" in out.output
    for option in ("--max-sessions-per-node", "--max-tokens-in-flight-per-node"):
        assert option in out.output


def test_node_beyond_loopback_with_a_token_serves_and_refuses_strangers(toy_pair, ad_reference):
    """Bound to 0.0.0.0 with a token, reached through 127.0.0.1: the token gets exact AD output, no token gets AUTH."""
    draft, target = toy_pair

    async def main():
        async with VerifierNode(VerifierConfig(host="0.0.0.0", port=0, auth_token=TOKEN, max_gamma=8, batch_window_ms=1.0), target=target) as node:
            url = f"ws://{LOOPBACK}:{node.port}"
            with pytest.raises(ProtocolError) as info:
                await connect(url)
            assert info.value.code == ErrorCode.AUTH
            async with TestDrafter(url, draft, auth_token=TOKEN) as d:
                return (await d.run_session(PROMPTS[0], max_new_tokens=12)).tokens

    assert run(main()) == ad_reference[0]


def test_node_with_allow_no_auth_warns_and_serves(toy_pair, ad_reference, caplog):
    draft, target = toy_pair
    caplog.set_level(logging.WARNING, logger="edgespec.server.node")

    async def main():
        async with VerifierNode(VerifierConfig(host="0.0.0.0", port=0, allow_no_auth=True, max_gamma=8, batch_window_ms=1.0), target=target) as node:
            async with TestDrafter(f"ws://{LOOPBACK}:{node.port}", draft) as d:
                return (await d.run_session(PROMPTS[1], max_new_tokens=12)).tokens

    assert run(main()) == ad_reference[1]
    assert any("no auth token (--allow-no-auth)" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


# ---------------------------------------------------------------- TLS, with the product's drafter


def _edge_config(address: str, **overrides) -> EdgeConfig:
    settings = dict(verifiers=(address,), http_host=LOOPBACK, http_port=0, gamma_policy="static", gamma=3, auth_token=TOKEN)
    return EdgeConfig(**{**settings, **overrides})


async def _complete(node: EdgeNode, prompts) -> list[list[int]]:
    handles = [node.engine.submit(GenerationRequest(tuple(p), max_tokens=12, sampling=GREEDY, stop_at_eos=False)) for p in prompts]
    return [list(f.token_ids) for f in await asyncio.gather(*(h.result() for h in handles))]


def test_drafter_node_over_wss_with_the_ca_trusted_is_exact(toy_pair, ad_reference, tmp_path):
    """A verifier with a self-signed certificate and a token; the drafter node (edgespec.edge) trusts the CA file: greedy output equals AD."""
    draft, target = toy_pair
    cert, key = self_signed_cert(tmp_path)

    async def main():
        async with running_node(target, tls_cert=cert, tls_key=key, auth_token=TOKEN) as verifier:
            assert verifier.url.startswith("wss://")
            node = EdgeNode(_edge_config(verifier.url, tls_ca_file=cert), draft=draft)
            await node.start()
            try:
                assert await node.wait_connected(10.0), node.health()
                return await _complete(node, PROMPTS[:3]), verifier.metrics.registry.get_sample_value("spec_decode_num_drafts_total", {"node": "edge"})
            finally:
                await node.stop()

    tokens, drafts = run(main())
    assert tokens == ad_reference[:3]
    assert drafts > 0  # the drafts went through the TLS verifier


def test_drafter_that_does_not_trust_the_certificate_is_refused_clearly(toy_pair, tmp_path):
    """Without the CA (the system's trust store) or over plain ws://, the drafter never connects and says why; requests fail, nothing hangs."""
    draft, target = toy_pair
    cert, key = self_signed_cert(tmp_path)

    async def attempt(verifier, address: str) -> tuple[bool, str, str]:
        node = EdgeNode(_edge_config(address, unavailable_timeout_s=0.5, connect_timeout_s=2.0), draft=draft)
        await node.start()
        try:
            connected = await node.wait_connected(1.0)
            outcome = [e async for e in node.engine.submit(GenerationRequest((5, 9), max_tokens=4, sampling=GREEDY))][-1]
            return connected, node.health()["verifiers"][0]["last_error"], type(outcome).__name__
        finally:
            await node.stop()

    async def main():
        async with running_node(target, tls_cert=cert, tls_key=key, auth_token=TOKEN) as verifier:
            untrusted = await attempt(verifier, verifier.url)
            plain = await attempt(verifier, f"ws://{LOOPBACK}:{verifier.port}")
            return untrusted, plain, verifier.active_sessions

    (connected, error, outcome), (plain_connected, plain_error, plain_outcome), sessions = run(main())
    assert not connected and outcome == "Failed"
    assert "does not trust" in error and "--tls-ca-file" in error, error
    assert not plain_connected and plain_outcome == "Failed" and plain_error, plain_error
    assert sessions == 0


def test_edge_cli_takes_a_ca_file(tmp_path):
    app = typer.Typer()
    app.command()(edge_command)
    out = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "300", "TERMINAL_WIDTH": "300"})
    assert out.exit_code == 0 and "--tls-ca-file" in out.output
    out = CliRunner().invoke(app, ["--verifier", "wss://127.0.0.1:1", "--tls-ca-file", str(tmp_path / "missing.pem")],
                             env={"COLUMNS": "300", "TERMINAL_WIDTH": "300"})
    assert out.exit_code == 2 and "missing.pem" in "".join(out.output.split()), out.output  # rich may wrap a long path

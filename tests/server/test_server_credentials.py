"""Per-node credentials: a drafter node is the node id its token belongs to, so its per-node limits cannot be evaded by claiming a new id;
and the verifier's /metrics listens on loopback unless asked otherwise."""

import asyncio
import logging
import socket
import urllib.request

import pytest
import typer
from typer.testing import CliRunner

from edgespec.protocol import ErrorCode, ErrorEffect, ProtocolError, TransportClosed, connect
from edgespec.protocol import messages as m
from edgespec.server import VerifierConfig, VerifierNode
from edgespec.server.cli import serve_command
from edgespec.server.credentials import parse_node_tokens, read_node_tokens

from drafting_client import TestDrafter
from server_helpers import PROMPTS, run, running_node

TOKENS = {"edge-a": "token-of-edge-a-0123456789", "edge-b": "token-of-edge-b-9876543210"}
LOOPBACK = "127.0.0.1"


# ---------------------------------------------------------------- the tokens file


def test_tokens_file_format(tmp_path):
    text = "# drafter nodes\nedge-a  token-of-edge-a-0123456789\n\n  edge-b\ttoken-of-edge-b-9876543210  \n"
    assert parse_node_tokens(text) == TOKENS
    path = tmp_path / "tokens"
    path.write_text(text)
    path.chmod(0o600)
    assert read_node_tokens(path) == TOKENS


@pytest.mark.parametrize(
    "text,needle",
    [
        ("edge-a\n", "line 1: expected 'NODE_ID TOKEN', got 1 fields"),
        ("edge-a t1 extra\n", "line 1: expected 'NODE_ID TOKEN', got 3 fields"),
        ("edge-a t1\nedge-a t2\n", "line 2: node id 'edge-a' appears twice"),
        ("edge-a t1\nedge-b t1\n", "line 2: node 'edge-b' has the same token as node 'edge-a'"),
        ("x" * 65 + " t1\n", "longer than 64 characters"),
        ("# nothing\n\n", "no 'NODE_ID TOKEN' lines"),
    ],
)
def test_bad_tokens_files_are_refused_naming_the_line(text, needle):
    with pytest.raises(ValueError) as info:
        parse_node_tokens(text)
    assert needle in str(info.value)


def test_tokens_file_other_users_can_read_is_refused(tmp_path):
    path = tmp_path / "tokens"
    path.write_text("edge-a t1\n")
    path.chmod(0o644)
    with pytest.raises(ValueError, match=r"accessible to other users \(mode 0644\); restrict it with: chmod 600"):
        read_node_tokens(path)


def _cli() -> typer.Typer:
    app = typer.Typer()
    app.command("serve")(serve_command)
    app.command("other")(lambda: None)
    return app


def test_serve_cli_refuses_bad_tokens_files_before_loading(tmp_path):
    loose = tmp_path / "loose"
    loose.write_text("edge-a t1\n")
    loose.chmod(0o644)
    shared = tmp_path / "shared"
    shared.write_text("t0\n")
    good = tmp_path / "good"
    good.write_text("edge-a t1\n")
    good.chmod(0o600)
    for args, needle in (
        (["--node-tokens-file", str(loose)], "accessible to other users"),
        (["--node-tokens-file", str(tmp_path / "missing")], "cannot read"),
        (["--node-tokens-file", str(good), "--auth-token-file", str(shared)], "not both"),
    ):
        out = CliRunner().invoke(_cli(), ["serve", "--target", str(tmp_path / "nope"), *args], terminal_width=300)
        assert out.exit_code == 2 and "--node-tokens-file" in out.output and needle in out.output, out.output
    # a good file counts as a token beyond loopback: it gets as far as loading the (missing) model
    out = CliRunner().invoke(_cli(), ["serve", "--host", "0.0.0.0", "--node-tokens-file", str(good), "--target", str(tmp_path / "nope")])
    assert out.exit_code == 1 and "not found" in out.output, out.output


def test_config_takes_one_kind_of_token():
    with pytest.raises(ValueError, match="not both"):
        VerifierConfig(auth_token="t", node_tokens=TOKENS)
    with pytest.raises(ValueError, match="empty"):
        VerifierConfig(node_tokens={})
    assert not VerifierConfig(host="0.0.0.0", node_tokens=TOKENS).exposed_without_auth


# ---------------------------------------------------------------- identity at the node


async def _hello(url: str, token: str, node_id: str):
    """Connect with `token`, send Hello claiming `node_id`; returns (transport, first answer)."""
    from edgespec.protocol import DrafterConnection

    transport = await connect(url, auth_token=token)
    conn = DrafterConnection()
    await transport.send(conn.send(m.hello(node_id)))
    return transport, conn, conn.receive(await asyncio.wait_for(transport.recv(), 10))


def test_a_node_at_its_session_limit_cannot_open_more_under_another_claimed_id(toy_pair, caplog):
    draft, target = toy_pair
    caplog.set_level(logging.INFO, logger="edgespec.server.node")
    sampling = m.Sampling(0.0)

    async def main():
        async with running_node(target, node_tokens=TOKENS, max_sessions_per_node=2, metrics_port=0) as node:
            url = node.url
            # 1. edge-a opens its two sessions and keeps them open
            a = await TestDrafter(url, draft, node_id="edge-a", auth_token=TOKENS["edge-a"]).__aenter__()
            opened = [await a.open(p, sampling, 8) for p in PROMPTS[:2]]
            assert all(ev.kind == "session_opened" for _, ev in opened)
            # 2. the same token claiming another id: refused with AUTH, and the connection ends
            transport, _, event = await _hello(url, TOKENS["edge-a"], "edge-z")
            err = ProtocolError.from_message(event.message)
            assert event.kind == "error" and err.code is ErrorCode.AUTH and err.field == "hello.node_id"
            assert "belongs to drafter node 'edge-a'" in err.message and "--node-id edge-a" in err.message
            with pytest.raises(TransportClosed):
                await asyncio.wait_for(transport.recv(), 10)
            # 3. the same token claiming no id, or its own: it is edge-a, at its limit: BUSY
            for claimed in ("", "edge-a"):
                transport, conn, event = await _hello(url, TOKENS["edge-a"], claimed)
                assert event.kind == "hello_ack"
                await transport.send(conn.send(m.open_session(1, PROMPTS[2], sampling, max_new_tokens=8)))
                err = ProtocolError.from_message(conn.receive(await asyncio.wait_for(transport.recv(), 10)).message)
                assert err.code is ErrorCode.BUSY and err.effect is ErrorEffect.SESSION_CLOSED and "'edge-a' has 2 sessions open" in err.message
                await transport.close()
            # 4. edge-b is another node, with limits of its own
            async with TestDrafter(url, draft, node_id="edge-b", auth_token=TOKENS["edge-b"]) as b:
                b_tokens = (await b.run_session(PROMPTS[3], max_new_tokens=6)).tokens
            # 5. an unknown token, or none, is refused in the handshake (HTTP 401)
            for token in ("token-of-edge-c-0000000000", None):
                with pytest.raises(ProtocolError) as info:
                    await connect(url, auth_token=token)
                assert info.value.code is ErrorCode.AUTH and "401" in info.value.message
            metrics = node.metrics.render().decode()
            await a.close()
            return b_tokens, metrics

    b_tokens, metrics = run(main())
    assert len(b_tokens) == 6
    assert 'edgespec_verifier_active_sessions{node="edge-a"} 2.0' in metrics
    assert 'edgespec_verifier_node_limit_refusals_total{limit="sessions",node="edge-a"} 2.0' in metrics
    assert "edge-z" not in metrics  # labels carry the authenticated id only


def test_single_token_mode_still_takes_node_ids_from_hello(toy_pair):
    draft, target = toy_pair

    async def main():
        async with running_node(target, auth_token="shared-token", max_sessions_per_node=1) as node:
            async with TestDrafter(node.url, draft, node_id="one", auth_token="shared-token") as d1, \
                    TestDrafter(node.url, draft, node_id="two", auth_token="shared-token") as d2:
                _, first = await d1.open(PROMPTS[0], m.Sampling(0.0), 8)
                _, second = await d2.open(PROMPTS[1], m.Sampling(0.0), 8)  # another node by its Hello: its own limit
                _, third = await d1.open(PROMPTS[2], m.Sampling(0.0), 8)
                return first.kind, second.kind, ProtocolError.from_message(third.message).code

    assert run(main()) == ("session_opened", "session_opened", ErrorCode.BUSY)


# ---------------------------------------------------------------- /metrics binds to loopback


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def test_metrics_listen_on_loopback_even_when_the_node_listens_everywhere(toy_pair, caplog):
    _, target = toy_pair
    caplog.set_level(logging.WARNING, logger="edgespec.server.node")

    async def main():
        out = {}
        for metrics_host in (None, "0.0.0.0"):
            extra = {} if metrics_host is None else {"metrics_host": metrics_host}
            config = VerifierConfig(host="0.0.0.0", port=0, metrics_port=0, node_tokens=TOKENS, **extra)
            async with VerifierNode(config, target=target) as node:
                # 127.0.0.2 is a loopback address too, but not the one a 127.0.0.1-bound socket accepts on
                out[metrics_host] = (node.metrics_url, _reachable("127.0.0.2", node.port), _reachable("127.0.0.1", node.metrics_port),
                                     _reachable("127.0.0.2", node.metrics_port))
                with urllib.request.urlopen(node.metrics_url, timeout=5) as reply:
                    assert b"edgespec_verifier_queue_depth" in reply.read()
        return out

    out = run(main())
    url, ws_other, metrics_loopback, metrics_other = out[None]
    assert url.startswith("http://127.0.0.1:") and ws_other and metrics_loopback and not metrics_other
    url, ws_other, metrics_loopback, metrics_other = out["0.0.0.0"]
    assert url.startswith("http://0.0.0.0:") and metrics_other
    assert [r.getMessage() for r in caplog.records if "/metrics listening on 0.0.0.0" in r.getMessage()]

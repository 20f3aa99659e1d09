"""WebSocket transport over loopback: a real exchange, bearer-token auth in the handshake, bad frames, size limits, TLS."""

import asyncio
import logging
import ssl

import pytest
from websockets.asyncio.client import connect as raw_connect
from websockets.exceptions import InvalidStatus

from edgespec.protocol import (
    ErrorCode,
    ProtocolError,
    Transport,
    TransportClosed,
    VerifierConnection,
    WebSocketTransport,
    connect,
    decode,
    encode,
    pack_q,
    serve,
)
from edgespec.protocol import messages as m

from protocol_examples import V
from tls_helpers import self_signed_cert

TOKEN = "s3cret-token"
LOOPBACK = "127.0.0.1"


def _run(coro, timeout_s: float = 20.0):
    return asyncio.run(asyncio.wait_for(coro, timeout_s))


def _answer(conn: VerifierConnection, event):
    """A toy verifier's reply: accept one token of every draft."""
    sid = event.session_id
    if event.kind == "hello":
        return m.hello_ack("v", "toy", V)
    if event.kind in ("open_session", "resume"):
        return m.session_opened(sid, conn.session(sid).position)
    if event.kind == "draft":
        gamma = event.block.gamma
        return m.verdict(sid, event.message.position, min(1, gamma), 3, gamma <= 1, m.load_hints(queue_depth=1))
    if event.kind == "close":
        return m.close(sid)
    return None


async def toy_verifier(transport: Transport) -> None:
    """Serve one connection: answer every message, answer every bad one with its Error and carry on."""
    conn = VerifierConnection(V)
    while True:
        try:
            event = conn.receive(await transport.recv())
        except ProtocolError as exc:
            await transport.send(conn.send(exc.to_envelope()))
            continue
        reply = _answer(conn, event)
        if reply is not None:
            await transport.send(conn.send(reply))


async def _exchange(client: Transport) -> list[str]:
    """hello, open, two rounds, close; returns the kinds received."""
    kinds = []
    for env in [m.hello("edge"), m.open_session(1, [1, 2, 3], m.Sampling(0.0)), m.draft(1, 3, [4, 5], pack_q("tokens")), m.draft(1, 5, [6], pack_q("tokens")), m.close(1)]:
        await client.send(env)
        kinds.append((await client.recv()).WhichOneof("msg"))
    return kinds


# ---------------------------------------------------------------- exchange and auth


def test_loopback_exchange_with_auth():
    async def main():
        async with await serve(toy_verifier, LOOPBACK, 0, auth_token=TOKEN) as server:
            assert server.port > 0
            async with await connect(f"ws://{LOOPBACK}:{server.port}", auth_token=TOKEN) as client:
                assert isinstance(client, WebSocketTransport) and client.peer.endswith(str(server.port))
                kinds = await _exchange(client)
                assert client.messages_sent == client.messages_received == 5 and client.bytes_received > 0
            return kinds

    assert _run(main()) == ["hello_ack", "session_opened", "verdict", "verdict", "close"]


@pytest.mark.parametrize("token", [None, "wrong", ""])
def test_missing_or_wrong_token_is_refused_in_the_handshake(token):
    async def main():
        async with await serve(toy_verifier, LOOPBACK, 0, auth_token=TOKEN) as server:
            url = f"ws://{LOOPBACK}:{server.port}"
            with pytest.raises(ProtocolError) as info:
                await connect(url, auth_token=token)
            assert info.value.code is ErrorCode.AUTH
            headers = {"Authorization": f"Bearer {token}"} if token is not None else None
            with pytest.raises(InvalidStatus) as raw:
                await raw_connect(url, additional_headers=headers)
            assert raw.value.response.status_code == 401
            assert "Bearer" in raw.value.response.headers["WWW-Authenticate"]

    _run(main())


def test_token_scheme_is_case_insensitive_and_other_schemes_are_refused():
    async def main():
        async with await serve(toy_verifier, LOOPBACK, 0, auth_token=TOKEN) as server:
            url = f"ws://{LOOPBACK}:{server.port}"
            async with await raw_connect(url, additional_headers={"Authorization": f"bearer {TOKEN}"}):
                pass
            with pytest.raises(InvalidStatus):
                await raw_connect(url, additional_headers={"Authorization": f"Basic {TOKEN}"})

    _run(main())


def test_server_without_a_token_accepts_anyone():
    async def main():
        async with await serve(toy_verifier, LOOPBACK, 0) as server:
            async with await connect(f"ws://{LOOPBACK}:{server.port}") as client:
                return await _exchange(client)

    assert _run(main())[0] == "hello_ack"


# ---------------------------------------------------------------- bad input keeps the connection


def test_bad_frames_get_errors_and_the_connection_keeps_serving():
    async def main():
        async with await serve(toy_verifier, LOOPBACK, 0, max_message_bytes=1000) as server:
            async with await raw_connect(f"ws://{LOOPBACK}:{server.port}", compression=None) as ws:
                replies = []
                for frame in [b"\xff\x00garbage", "a text frame", b"\x00" * 1500, encode(m.hello("edge"))[:-1], encode(m.draft(1, 0, [1], pack_q("tokens")))]:
                    await ws.send(frame)
                    replies.append(decode(await ws.recv()).error)
                await ws.send(encode(m.hello("edge")))
                ack = decode(await ws.recv())
            return replies, ack

    replies, ack = _run(main())
    assert [r.code for r in replies] == [ErrorCode.BAD_MESSAGE, ErrorCode.BAD_MESSAGE, ErrorCode.LIMITS, ErrorCode.BAD_MESSAGE, ErrorCode.BAD_MESSAGE]
    assert "text frame" in replies[1].message and "1500" in replies[2].message
    assert ack.WhichOneof("msg") == "hello_ack"


def test_frames_over_twice_the_limit_close_the_connection():
    async def main():
        async with await serve(toy_verifier, LOOPBACK, 0, max_message_bytes=1000) as server:
            async with await connect(f"ws://{LOOPBACK}:{server.port}", max_message_bytes=10_000) as client:
                await client.send(m.open_session(1, list(range(100_000, 101_000))))  # 3 kB > 2 × 1000
                with pytest.raises(TransportClosed) as info:
                    await client.recv()
                return info.value.code

    assert _run(main()) == 1009


def test_sending_over_the_limit_fails_locally():
    async def main():
        async with await serve(toy_verifier, LOOPBACK, 0) as server:
            async with await connect(f"ws://{LOOPBACK}:{server.port}", max_message_bytes=100) as client:
                with pytest.raises(ProtocolError) as info:
                    await client.send(m.open_session(1, list(range(200))))
                assert info.value.code is ErrorCode.LIMITS
                await client.send(m.hello("edge"))  # still usable
                return (await client.recv()).WhichOneof("msg")

    assert _run(main()) == "hello_ack"


def test_protocol_error_escaping_a_handler_closes_with_1002_and_no_traceback(caplog):
    async def strict(transport):
        await transport.recv()  # raises ProtocolError on garbage and does not handle it

    async def main():
        async with await serve(strict, LOOPBACK, 0) as server:
            async with await raw_connect(f"ws://{LOOPBACK}:{server.port}") as ws:
                await ws.send(b"\xff\xff")
                await ws.wait_closed()
                return ws.close_code

    with caplog.at_level(logging.WARNING):
        assert _run(main()) == 1002
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "BAD_MESSAGE" in warnings[0].getMessage() and warnings[0].exc_info is None


def test_server_close_ends_the_client():
    async def main():
        server = await serve(toy_verifier, LOOPBACK, 0)
        client = await connect(f"ws://{LOOPBACK}:{server.port}")
        server.close()
        await server.wait_closed()
        with pytest.raises(TransportClosed):
            await client.recv()
        with pytest.raises(TransportClosed):
            await client.send(m.hello("edge"))

    _run(main())


def test_nothing_listening():
    async def main():
        server = await serve(toy_verifier, LOOPBACK, 0)
        port = server.port
        server.close()
        await server.wait_closed()
        with pytest.raises(OSError):
            await connect(f"ws://{LOOPBACK}:{port}", open_timeout_s=2.0)

    _run(main())


def test_transport_is_an_interface():
    with pytest.raises(TypeError):
        Transport()


class QueueTransport(Transport):
    """An in-process transport: proof that handlers only depend on the `Transport` interface."""

    def __init__(self, inbox: asyncio.Queue, outbox: asyncio.Queue):
        self.inbox, self.outbox = inbox, outbox

    async def send(self, envelope):
        await self.outbox.put(encode(envelope))

    async def recv(self):
        data = await self.inbox.get()
        if data is None:
            raise TransportClosed("closed")
        return decode(data)

    async def close(self):
        await self.outbox.put(None)


def test_another_transport_can_replace_websocket():
    async def main():
        up, down = asyncio.Queue(), asyncio.Queue()
        server_task = asyncio.create_task(toy_verifier(QueueTransport(up, down)))
        async with QueueTransport(down, up) as client:
            kinds = await _exchange(client)
        with pytest.raises(TransportClosed):
            await server_task
        return kinds

    assert _run(main()) == ["hello_ack", "session_opened", "verdict", "verdict", "close"]


# ---------------------------------------------------------------- TLS


def test_wss_with_a_self_signed_certificate(tmp_path):
    cert, key = self_signed_cert(tmp_path)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))

    async def main():
        async with await serve(toy_verifier, LOOPBACK, 0, auth_token=TOKEN, ssl=server_ctx) as server:
            url = f"wss://{LOOPBACK}:{server.port}"
            async with await connect(url, auth_token=TOKEN, ssl=client_ctx) as client:
                kinds = await _exchange(client)
            with pytest.raises(ProtocolError):
                await connect(url, auth_token="wrong", ssl=client_ctx)
            with pytest.raises(ssl.SSLError):  # the system's trust store does not know our certificate
                await connect(url, auth_token=TOKEN)
            return kinds

    assert _run(main()) == ["hello_ack", "session_opened", "verdict", "verdict", "close"]

"""Transport: moving Envelopes between a drafter node and a verifier node, behind a small `Transport` interface, over WebSocket.

A `Transport` is one ordered, message-oriented, bidirectional connection: `send(envelope)`,
`recv() -> envelope`, `close()`. The WebSocket implementation (the `websockets` library, asyncio API)
carries one serialized Envelope per binary frame, without compression. Authentication happens in the
opening handshake: the client sends `Authorization: Bearer <token>` and a server with a token refuses a
missing or wrong one with HTTP 401 (the client sees `ProtocolError(AUTH)`). Pass `ssl` contexts and a
`wss://` URL for TLS. With per-node tokens (`serve(node_tokens={node id: token})`) the token also says who the
peer is: the server-side transport's `authenticated_node` is the node id whose token was presented.

Size limits: messages over `max_message_bytes` are refused by `recv()` with `ProtocolError(LIMITS)` and
the connection stays up; frames over twice that close the connection (code 1009) before they are read
whole, so a peer cannot make the server buffer arbitrarily large messages.
"""

from __future__ import annotations

import abc
import hmac
import logging
import ssl as ssl_lib
from http import HTTPStatus
from typing import Awaitable, Callable, Mapping, Optional

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.server import Server, ServerConnection
from websockets.asyncio.server import serve as ws_serve
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.frames import CloseCode
from websockets.http11 import Request, Response

from edgespec.protocol import edgespec_pb2 as pb
from edgespec.protocol.codec import DEFAULT_MAX_MESSAGE_BYTES, decode, encode
from edgespec.protocol.errors import ErrorCode, ProtocolError

__all__ = ["Transport", "TransportClosed", "WebSocketTransport", "TransportServer", "Handler", "serve", "connect"]

log = logging.getLogger(__name__)

HARD_LIMIT_FACTOR = 2  # frames over HARD_LIMIT_FACTOR × max_message_bytes close the connection


class TransportClosed(ConnectionError):
    """The connection is closed (or could not be opened); `code` and `reason` are the WebSocket close code and reason if known."""

    def __init__(self, message: str, code: Optional[int] = None, reason: str = ""):
        super().__init__(message)
        self.code = code
        self.reason = reason


class Transport(abc.ABC):
    """One ordered, bidirectional connection carrying Envelopes (replaceable: WebSocket today)."""

    peer: str = ""  # the other end, for logs and metrics labels
    authenticated_node: Optional[str] = None  # server side with per-node tokens: the node id whose token the peer presented
    messages_sent: int = 0
    messages_received: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0

    @abc.abstractmethod
    async def send(self, envelope: pb.Envelope) -> None:
        """Send one envelope. Raises `LocalProtocolError` if it cannot be encoded, `TransportClosed` if the connection is gone."""

    @abc.abstractmethod
    async def recv(self) -> pb.Envelope:
        """The next envelope. Raises `ProtocolError` for a bad message (the connection stays usable), `TransportClosed` at the end."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Close the connection (idempotent)."""

    async def __aenter__(self) -> "Transport":
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()


def _closed(exc: ConnectionClosed) -> TransportClosed:
    frame = exc.rcvd or exc.sent
    code, reason = (frame.code, frame.reason) if frame else (None, "")
    return TransportClosed(f"connection closed ({code} {reason})".strip(), code, reason)


class WebSocketTransport(Transport):
    """A `Transport` over one `websockets` connection (client or server side). Only one task may `recv()` at a time."""

    def __init__(self, ws: ServerConnection | ClientConnection, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES):
        self._ws = ws
        self.max_message_bytes = max_message_bytes
        address = ws.remote_address
        self.peer = f"{address[0]}:{address[1]}" if address else "?"
        self.authenticated_node = getattr(ws, "username", None)  # set by the handshake's per-node token check

    async def send(self, envelope: pb.Envelope) -> None:
        data = encode(envelope, max_message_bytes=self.max_message_bytes)
        try:
            await self._ws.send(data)
        except ConnectionClosed as exc:
            raise _closed(exc) from None
        self.messages_sent += 1
        self.bytes_sent += len(data)

    async def recv(self) -> pb.Envelope:
        try:
            data = await self._ws.recv()
        except ConnectionClosed as exc:
            raise _closed(exc) from None
        self.messages_received += 1
        self.bytes_received += len(data)
        if isinstance(data, str):
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "text frame received; edgespec uses binary frames only")
        return decode(data, max_message_bytes=self.max_message_bytes)

    async def close(self) -> None:
        await self._ws.close()

    async def abort(self, reason: str) -> None:
        """Close with the WebSocket protocol-error code (1002), e.g. after a fatal protocol error."""
        await self._ws.close(CloseCode.PROTOCOL_ERROR, reason[:120])


Handler = Callable[[Transport], Awaitable[None]]


def _bearer_auth(identities: Mapping[str, Optional[str]]) -> Callable[[ServerConnection, Request], Optional[Response]]:
    """A websockets `process_request` hook that refuses the handshake with 401 unless the bearer token is one of
    `identities` (token -> node id, None for a shared token); a node id is stored as `connection.username`."""
    expected = [(token.encode(), node) for token, node in identities.items()]

    def process_request(connection: ServerConnection, request: Request) -> Optional[Response]:
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        given = presented.strip().encode(errors="surrogateescape")
        matches = [node for token, node in expected if hmac.compare_digest(given, token)]  # every token compared: constant time
        if scheme.lower() == "bearer" and matches:
            if matches[0] is not None:
                connection.username = matches[0]
            return None
        response = connection.respond(HTTPStatus.UNAUTHORIZED, "missing or invalid bearer token\n")
        response.headers["WWW-Authenticate"] = 'Bearer realm="edgespec"'
        return response

    return process_request


class TransportServer:
    """A listening WebSocket server; `port` is the bound port (useful with port 0). Use `async with` or `close()`."""

    def __init__(self, server: Server):
        self._server = server

    @property
    def port(self) -> int:
        return self._server.sockets[0].getsockname()[1]

    @property
    def host(self) -> str:
        return self._server.sockets[0].getsockname()[0]

    def close(self) -> None:
        """Stop accepting and close every connection (going-away, 1001)."""
        self._server.close()

    async def wait_closed(self) -> None:
        await self._server.wait_closed()

    async def serve_forever(self) -> None:
        await self._server.serve_forever()

    async def __aenter__(self) -> "TransportServer":
        return self

    async def __aexit__(self, *exc_info) -> None:
        self.close()
        await self.wait_closed()


async def serve(
    handler: Handler,
    host: str,
    port: int,
    *,
    auth_token: Optional[str] = None,
    ssl: Optional[ssl_lib.SSLContext] = None,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    node_tokens: Optional[Mapping[str, str]] = None,
) -> TransportServer:
    """Listen on host:port and run `await handler(transport)` for every accepted connection.

    With `auth_token`, handshakes without `Authorization: Bearer <auth_token>` are refused with HTTP 401.
    With `node_tokens` (node id -> token; not together with `auth_token`) the token must be one of them, and
    the handler's transport has `authenticated_node` set to that token's node id.
    The handler returning ends the connection; `TransportClosed` raised in it ends it quietly, and a
    `ProtocolError` is logged on one line and closes the connection with code 1002.
    """

    async def run(ws: ServerConnection) -> None:
        transport = WebSocketTransport(ws, max_message_bytes=max_message_bytes)
        try:
            await handler(transport)
        except TransportClosed:
            pass
        except ProtocolError as exc:
            log.warning("closing connection from %s: %s", transport.peer, exc)
            await transport.abort(str(exc))

    if auth_token is not None and node_tokens:
        raise ValueError("give auth_token or node_tokens, not both")
    identities = {auth_token: None} if auth_token is not None else {token: node for node, token in (node_tokens or {}).items()}
    server = await ws_serve(
        run,
        host,
        port,
        process_request=_bearer_auth(identities) if identities else None,
        ssl=ssl,
        compression=None,
        max_size=HARD_LIMIT_FACTOR * max_message_bytes,
    )
    return TransportServer(server)


async def connect(
    url: str,
    *,
    auth_token: Optional[str] = None,
    ssl: Optional[ssl_lib.SSLContext] = None,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    open_timeout_s: float = 10.0,
) -> WebSocketTransport:
    """Open a connection to a verifier at `url` (ws://host:port or wss://host:port with `ssl`).

    Raises `ProtocolError(AUTH)` if the server refuses the token, `TransportClosed` for other refused
    handshakes, and `OSError` if nothing listens there.
    """
    headers = {"Authorization": f"Bearer {auth_token}"} if auth_token is not None else None
    tls = {"ssl": ssl} if ssl is not None else {}  # wss:// without a context: the system's default trust
    try:
        ws = await ws_connect(
            url,
            additional_headers=headers,
            compression=None,
            max_size=HARD_LIMIT_FACTOR * max_message_bytes,
            open_timeout=open_timeout_s,
            **tls,
        )
    except InvalidStatus as exc:
        status = exc.response.status_code
        if status in (HTTPStatus.UNAUTHORIZED, HTTPStatus.FORBIDDEN):
            raise ProtocolError(ErrorCode.AUTH, f"{url} refused the connection: HTTP {status} (missing or wrong auth token)") from None
        raise TransportClosed(f"{url} refused the WebSocket handshake: HTTP {status}") from None
    except InvalidHandshake as exc:
        raise TransportClosed(f"WebSocket handshake with {url} failed: {exc}") from None
    return WebSocketTransport(ws, max_message_bytes=max_message_bytes)

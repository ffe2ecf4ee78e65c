"""Market-data frames written straight to a WebSocket's transport, framed once for everybody.

Through Channels, every frame to every subscriber went consumer.send -> the session wrapper ->
uvicorn's protocol -> the websockets state machine -> one RFC 6455 frame built per connection:
about 80 µs of the web process's CPU per subscriber and frame under `bench ws` (1,000
subscribers). A server's data frame is not masked, so its bytes are the same for every
connection: the hub builds each frame once (`text_frame`) and hands the bytes to each
connection's transport (`DirectSocket.write`).

`DirectSocket.attach` recognises uvicorn's websockets-sansio protocol (the server `make run`
starts, `--ws websockets-sansio`) from the ASGI `send` the server called the application with,
which `capture_raw_send` keeps in the scope. Under any other server it returns None and frames
take Channels' path as before. Only text data frames go this way; the handshake, pings, pongs
and the closing handshake stay with the server's protocol, which writes on the same event loop,
so frames never interleave. A transport that asks to pause (its buffer is over the high-water
mark) is not written to: the hub queues the frame instead, and a full queue is a slow consumer.
"""

import struct
from typing import Any

RAW_SEND_KEY = "exchange.raw_send"
_OP_TEXT_FIN = 0x81  # FIN + opcode 1 (text), no RSV bits: never compressed
# What this module reads of uvicorn's protocol object.
_PROTOCOL_ATTRIBUTES = ("transport", "writable", "handshake_complete", "close_sent", "disconnected")


def text_frame(payload: bytes) -> bytes:
    """One unmasked, unfragmented text frame (RFC 6455 5.2) carrying `payload`."""
    length = len(payload)
    if length < 126:
        header = bytes((_OP_TEXT_FIN, length))
    elif length < 65_536:
        header = struct.pack("!BBH", _OP_TEXT_FIN, 126, length)
    else:
        header = struct.pack("!BBQ", _OP_TEXT_FIN, 127, length)
    return header + payload


def capture_raw_send(app):
    """ASGI middleware: keep the server's own `send` in the scope (under RAW_SEND_KEY) before
    Channels' middleware wraps it."""

    async def application(scope, receive, send):
        return await app({**scope, RAW_SEND_KEY: send}, receive, send)

    return application


class DirectSocket:
    """A WebSocket connection of uvicorn's websockets-sansio protocol, written to directly."""

    __slots__ = ("protocol", "transport", "writable")

    def __init__(self, protocol: Any) -> None:
        self.protocol = protocol
        self.transport = protocol.transport
        self.writable = protocol.writable  # an asyncio.Event the protocol clears on pause

    @classmethod
    def attach(cls, raw_send: Any) -> "DirectSocket | None":
        """The direct writer for the connection behind `raw_send` once its handshake is done,
        or None when the server is not one this module knows."""
        protocol = getattr(raw_send, "__self__", None)
        if type(protocol).__name__ != "WebSocketsSansIOProtocol":
            return None
        if not all(hasattr(protocol, name) for name in _PROTOCOL_ATTRIBUTES):
            return None
        if not protocol.handshake_complete or protocol.close_sent or protocol.disconnected:
            return None
        return cls(protocol)

    def ready(self) -> bool:
        """Open, and its transport is not asking the writer to pause."""
        return self.writable.is_set() and not self.closed()

    def closed(self) -> bool:
        protocol = self.protocol
        return protocol.close_sent or protocol.disconnected or self.transport.is_closing()

    def write(self, wire: bytes) -> None:
        """Write frames built by `text_frame` (the caller checked `ready()`)."""
        self.transport.write(wire)

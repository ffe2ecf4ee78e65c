"""Frames written straight to a WebSocket's transport (exchange/ws_direct.py), against a real
uvicorn server and a real websockets client; and how the hub shares a connection between
direct writes and its queue."""

import asyncio
import json

import pytest
import uvicorn
import websockets
from websockets.frames import Frame, Opcode

from exchange.embedded_servers import free_port
from exchange.market_hub import MarketHub, Subscriber
from exchange.tests.test_websocket_hub import (
    assert_resynced_without_gap,
    drained,
    hub_with_book,
    update,
)
from exchange.ws_direct import RAW_SEND_KEY, DirectSocket, capture_raw_send, text_frame

SIZES = (0, 1, 125, 126, 65_535, 65_536, 200_000)


@pytest.mark.parametrize("size", SIZES)
def test_a_text_frame_is_what_websockets_itself_would_send(size):
    payload = b"x" * size
    assert text_frame(payload) == Frame(Opcode.TEXT, payload).serialize(mask=False)


def test_other_servers_and_test_communicators_keep_channels_path():
    async def send(message):  # a plain ASGI send, as Channels' test communicator has
        pass

    assert DirectSocket.attach(send) is None
    assert DirectSocket.attach(None) is None


def test_direct_frames_and_the_servers_own_frames_arrive_in_order_on_a_real_server():
    attached: list[bool] = []

    async def app(scope, receive, send):
        assert scope["type"] == "websocket"
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        direct = DirectSocket.attach(scope[RAW_SEND_KEY])
        attached.append(direct is not None)
        for size in SIZES:
            assert direct.ready()
            direct.write(text_frame(json.dumps({"n": size, "pad": "y" * size}).encode()))
        await send({"type": "websocket.send", "text": "through the server"})
        direct.write(text_frame(b"last") + text_frame(b"two in one write"))
        await receive()  # the client's close
        assert direct.closed()

    async def scenario():
        port = free_port()
        config = uvicorn.Config(
            capture_raw_send(app),
            host="127.0.0.1",
            port=port,
            ws="websockets-sansio",
            ws_per_message_deflate=False,
            lifespan="off",
            log_level="warning",
        )
        server = uvicorn.Server(config)
        serving = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.01)
        try:
            async with websockets.connect(f"ws://127.0.0.1:{port}/", max_size=None) as ws:
                received = [await asyncio.wait_for(ws.recv(), 10) for _ in range(len(SIZES) + 3)]
        finally:
            server.should_exit = True
            await serving
        return received

    received = asyncio.run(scenario())
    assert attached == [True]
    assert [json.loads(frame)["n"] for frame in received[: len(SIZES)]] == list(SIZES)
    assert received[len(SIZES) :] == ["through the server", "last", "two in one write"]


class Transport:
    """A stand-in for the server's connection: takes data while `taking`."""

    def __init__(self) -> None:
        self.written: list[dict] = []  # the frames, decoded
        self.writes: list[bytes] = []  # what each write call carried
        self.taking = True

    def ready(self) -> bool:
        return self.taking

    def write(self, wire: bytes) -> None:
        self.writes.append(wire)
        while wire:
            assert wire[0] == 0x81 and wire[1] < 127
            start = 2 if wire[1] < 126 else 4
            length = wire[1] if wire[1] < 126 else int.from_bytes(wire[2:4], "big")
            self.written.append(json.loads(wire[start : start + length]))
            wire = wire[start + length :]


def book_update(seq: int) -> str:
    return update(seq, f"{seq}.00", "1")


def direct_subscriber(*, maxsize: int) -> tuple[MarketHub, Subscriber, Transport]:
    """A hub mirroring book "X" and one subscriber of it written to directly."""
    hub, _mirror = hub_with_book()
    sub = Subscriber(maxsize=maxsize)
    sub.direct = transport = Transport()
    hub.add(sub, "book.X")
    return hub, sub, transport


def test_a_connection_that_stops_taking_data_is_queued_then_resynced_never_reordered():
    async def scenario():
        hub, sub, transport = direct_subscriber(maxsize=4)
        await hub.on_message(book_update(11))
        assert [f["type"] for f in transport.written] == ["snapshot", "update"]
        assert sub.queue.empty()  # written at once, nothing queued

        transport.taking = False  # the server's buffer is full: frames queue up
        await hub.on_message(book_update(12))
        transport.taking = True
        await hub.on_message(book_update(13))  # behind a queued frame: queued too, not written
        assert [f["type"] for f in transport.written] == ["snapshot", "update"]
        assert [frame["seq"] for frame in drained(sub)] == [12, 13]

        transport.taking = False
        for seq in range(14, 20):  # nobody drains the queue: a slow consumer
            await hub.on_message(book_update(seq))
        assert_resynced_without_gap(drained(sub), 19)

    asyncio.run(scenario())


def test_the_writer_holding_a_frame_keeps_the_hub_from_writing_past_it():
    async def scenario():
        hub, sub, transport = direct_subscriber(maxsize=10)
        sub.holding = True  # the connection's writer took a frame and waits to write it
        await hub.on_message(book_update(11))
        assert [f["type"] for f in transport.written] == ["snapshot"]
        assert json.loads(sub.queue.get_nowait())["seq"] == 11

    asyncio.run(scenario())


def test_the_frames_one_batch_brings_a_connection_go_out_in_one_write():
    async def scenario():
        hub, sub, transport = direct_subscriber(maxsize=10)
        hub.add(sub, "trades.X")
        calls = len(transport.writes)
        trade = {"symbol": "X", "price": "11.00", "quantity": "1", "taker_side": "buy"}
        trade |= {"trade_id": 1, "ts_ns": 1}
        message = json.loads(book_update(11))
        message["trades"] = [trade]
        await hub.on_message(json.dumps(message))
        assert len(transport.writes) == calls + 1
        assert [f["type"] for f in transport.written[-2:]] == ["update", "trades"]

    asyncio.run(scenario())

"""A slow consumer of the streaming WebSocket (/ws/v1) against the real web process, worker and
Redis: a client that stops reading while its frames pile up in its bounded queue."""

import asyncio
import json
import socket
import time
from decimal import Decimal
from urllib.parse import urlsplit

import pytest
import websockets

from exchange.tests.api_client import make_api_key, make_instrument, make_user
from exchange.tests.test_websocket import limit, login_op, rest, send

pytestmark = [pytest.mark.processes]

QUEUE_SIZE = 200


@pytest.fixture(scope="module")
def process_env(process_env):
    """A short queue per connection, so a few hundred frames make a slow consumer."""
    return {**process_env, "WS_QUEUE_SIZE": str(QUEUE_SIZE)}


def barely_reading_socket(ws_url: str) -> socket.socket:
    """A TCP connection to the web process whose receive buffer is tiny: with the client's
    own queue of one frame, the server soon finds the connection not taking data."""
    address = urlsplit(ws_url)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((address.hostname, address.port))
    return sock


def test_a_slow_consumers_resync_keeps_the_answers_to_its_ops(exchange_stack, live_db):
    # Its queue was emptied whole: the answer to an order.place (its order id, its fills), to
    # pings and to subscribes went with the market data, and only the channels were named.
    symbol = make_instrument(price_band_pct=Decimal("50")).symbol
    key = make_api_key(make_user())
    ws_url = exchange_stack.replace("http://", "ws://") + "/ws/v1"

    async def scenario():
        sock = barely_reading_socket(ws_url)
        async with (
            websockets.connect(
                ws_url, sock=sock, max_size=None, max_queue=1, ping_interval=None
            ) as ws,
            rest(exchange_stack, key) as http,
        ):
            await send(ws, login_op(key))
            channels = [f"book.{symbol}", f"ticker.{symbol}", f"trades.{symbol}", "orders"]
            await send(ws, {"op": "subscribe", "channels": channels})
            pad = "x" * 60_000  # about 6 MB of answers: the socket's buffers fill, then its queue
            for n in range(100):
                await send(ws, {"op": "ping", "id": [n, pad]})
            place = {"op": "order.place", "id": "mine", **limit(symbol, "buy", "90.00", "1")}
            await send(ws, place)
            for n in range(60):  # order, balance, book and ticker frames: the queue overflows
                response = await http.post(
                    "/api/v1/orders", json=limit(symbol, "buy", f"{80 + n % 10}.00", "1")
                )
                assert response.status_code in (201, 202), response.text
            frames = []
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    frames.append(json.loads(await asyncio.wait_for(ws.recv(), 3)))
                except TimeoutError:
                    break
            return frames

    frames = asyncio.run(scenario())
    resyncs = [f for f in frames if f.get("type") == "resync"]
    assert resyncs and resyncs[0]["reason"] == "slow_consumer"  # the case at hand
    answers = [f for f in frames if f.get("id") == "mine"]
    assert [(f["type"], f["status"]) for f in answers] == [("response", 201)]
    assert answers[0]["data"]["symbol"] == symbol
    pongs = [f["id"][0] for f in frames if f.get("type") == "pong"]
    assert pongs == list(range(100))


def test_a_queue_is_bounded_in_bytes_not_only_in_frames(processes, process_env):
    # Answers repeat the op's `id` whole: a client that sent pings with 60 KB ids and read
    # nothing had up to WS_QUEUE_SIZE (2,000) of them queued, 120 MB of the web process's
    # memory per connection (and 100 connections per address). Its queue now also ends at
    # WS_QUEUE_BYTES: answers alone past it close the connection (4008), as past its frames.
    from conftest import start_web

    env = {**process_env, "WS_QUEUE_SIZE": "2000", "WS_QUEUE_BYTES": str(1024 * 1024)}
    ws_url = start_web(processes, env=env).replace("http://", "ws://") + "/ws/v1"

    async def scenario():
        sock = barely_reading_socket(ws_url)
        async with websockets.connect(
            ws_url, sock=sock, max_size=None, max_queue=1, ping_interval=None
        ) as ws:
            pad = "x" * 60_000
            for n in range(150):  # 9 MB of answers
                await send(ws, {"op": "ping", "id": [n, pad]})
            pongs = 0
            try:
                while True:
                    frame = json.loads(await asyncio.wait_for(ws.recv(), 5))
                    pongs += frame.get("type") == "pong"
            except websockets.ConnectionClosed as closed:
                return closed.rcvd.code, pongs
            except TimeoutError:
                return None, pongs  # still open: everything was queued

    code, pongs = asyncio.run(scenario())
    assert (code, pongs < 150) == (4008, True), (code, pongs)

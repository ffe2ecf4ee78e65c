"""Open WebSockets per client address (WS_MAX_CONNECTIONS_PER_IP), and a socket opened while
Redis is out of reach, against the real web process."""

import asyncio
import json
import time
from urllib.parse import urlsplit, urlunsplit

import pytest
import websockets

from accounts.signing import ws_login_message

pytestmark = [pytest.mark.processes]

LIMIT = 3


@pytest.fixture(scope="module")
def process_env(process_env):
    return {**process_env, "WS_MAX_CONNECTIONS_PER_IP": str(LIMIT)}


def test_one_connection_over_the_per_address_limit_is_told_and_closed(exchange_stack):
    url = exchange_stack.replace("http://", "ws://") + "/ws/v1"

    async def subscribed(ws) -> None:
        """The socket answers a subscribe (heartbeats from an earlier one are skipped)."""
        await ws.send(json.dumps({"op": "subscribe", "channels": ["heartbeat"]}))
        async with asyncio.timeout(10):
            while (frame := json.loads(await ws.recv()))["type"] == "heartbeat":
                pass
        assert frame["type"] == "subscribed", frame

    async def scenario():
        sockets = [await websockets.connect(url, ping_interval=None) for _ in range(LIMIT)]
        for ws in sockets:
            await subscribed(ws)
        async with websockets.connect(url, ping_interval=None) as extra:
            refusal = json.loads(await asyncio.wait_for(extra.recv(), 10))
            assert (refusal["error"], refusal["code"]) == ("TooManyConnections", -1144)
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(extra.recv(), 10)
            assert closed.value.rcvd.code == 4030
        for ws in sockets:
            await subscribed(ws)  # the open ones are untouched
        await sockets[0].close()
        await asyncio.sleep(0.2)  # the server sees the close
        async with websockets.connect(url, ping_interval=None) as again:
            await subscribed(again)  # a freed place is taken again
        for ws in sockets[1:]:
            await ws.close()

    asyncio.run(scenario())


def test_an_id_nested_too_deeply_to_answer_is_refused_and_the_socket_keeps_its_place(
    exchange_stack,
):
    # An `id` of nested arrays the decoder read but the answer repeating it could not encode
    # (a RecursionError, 2 KB deep): the consumer died (no close frame, two tracebacks) and
    # never gave its place back, so LIMIT such messages locked the address out (4030) for the
    # web process's life. Sent at every depth up to past the decoder's limit.
    url = exchange_stack.replace("http://", "ws://") + "/ws/v1"

    async def scenario():
        for _ in range(LIMIT + 1):
            async with websockets.connect(url, ping_interval=None) as ws:
                for depth in range(880, 1080):
                    nested = "[" * depth + "]" * depth
                    await ws.send(f'{{"op": "ping", "id": {nested}}}')
                    refused = json.loads(await asyncio.wait_for(ws.recv(), 10))
                    assert refused["type"] == "error", (depth, str(refused)[:200])
                    assert (refused["error"], refused["code"]) == ("MalformedRequest", -1100)
                    assert refused["message"] == "arrays and objects may nest at most 32 deep"
                    assert "id" not in refused
                # 32 deep, the message's own object included: answered, the `id` repeated.
                await ws.send(f'{{"op": "ping", "id": {"[" * 31 + "]" * 31}}}')
                answer = json.loads(await asyncio.wait_for(ws.recv(), 10))
                assert answer["type"] == "pong" and "id" in answer

    asyncio.run(scenario())


async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


def test_a_socket_opened_while_redis_is_out_of_reach_trades_and_subscribes_once_it_is_back(
    processes, process_env, live_db
):
    # The process's market hub could not reach Redis (its first start): a socket waited 10 s
    # for it, then failed its handshake (HTTP 500), so no order could be placed over the socket
    # while REST took them (202 pending_new).
    from django.conf import settings

    from conftest import start_web
    from exchange.embedded_servers import free_port
    from exchange.tests.api_client import make_api_key, make_instrument, make_user

    symbol = make_instrument().symbol
    key = make_api_key(make_user())
    redis_url = urlsplit(settings.REDIS_URL)
    proxy_port = free_port()  # nothing listens there yet: Redis is out of reach
    proxied = urlunsplit(redis_url._replace(netloc=f"127.0.0.1:{proxy_port}"))
    env = {**process_env, "REDIS_URL": proxied, "WS_MAX_CONNECTIONS_PER_IP": "2"}
    url = start_web(processes, env=env).replace("http://", "ws://") + "/ws/v1"

    async def redis_through_proxy(client_reader, client_writer) -> None:
        reader, writer = await asyncio.open_connection(redis_url.hostname, redis_url.port)
        await asyncio.gather(forward(client_reader, writer), forward(reader, client_writer))

    async def answer(ws, message: dict) -> dict:
        await ws.send(json.dumps(message))
        while True:
            frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
            if frame.get("id") == message["id"]:
                return frame

    async def scenario():
        async with websockets.connect(url, ping_interval=None, open_timeout=5) as ws:
            book = {"op": "subscribe", "channels": [f"book.{symbol}"], "id": 1}
            refused = await answer(ws, book)
            assert (refused["error"], refused["channel"]) == (
                "ServiceUnavailable",
                f"book.{symbol}",
            )
            beat = await answer(ws, {"op": "subscribe", "channels": ["heartbeat"], "id": 2})
            assert beat["type"] == "subscribed"
            signed = ws_login_message(
                api_key=key.api_key.key, secret=key.secret, timestamp_ms=time.time_ns() // 10**6
            )
            assert (await answer(ws, {**signed, "id": 3}))["type"] == "login"
            order = {"symbol": symbol, "side": "buy", "order_type": "limit", "price": "10.00"}
            placed = await answer(ws, {"op": "order.place", **order, "quantity": "1", "id": 4})
            # Stored (the module's worker may have matched it already: it reads the commands
            # from PostgreSQL too).
            assert placed["status"] in (201, 202) and placed["data"]["order_id"], placed
            proxy = await asyncio.start_server(redis_through_proxy, "127.0.0.1", proxy_port)
            try:
                deadline = time.monotonic() + 20
                while (subscribed := await answer(ws, book))["type"] != "subscribed":
                    assert subscribed["error"] == "ServiceUnavailable", subscribed
                    assert time.monotonic() < deadline, "no book once Redis was back"
                    await asyncio.sleep(0.5)
            finally:
                proxy.close()

    asyncio.run(scenario())

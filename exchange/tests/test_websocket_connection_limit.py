"""Open WebSockets per client address (WS_MAX_CONNECTIONS_PER_IP), against the real web process."""

import asyncio
import json
from urllib.parse import urlsplit, urlunsplit

import pytest
import websockets

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


async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


def test_a_connection_that_failed_to_open_gives_its_place_back(processes, process_env):
    # A socket opened while the process's market hub could not reach Redis (its first start)
    # failed (HTTP 500 after 10 s) and kept its place for good: once Redis was back, its
    # address was refused TooManyConnections until the web process restarted.
    from django.conf import settings

    from conftest import start_web
    from exchange.embedded_servers import free_port

    redis_url = urlsplit(settings.REDIS_URL)
    proxy_port = free_port()  # nothing listens there yet: Redis is out of reach
    proxied = urlunsplit(redis_url._replace(netloc=f"127.0.0.1:{proxy_port}"))
    env = {**process_env, "REDIS_URL": proxied, "WS_MAX_CONNECTIONS_PER_IP": "2"}
    url = start_web(processes, env=env).replace("http://", "ws://") + "/ws/v1"

    async def redis_through_proxy(client_reader, client_writer) -> None:
        reader, writer = await asyncio.open_connection(redis_url.hostname, redis_url.port)
        await asyncio.gather(forward(client_reader, writer), forward(reader, client_writer))

    async def refused() -> None:
        with pytest.raises(websockets.InvalidStatus):
            await websockets.connect(url, ping_interval=None, open_timeout=30)

    async def scenario():
        await asyncio.gather(refused(), refused())
        proxy = await asyncio.start_server(redis_through_proxy, "127.0.0.1", proxy_port)
        try:
            async with (
                websockets.connect(url, ping_interval=None, open_timeout=30) as first,
                websockets.connect(url, ping_interval=None, open_timeout=30) as second,
            ):
                for ws in (first, second):
                    await ws.send(json.dumps({"op": "subscribe", "channels": ["heartbeat"]}))
                    frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
                    assert frame["type"] == "subscribed", frame
        finally:
            proxy.close()

    asyncio.run(scenario())

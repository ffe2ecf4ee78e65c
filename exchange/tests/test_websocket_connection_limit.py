"""Open WebSockets per client address (WS_MAX_CONNECTIONS_PER_IP), against the real web process."""

import asyncio
import json

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

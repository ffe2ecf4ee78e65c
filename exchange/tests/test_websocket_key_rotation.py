"""A socket that logs in again with a new API key, then has the old one revoked (a trading
bot rotating its key), stays open: against the real web process and worker."""

import asyncio
import json
import time

import pytest
import websockets
from django.db import connection

from accounts.api_keys import api_key_revoke
from conftest import transaction_held_open
from exchange.models import Order
from exchange.tests.api_client import make_api_key
from exchange.tests.test_websocket import (
    limit,
    log_in,
    market,  # noqa: F401 (the fixture)
    recv_until,
    rest,
    send,
)

pytestmark = [pytest.mark.processes]


@pytest.fixture(scope="module")
def process_env(process_env):
    """Two view threads (so a test can keep them busy) and a ping, with its login check,
    every half second."""
    return {
        **process_env,
        "API_VIEW_THREADS": "2",
        "WS_PING_INTERVAL_SECONDS": "0.5",
        "WS_PING_TIMEOUT_SECONDS": "10",
    }


def test_a_socket_logged_in_again_with_a_new_key_stays_open_when_the_old_one_is_revoked(
    market,  # noqa: F811
):
    """The login check of a ping (and an order op) sent under the old key waited for a view
    thread; by the time it ran, the socket had logged in with the new key and the old one was
    revoked: the socket was closed 4001 though its login stood."""
    symbol = market["symbol"]
    trader, old_key = market["users"][0], market["keys"][0]
    other_key = market["keys"][1]
    new_key = make_api_key(trader)

    def revoke_old_key() -> None:
        try:
            api_key_revoke(api_key=old_key.api_key, actor=trader)
        finally:
            connection.close()

    async def scenario():
        http_other = rest(market["base"], other_key)
        resting = await http_other.post("/api/v1/orders", json=limit(symbol, "buy", "90.00", "5"))
        assert resting.status_code == 201, resting.text
        resting_id = resting.json()["order_id"]
        async with (
            websockets.connect(market["ws"], ping_interval=None) as bot,
            websockets.connect(market["ws"], ping_interval=None) as busy,
        ):
            await log_in(bot, old_key)
            await log_in(busy, other_key)

            def lock_order():
                return Order.objects.select_for_update().get(pk=resting_id)

            with transaction_held_open(lock_order, seconds=30):
                # Both view threads wait: one amend on the locked row, one behind it.
                for n in range(2):
                    amend = {"order_id": resting_id, "quantity": str(4 - n)}
                    await send(busy, {"op": "order.amend", "id": f"busy{n}", **amend})
                await asyncio.sleep(1.2)  # pings: the bot's login check queues (old key)
                order = limit(symbol, "buy", "91.00", "1")
                await send(bot, {"op": "order.place", "id": "old", **order})
                login = await log_in(bot, new_key, id="rotate")
                assert login["type"] == "login", login
                await asyncio.to_thread(revoke_old_key)
            # The view threads run the queued check and op now: the op sent under the
            # revoked key is refused, and the socket, logged in with the new key, stays open.
            old = await recv_until(bot, lambda f: f.get("id") == "old", timeout=15)
            assert old["status"] == 401 and old["error"]["error"] == "InvalidApiKey", old
            deadline = time.monotonic() + 2.5  # five pings, each checking the login
            while (left := deadline - time.monotonic()) > 0:
                try:
                    frame = json.loads(await asyncio.wait_for(bot.recv(), left))
                except TimeoutError:
                    break
                if frame.get("type") == "ping":
                    await send(bot, {"op": "pong", "id": frame["id"]})
            order = limit(symbol, "buy", "92.00", "1")
            await send(bot, {"op": "order.place", "id": "new", **order})
            placed = await recv_until(bot, lambda f: f.get("id") == "new", timeout=15)
            assert placed["status"] == 201, placed
        await http_other.aclose()

    asyncio.run(scenario())

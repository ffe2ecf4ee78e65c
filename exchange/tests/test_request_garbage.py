"""An API request or a WebSocket op leaves no reference cycle behind in the web process: its
objects are freed by reference counting when it ends, not by the cyclic garbage collector
(whose full collections stop every thread for ~100 ms; `exchange.gc_tuning`)."""

import asyncio
import gc
import json
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal

import httpx
import pytest
from django.db import connections

from exchange.tests.api_client import ApiKeyAuth, make_api_key, make_instrument, make_user

# Server-side code: a cycle among these objects would be the web process's.
SERVER_MODULES = ("rest_framework.", "django.", "exchange.", "accounts.", "audit.", "matching.")


@contextmanager
def garbage_saved() -> Iterator[None]:
    """What becomes cyclic garbage inside the block is kept in `gc.garbage`, not freed."""
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield
        gc.collect()
    finally:
        gc.set_debug(0)


def server_garbage(scenario) -> Counter:
    """Run `scenario` (a coroutine function measuring its part under `garbage_saved()`) and
    count, by type, the server-side objects it left to the cyclic collector."""
    try:
        asyncio.run(scenario())
        return Counter(
            f"{type(o).__module__}.{type(o).__qualname__}"
            for o in gc.garbage
            if type(o).__module__.startswith(SERVER_MODULES)
        )
    finally:
        gc.garbage.clear()
        connections.close_all()


@pytest.mark.django_db(transaction=True)
def test_order_requests_and_refused_ones_leave_no_cycle(settings):
    from exchange.asgi import application

    settings.ORDER_REPLY_TIMEOUT_SECONDS = 0.05  # no worker here: each answer is a 202
    symbol = make_instrument().symbol
    key = make_api_key(make_user(funds={"USD": Decimal("1000.00")}))
    statuses = []

    async def requests(client: httpx.AsyncClient) -> None:
        body = {"symbol": symbol, "side": "buy", "order_type": "limit", "price": "1.00"}
        placed = await client.post("/api/v1/orders", json={**body, "quantity": "2"})
        order = f"/api/v1/orders/{placed.json()['order_id']}"
        statuses.append(placed.status_code)
        for response in (
            await client.get(order),
            await client.patch(order, json={"quantity": "1"}),
            await client.get("/api/v1/orders", params={"symbol": symbol}),
            await client.delete(order),
            await client.post("/api/v1/orders", json={**body, "quantity": "0.5"}),  # off the lot
            await client.get("/api/v1/orders/999999999"),  # nobody's order
        ):
            statuses.append(response.status_code)

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=application)
        auth = ApiKeyAuth(key.api_key.key, key.secret)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://testserver", auth=auth
        ) as client:
            await requests(client)  # once to warm every cache up
            with garbage_saved():
                await requests(client)

    garbage = server_garbage(scenario)
    assert statuses == [202, 200, 202, 200, 202, 400, 404] * 2
    assert garbage == Counter()


class Socket:
    """A WebSocket client of the ASGI application in-process (asgiref's communicator; Channels'
    own test package needs daphne)."""

    def __init__(self, application, path: str) -> None:
        from asgiref.testing import ApplicationCommunicator

        scope = {"type": "websocket", "path": path, "headers": [], "subprotocols": []}
        self.app = ApplicationCommunicator(application, scope)

    async def connect(self) -> None:
        await self.app.send_input({"type": "websocket.connect"})
        assert (await self.app.receive_output(5))["type"] == "websocket.accept"

    async def send(self, message: dict) -> None:
        await self.app.send_input({"type": "websocket.receive", "text": json.dumps(message)})

    async def receive(self) -> dict:
        return json.loads((await self.app.receive_output(5))["text"])

    async def close(self) -> None:
        await self.app.send_input({"type": "websocket.disconnect", "code": 1000})
        await self.app.wait(5)


@pytest.mark.django_db(transaction=True)
def test_a_socket_that_logs_in_subscribes_and_places_orders_leaves_no_cycle(settings):
    """The WebSocket consumer's ops, in-process (the server-side path is the production one
    apart from the direct frame writes, which need uvicorn)."""
    from accounts.signing import ws_login_message
    from exchange.asgi import application

    settings.ORDER_REPLY_TIMEOUT_SECONDS = 0.05  # no worker here: each answer is pending_new
    symbol = make_instrument().symbol
    key = make_api_key(make_user(funds={"USD": Decimal("1000.00")}))
    order = {"symbol": symbol, "side": "buy", "order_type": "limit", "price": "1.00"}
    answers = []

    async def ops(ws: Socket, n: int) -> None:
        async def answer(op: str, message: dict) -> dict:
            await ws.send({"op": op, **message})
            while (frame := await ws.receive()).get("op") != op:
                pass  # book snapshots and heartbeats in between
            return frame

        now_ms = time.time_ns() // 1_000_000
        login = ws_login_message(api_key=key.api_key.key, secret=key.secret, timestamp_ms=now_ms)
        login.pop("op")
        answers.append((await answer("login", login))["type"])
        channels = [f"book.{symbol}", "orders"]
        answers.append((await answer("subscribe", {"channels": channels}))["type"])
        placed = await answer("order.place", {"id": n, **order, "quantity": "1"})
        answers.append(placed["status"])
        answers.append((await answer("unsubscribe", {"channels": channels}))["type"])

    async def scenario() -> None:
        ws = Socket(application, "/ws/v1")
        await ws.connect()
        await ops(ws, 1)  # warms every cache up
        with garbage_saved():
            await ops(ws, 2)
        await ws.close()

    garbage = server_garbage(scenario)
    assert answers == ["login", "subscribed", 202, "unsubscribed"] * 2
    assert garbage == Counter()

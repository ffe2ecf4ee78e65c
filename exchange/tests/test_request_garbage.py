"""A signed API request leaves no reference cycle behind in the web process: its objects are
freed by reference counting when it ends, not by the cyclic garbage collector (whose full
collections stop every thread for ~100 ms; `exchange.gc_tuning`)."""

import asyncio
import gc
from collections import Counter
from decimal import Decimal

import httpx
import pytest
from django.db import connections

from exchange.tests.api_client import ApiKeyAuth, make_api_key, make_instrument, make_user

# Server-side code: a cycle among these objects would be the web process's.
SERVER_MODULES = ("rest_framework.", "django.", "exchange.", "accounts.", "audit.", "matching.")


def server_garbage(requests) -> Counter:
    """Run `requests` (an async function of an httpx client on the ASGI application) and count,
    by type, the server-side objects that only the cyclic collector could free."""
    from exchange.asgi import application

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://testserver", auth=auth
        ) as client:
            await requests(client)  # once to warm every cache up
            gc.collect()
            gc.set_debug(gc.DEBUG_SAVEALL)
            try:
                await requests(client)
                gc.collect()
            finally:
                gc.set_debug(0)

    user = make_user(funds={"USD": Decimal("1000.00")})
    created = make_api_key(user)
    auth = ApiKeyAuth(created.api_key.key, created.secret)
    try:
        asyncio.run(scenario())
        garbage = Counter(
            f"{type(o).__module__}.{type(o).__qualname__}"
            for o in gc.garbage
            if type(o).__module__.startswith(SERVER_MODULES)
        )
    finally:
        gc.garbage.clear()
        connections.close_all()
    return garbage


@pytest.mark.django_db(transaction=True)
def test_order_requests_and_refused_ones_leave_no_cycle(settings):
    settings.ORDER_REPLY_TIMEOUT_SECONDS = 0.05  # no worker here: each answer is a 202
    symbol = make_instrument().symbol
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

    garbage = server_garbage(requests)
    assert statuses == [202, 200, 202, 200, 202, 400, 404] * 2
    assert garbage == Counter()

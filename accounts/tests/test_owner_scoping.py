"""Two users, each trying the other's objects on every endpoint: a 404 (never a 403 that
leaks existence), or a list that simply does not contain them."""

from decimal import Decimal

import pytest

from conftest import wait_until
from exchange.models import Order
from exchange.tests.api_client import ApiClient, make_api_key, make_instrument, make_user
from matching.models import Command

pytestmark = [pytest.mark.processes]

ALL_PERMISSIONS = ("read", "trade", "withdraw")


def test_no_endpoint_shows_or_changes_another_users_objects(exchange_stack, live_db):
    instrument = make_instrument()
    alice = ApiClient(exchange_stack, make_user("alice"), permissions=ALL_PERMISSIONS)
    bob = ApiClient(exchange_stack, make_user("bob"), permissions=ALL_PERMISSIONS)
    # Alice trades with Carol (a fill, ledger rows), keeps the order open and has a second key.
    symbol = instrument.symbol
    sell = {"symbol": symbol, "side": "sell", "order_type": "limit", "price": "10.00",
            "quantity": "5", "client_order_id": "alice-1"}  # fmt: skip
    resting = alice.place(**sell).json()
    carol = ApiClient(exchange_stack, make_user("carol"))
    carol.place(symbol=symbol, side="buy", order_type="limit", price="10.00", quantity="2")
    wait_until(lambda: not Command.objects.filter(applied_at__isnull=True).exists(), timeout=30)
    alice_key = make_api_key(alice.user)
    order_id, user_id = resting["order_id"], alice.user.pk

    not_found = [
        bob.get(f"/api/v1/orders/{order_id}"),
        bob.delete(f"/api/v1/orders/{order_id}"),
        bob.patch(f"/api/v1/orders/{order_id}", {"quantity": "9"}),
        bob.get("/api/v1/orders/client/alice-1"),
        bob.delete("/api/v1/orders/client/alice-1"),
        bob.get(f"/api/v1/api-keys/{alice_key.api_key.pk}"),
        bob.http.post(f"/api/v1/users/{user_id}/withdraw", json={"asset": "USD", "amount": "1"}),
        bob.http.post(f"/api/v1/users/{user_id}/deposit", json={"asset": "USD", "amount": "1"}),
        bob.get(f"/api/v1/users/{user_id}/fee-tier"),
        bob.get(f"/api/v1/users/{user_id}/volume-stats"),
        bob.get(f"/api/v1/audit/orders/{order_id}/history"),
        bob.get(f"/api/v1/audit/users/{user_id}/activity"),
    ]
    assert [r.status_code for r in not_found] == [404] * len(not_found), [
        (r.request.method, r.request.url.path, r.status_code) for r in not_found
    ]
    # Lists of one's own things never hold the other's.
    assert bob.get("/api/v1/orders").json()["results"] == []
    assert bob.get("/api/v1/fills").json()["results"] == []
    assert all(r["kind"] == "deposit" for r in bob.get("/api/v1/ledger").json()["results"])
    assert [k["id"] for k in bob.get("/api/v1/api-keys").json()["results"]] == [
        bob.api_key.pk
    ]  # fmt: skip
    assert {b["asset"] for b in bob.get("/api/v1/balances").json()} == {"USD", "TST"}
    assert Decimal(bob.get("/api/v1/balances").json()[0]["held"]) == 0
    # And nothing of Alice's moved.
    order = Order.objects.get(pk=order_id)
    assert (order.status, order.quantity) == ("partially_filled", Decimal(5))
    assert len(alice.get("/api/v1/fills").json()["results"]) == 1

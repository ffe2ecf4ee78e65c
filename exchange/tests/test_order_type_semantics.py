"""Order types as a client of the real web process and shard worker sees them, held to what a
real venue does with them."""

import pytest

from conftest import wait_until
from exchange.tests.api_client import ApiClient, limit, make_instrument

pytestmark = [pytest.mark.processes]


@pytest.fixture
def clients(exchange_stack, live_db):
    return [ApiClient(exchange_stack) for _ in range(4)]


def placed(client, **body) -> dict:
    response = client.place(**body)
    assert response.status_code == 201, response.text
    return response.json()


def settled(client, order, statuses):
    path = f"/api/v1/orders/{order['order_id']}"
    return wait_until(
        lambda: (o := client.get(path).json())["status"] in statuses and o, timeout=10
    )


def test_a_stop_loss_triggers_on_a_print_at_its_price_though_the_sweep_ends_above_it(clients):
    # The book's asks sat below the last price (100): a market buy printed 97 and then 98. The
    # trade at 97 reached the sell stop at 97, but the engine looked at the last price alone
    # (98) once the buy was done, and the stop-loss stayed untriggered under a print at its price.
    maker, stopper, buyer, other = clients
    symbol = make_instrument().symbol
    placed(maker, **limit(symbol, "sell", "100.00", "1"))
    placed(other, **limit(symbol, "buy", "100.00", "1"))
    placed(maker, **limit(symbol, "sell", "97.00", "1"))
    placed(maker, **limit(symbol, "sell", "98.00", "1"))
    placed(other, **limit(symbol, "buy", "90.00", "5"))
    stop = placed(
        stopper,
        symbol=symbol,
        side="sell",
        order_type="stop_loss",
        stop_price="97.00",
        quantity="1",
    )
    assert stop["status"] == "untriggered"
    bought = placed(buyer, symbol=symbol, side="buy", order_type="market", quantity="2")
    assert [(f["price"], f["quantity"]) for f in bought["fills"]] == [
        ("97.00", "1"),
        ("98.00", "1"),
    ]
    sold = settled(stopper, stop, ("filled", "cancelled"))
    assert sold["status"] == "filled"
    assert [(f["price"], f["quantity"]) for f in sold["fills"]] == [("90.00", "1")]

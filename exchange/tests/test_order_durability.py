"""Orders are accepted durably while the matching worker is down, and matched when it returns
(its own module: the worker must not be running when the test starts)."""

import pytest

from conftest import start_web, wait_until
from exchange.tests.api_client import ApiClient, make_instrument


@pytest.mark.processes
@pytest.mark.django_db(transaction=True)
def test_orders_are_accepted_durably_while_the_worker_is_down(processes, process_env):
    instrument = make_instrument()
    base_url = start_web(processes, env={**process_env, "ORDER_REPLY_TIMEOUT_SECONDS": "0.5"})
    trader = ApiClient(base_url)
    response = trader.place(
        symbol=instrument.symbol, side="buy", order_type="limit", price="10.00", quantity="2"
    )
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "pending_new"
    processes.manage("run_matching", "--shard", "0", env=process_env, name="late-worker")
    accepted = wait_until(
        lambda: (
            (o := trader.get(f"/api/v1/orders/{body['order_id']}").json())["status"] == "new" and o
        ),
        timeout=30,
    )
    assert accepted["remaining_quantity"] == "2"

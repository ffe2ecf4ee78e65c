"""Random trading through the real web process and worker, every order type and time in force,
with amends, cancels and mass cancels from several clients at once while staff change the
instrument's rules, halt and resume it and cancel orders; then what must always hold. (Such runs
found an amend deadlocking with the order entry batch, answers of 500; and, with staff changing
the default STP mode, an engine rebuilt from the database that disagreed with its journal.)"""

import random
import threading
import time
from decimal import Decimal

import httpx
import pytest
from django.db import connection

from conftest import start_web
from exchange.models import Instrument, Order
from exchange.tests.admin_http import admin_action, admin_client, admin_instrument_change
from exchange.tests.api_client import ApiKeyAuth, make_api_key, make_instrument, make_user
from matching.tests.worker_checks import (
    all_commands_applied,
    exactly_once_invariants,
    matching_verify,
)

pytestmark = [pytest.mark.processes, pytest.mark.django_db(transaction=True)]

CLIENTS = 4
SECONDS = 8.0


def random_order(rng: random.Random, symbol: str) -> dict:
    order_type = rng.choice(["limit"] * 6 + ["market", "market", "stop_loss", "stop_limit"])
    side = rng.choice(["buy", "sell"])

    def price() -> str:
        return f"{rng.randint(95, 105)}.{rng.choice(['00', '25', '50'])}"

    body = {"symbol": symbol, "side": side, "order_type": order_type}
    if order_type == "market" and side == "buy" and rng.random() < 0.4:
        body["quote_quantity"] = f"{rng.randint(50, 900)}.00"
    else:
        body["quantity"] = str(rng.randint(1, 12))
    if order_type == "limit":
        body["price"] = price()
        body["time_in_force"] = rng.choice(["GTC", "GTC", "GTC", "IOC", "FOK", "DAY"])
        if body["time_in_force"] != "IOC" and body["time_in_force"] != "FOK":
            if rng.random() < 0.15:
                body[rng.choice(["post_only", "post_only_adjust"])] = True
            elif rng.random() < 0.15 and int(body["quantity"]) > 2:
                body["display_quantity"] = "2"
    elif order_type == "stop_loss":
        body["stop_price"] = price()
    elif order_type == "stop_limit":
        body["stop_price"], body["limit_price"] = price(), price()
    if rng.random() < 0.3:
        body["stp_mode"] = rng.choice(
            ["cancel_resting", "cancel_incoming", "cancel_both", "cancel_smallest",
             "decrement_both", "none"]
        )  # fmt: skip
    return body


def trade_randomly(
    client: httpx.Client, symbol: str, seed: int, failures: list, seconds: float = SECONDS
) -> None:
    rng = random.Random(seed)
    mine: list[int] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        roll = rng.random()
        if roll < 0.55 or not mine:
            response = client.post("/api/v1/orders", json=random_order(rng, symbol))
            if response.status_code in (200, 201, 202):
                mine.append(response.json()["order_id"])
        elif roll < 0.75:
            body = rng.choice(
                [
                    {"quantity": str(rng.randint(1, 15))},
                    {"price": f"{rng.randint(95, 105)}.00"},
                    {"quantity": str(rng.randint(1, 15)), "price": f"{rng.randint(95, 105)}.50"},
                ]
            )
            response = client.patch(f"/api/v1/orders/{rng.choice(mine)}", json=body)
        elif roll < 0.95:
            response = client.delete(f"/api/v1/orders/{rng.choice(mine)}")
        else:
            response = client.delete("/api/v1/orders", params={"symbol": symbol})
        if response.status_code >= 500 or (
            response.status_code >= 400 and "code" not in response.json()
        ):
            failures.append((response.request.method, response.request.content, response.text))


def staff_work_randomly(
    base_url: str, instrument_id: int, seed: int, stop: threading.Event, failures: list
) -> None:
    """Staff in the admin now and then (over HTTP): editing the instrument's rules, halting and
    resuming it, cancelling an open order on its owner's behalf."""
    rng = random.Random(seed)
    try:
        staff = admin_client(base_url)
        done: dict[str, int] = {"rules": 0, "halt": 0, "cancel": 0}
        instrument = Instrument.objects.get(pk=instrument_id)
        halted = False
        while not stop.wait(rng.uniform(0.2, 0.6)):
            roll = rng.random()
            open_ids = list(
                Order.objects.filter(instrument_id=instrument_id, is_open=True).values_list(
                    "pk", flat=True
                )[:50]
            )
            if roll < 0.2 or halted:
                action = "resume_trading" if halted else "halt_trading"
                admin_action(staff, "/admin/exchange/instrument/", action, instrument_id)
                halted = not halted
                done["halt"] += 1
            elif roll < 0.4 and open_ids:
                admin_action(staff, "/admin/exchange/order/", "cancel_orders", rng.choice(open_ids))
                done["cancel"] += 1
            else:
                changes = {
                    "price_band_pct": rng.choice(["0", "20", "50"]),
                    "market_collar_pct": rng.choice(["2", "5", "10"]),
                    "min_quantity": rng.choice(["1", "1", "2"]),
                    "default_stp_mode": rng.choice(
                        ["cancel_resting", "cancel_incoming", "cancel_both", "decrement_both"]
                    ),
                }
                response = admin_instrument_change(staff, instrument, **changes)
                if response.status_code != 302:
                    failures.append(("admin", changes, response.text[:2000]))
                done["rules"] += 1
                instrument.refresh_from_db()
        if halted:
            admin_action(staff, "/admin/exchange/instrument/", "resume_trading", instrument_id)
        if min(done.values()) < 1:
            failures.append(("admin", f"too little staff work: {done}"))
    except Exception as exc:  # reported by the test thread
        failures.append(("admin", repr(exc)))
    finally:
        connection.close()


def test_random_trading_from_several_clients_keeps_every_invariant(processes, process_env):
    processes.manage("run_matching", "--shard", "0", env=process_env, name="matching-0")
    base_url = start_web(processes, env=process_env)
    instrument = make_instrument(price_band_pct=Decimal("50"))
    funds = {"USD": Decimal("100000.00"), "TST": Decimal("1000")}
    keys = [make_api_key(make_user(funds=funds)) for _ in range(CLIENTS)]
    failures: list = []
    clients = [
        httpx.Client(base_url=base_url, auth=ApiKeyAuth(k.api_key.key, k.secret), timeout=30)
        for k in keys
    ]
    threads = [
        threading.Thread(target=trade_randomly, args=(c, instrument.symbol, n, failures))
        for n, c in enumerate(clients)
    ]
    stop_staff = threading.Event()
    staff = threading.Thread(
        target=staff_work_randomly,
        args=(base_url, instrument.pk, 99, stop_staff, failures),
    )
    for thread in [*threads, staff]:
        thread.start()
    for thread in threads:
        thread.join()
    stop_staff.set()
    staff.join()

    assert failures == []
    all_commands_applied(timeout=60)
    exactly_once_invariants()
    assert "OK" in matching_verify(process_env)

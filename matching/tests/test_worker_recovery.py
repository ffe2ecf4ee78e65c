"""A worker killed (-9) at points of a session and restarted ends with the same trades and
order states as one that never stopped, whatever rested at the crash: an iceberg with its
reserve, untriggered stops of both kinds, a GTD order that expired while no worker ran, a
post-only-adjust order, orders with STP modes, an amend waiting for the engine, a halt."""

import datetime as dt
import os
import signal
import time
import uuid
from decimal import Decimal

import pytest

from conftest import wait_until
from exchange.models import Instrument, Order, Trade
from exchange.order_rules import OrderRequest
from exchange.services import instrument_halt, instrument_resume, order_amend, order_place
from exchange.tests.api_client import make_instrument, make_user
from matching.tests.worker_checks import all_commands_applied, matching_verify

pytestmark = [pytest.mark.processes, pytest.mark.django_db(transaction=True)]

# Long enough for a restart: the GTD order reaches the engine before its expiry in every run.
GTD_SECONDS = dt.timedelta(seconds=8)


def place(user, symbol: str, side: str, order_type: str, quantity=None, price=None, **extra):
    request = OrderRequest(
        symbol=symbol,
        side=side,
        order_type=order_type,
        quantity=None if quantity is None else Decimal(quantity),
        price=None if price is None else Decimal(price),
        **extra,
    )
    return order_place(user=user, request=request).order


def session(symbol: str, users, staff, step) -> None:
    """The same commands for every run; `step(n)` runs between the groups (a crash or not)."""
    u0, u1, u2, u3 = users
    expiry: dict[str, dt.datetime] = {}
    groups = [
        lambda: [
            place(u0, symbol, "sell", "limit", "5", "101"),
            place(u0, symbol, "sell", "limit", "5", "102"),
            place(u0, symbol, "sell", "limit", "10", "100.50", display_quantity=Decimal("2")),
        ],
        lambda: [place(u1, symbol, "buy", "limit", "4", "99")],
        lambda: [place(u2, symbol, "buy", "limit", "2", "101", post_only_adjust=True)],
        lambda: [
            place(u2, symbol, "sell", "stop_loss", "2", stop_price=Decimal("97")),
            place(
                u3,
                symbol,
                "buy",
                "stop_limit",
                "4",
                "104",
                stop_price=Decimal("102.50"),
                display_quantity=Decimal("1"),
            ),
            place(u0, symbol, "buy", "limit", "1", "99.20", stp_mode="cancel_both"),
        ],
        lambda: [place(u3, symbol, "buy", "market", "3")],
        lambda: [
            order_amend(
                order=Order.objects.get(user=u1, instrument__symbol=symbol, price=Decimal("99")),
                actor=u1,
                quantity=Decimal("6"),
            )
        ],
        lambda: [place(u3, symbol, "buy", "limit", "6", "102", time_in_force="IOC")],
        lambda: [instrument_halt(instrument=Instrument.objects.get(symbol=symbol), actor=staff)],
        lambda: [
            instrument_resume(instrument=Instrument.objects.get(symbol=symbol), actor=staff),
            place(u0, symbol, "buy", "limit", "1", "100", stp_mode="decrement_both"),
            place(
                u1,
                symbol,
                "buy",
                "limit",
                "3",
                "98.50",
                time_in_force="GTD",
                expire_at=expiry.setdefault("at", dt.datetime.now(dt.UTC) + GTD_SECONDS),
            ),
        ],
        # The GTD buy expired while no command came (nor a worker, in the crashed run).
        lambda: wait_until(lambda: dt.datetime.now(dt.UTC) > expiry["at"], timeout=30),
        lambda: [place(u1, symbol, "sell", "market", "9")],
        lambda: [place(u2, symbol, "buy", "limit", "8", "103")],
        lambda: [place(u0, symbol, "sell", "limit", "2", "100", stp_mode="decrement_both")],
    ]
    for n, group in enumerate(groups):
        step(n, group)
    all_commands_applied(timeout=60)


def outcome(symbol: str) -> tuple[list, list]:
    """Every order (in placement order) and trade of `symbol`, with order ids as positions."""
    orders = list(Order.objects.filter(instrument__symbol=symbol).order_by("id"))
    position = {order.pk: n for n, order in enumerate(orders)}
    states = [
        (
            o.side,
            o.order_type,
            o.price,
            o.quantity,
            o.filled_quantity,
            o.remaining_quantity,
            o.reserve_quantity,
            o.status,
            o.hold_remaining,
        )
        for o in orders
    ]
    trades = [
        (t.price, t.quantity, position[t.maker_order_id], position[t.taker_order_id])
        for t in Trade.objects.filter(instrument__symbol=symbol).order_by("id")
    ]
    return states, trades


def test_a_worker_killed_at_points_of_a_session_ends_as_one_that_never_stopped(
    processes, process_env
):
    staff = make_user("staff")
    runs = {}
    worker = processes.manage("run_matching", "--shard", "0", env=process_env, name="w")

    def serving(proc) -> None:
        wait_until(lambda: "shard worker serving" in proc.log_path.read_text(), timeout=60)

    serving(worker)

    def uninterrupted(n, group):
        group()
        all_commands_applied(timeout=30)

    crashes = 0

    def crashing(n, group):
        # Odd groups are stored while no worker runs; even ones are killed in flight (the
        # worker may be applying them, or not have seen them yet).
        nonlocal worker, crashes
        if n % 2:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
            group()
        else:
            group()
            time.sleep(0.01 * n)
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
        crashes += 1
        worker = processes.manage("run_matching", "--shard", "0", env=process_env, name=f"w{n}")
        serving(worker)
        all_commands_applied(timeout=30)

    for name, step in (("uninterrupted", uninterrupted), ("crashing", crashing)):
        instrument = make_instrument(symbol=f"K{uuid.uuid4().hex[:8].upper()}")
        users = [
            make_user(funds={"USD": Decimal("100000"), instrument.base_asset: Decimal("1000")})
            for _ in range(4)
        ]
        all_commands_applied(timeout=30)
        session(instrument.symbol, users, staff, step)
        runs[name] = outcome(instrument.symbol)
    assert crashes == 13
    orders, trades = runs["uninterrupted"]
    assert len(trades) >= 5, "the session trades"
    assert {o[7] for o in orders} >= {"new", "untriggered", "expired", "filled", "cancelled"}
    assert runs["crashing"] == runs["uninterrupted"]
    assert "OK" in matching_verify(process_env)

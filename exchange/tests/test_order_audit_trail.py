"""An order's audit trail as a compliance officer reads it: each event of the order once, in
the order it happened (against the real web process and shard worker)."""

import datetime as dt

import pytest
from django.utils import timezone

from audit.models import AuditRecord
from conftest import wait_until
from exchange.serializers import iso_z
from exchange.tests.api_client import ApiClient, limit, make_instrument

pytestmark = [pytest.mark.processes]


@pytest.fixture
def clients(exchange_stack, live_db):
    return ApiClient(exchange_stack), ApiClient(exchange_stack), ApiClient(exchange_stack)


def settled(client, order, status):
    path = f"/api/v1/orders/{order['order_id']}"
    return wait_until(lambda: (o := client.get(path).json())["status"] == status and o, timeout=10)


def history(order) -> list[AuditRecord]:
    return list(AuditRecord.objects.filter(order_id=order["order_id"]).order_by("seq"))


def events(order) -> list[str]:
    return [r.event_type for r in history(order)]


def test_a_stop_order_is_accepted_once_when_placed_and_then_triggered(clients):
    # After its trigger the worker recorded `order.accepted` a second time (status filled, or
    # new for a stop-limit now resting), as if the engine had taken in another order.
    maker, stopper, other = clients
    symbol = make_instrument().symbol
    stop = stopper.place(
        symbol=symbol, side="sell", order_type="stop_loss", stop_price="95.00", quantity="2"
    ).json()
    stop_limit = stopper.place(
        symbol=symbol,
        side="buy",
        order_type="stop_limit",
        stop_price="95.00",
        limit_price="90.00",
        quantity="1",
    ).json()
    assert stop["status"] == stop_limit["status"] == "untriggered"
    maker.place(**limit(symbol, "buy", "94.00", "5"))
    maker.place(**limit(symbol, "buy", "95.00", "1"))
    other.place(symbol=symbol, side="sell", order_type="market", quantity="1")  # last 95.00
    settled(stopper, stop, "filled")
    settled(stopper, stop_limit, "new")

    assert events(stop) == [
        "order.submitted",
        "fee.calculated",
        "order.accepted",
        "order.triggered",
        "trade.executed",
    ]
    accepted = history(stop)[2]
    assert (accepted.payload["status"], accepted.payload["remaining"]) == ("untriggered", "2")
    # Triggered, it rests at its limit price (its fills, had it any, would follow).
    assert events(stop_limit) == [
        "order.submitted",
        "fee.calculated",
        "order.accepted",
        "order.triggered",
    ]


def test_an_order_that_trades_on_arrival_is_accepted_once_before_its_fills(clients):
    # The acceptance came after the fills it made; a taker that self-trade prevention's
    # decrement_both reduced was accepted twice (reduced, then again at its end); a stop
    # triggered on arrival read triggered, fills, then accepted.
    maker, taker, _ = clients
    symbol = make_instrument().symbol
    maker.place(**limit(symbol, "sell", "100.00", "2"))
    maker.place(**limit(symbol, "sell", "101.00", "2"))
    sweep = taker.place(symbol=symbol, side="buy", order_type="market", quantity="4").json()
    assert sweep["status"] == "filled"
    assert events(sweep) == [
        "order.submitted",
        "fee.calculated",
        "order.accepted",
        "trade.executed",
        "trade.executed",
    ]
    accepted = history(sweep)[2]
    assert (accepted.payload["status"], accepted.payload["filled"]) == ("filled", "4")

    symbol = make_instrument().symbol
    taker.place(**limit(symbol, "sell", "100.00", "1"))  # its own, first in the queue
    maker.place(**limit(symbol, "sell", "100.00", "2"))
    reduced = taker.place(**limit(symbol, "buy", "100.00", "3", stp_mode="decrement_both"))
    reduced = reduced.json()
    assert (reduced["status"], reduced["filled_quantity"]) == ("filled", "2")
    assert events(reduced) == [
        "order.submitted",
        "fee.calculated",
        "order.accepted",
        "trade.self_trade_prevented",
        "trade.executed",
    ]
    assert history(reduced)[2].payload["status"] == "filled"  # its state after arrival

    # The last trade was at 100.00: a sell stop at 105.00 triggers as it arrives.
    maker.place(**limit(symbol, "buy", "99.00", "1"))
    stop = taker.place(
        symbol=symbol, side="sell", order_type="stop_loss", stop_price="105.00", quantity="1"
    ).json()
    assert stop["status"] == "filled"
    assert events(stop) == [
        "order.submitted",
        "fee.calculated",
        "order.accepted",
        "order.triggered",
        "trade.executed",
    ]


def test_an_order_ended_by_the_command_that_placed_it_is_accepted_before_it_ends(clients):
    # An IOC whose rest was cancelled, a market order that found no liquidity and a taker
    # that self-trade prevention cancelled read submitted, fee, (fills,) cancelled: their
    # trail never said the engine had taken them in.
    maker, taker, _ = clients
    symbol = make_instrument().symbol
    maker.place(**limit(symbol, "sell", "100.00", "2"))
    ioc = taker.place(**limit(symbol, "buy", "100.00", "5", time_in_force="IOC")).json()
    assert (ioc["status"], ioc["filled_quantity"]) == ("cancelled", "2")
    assert events(ioc) == [
        "order.submitted",
        "fee.calculated",
        "order.accepted",
        "trade.executed",
        "order.cancelled",
    ]
    accepted, cancelled = history(ioc)[2], history(ioc)[4]
    assert accepted.payload == {
        "status": "cancelled",
        "filled": "2",
        "remaining": "0",
        "price": "100.00",
        "command_id": cancelled.payload["command_id"],
    }
    assert cancelled.payload["why"] == "ioc_remainder"

    unmatched = taker.place(symbol=symbol, side="buy", order_type="market", quantity="1").json()
    assert (unmatched["status"], unmatched["filled_quantity"]) == ("cancelled", "0")
    assert events(unmatched) == [
        "order.submitted",
        "fee.calculated",
        "order.accepted",
        "order.cancelled",
    ]
    assert history(unmatched)[3].payload["why"] == "no_liquidity"

    maker.place(**limit(symbol, "sell", "101.00", "1"))
    own = maker.place(**limit(symbol, "buy", "101.00", "1", stp_mode="cancel_incoming")).json()
    assert own["status"] == "cancelled"
    assert events(own) == [
        "order.submitted",
        "fee.calculated",
        "order.accepted",
        "trade.self_trade_prevented",
        "order.cancelled",
    ]
    assert history(own)[4].payload["why"] == "stp"


def test_an_orders_expiry_is_recorded_to_the_microsecond_as_the_order_keeps_it(clients):
    # order.submitted wrote expire_at cut to the millisecond ("...:00.123Z" of an order that
    # expires at ...:00.123456): a trade in between read as one after the recorded expiry.
    trader, _, _ = clients
    symbol = make_instrument().symbol
    expire_at = (timezone.now() + dt.timedelta(hours=1)).replace(microsecond=123456)
    placed = trader.place(
        **limit(symbol, "buy", "10.00", "1", time_in_force="GTD", expire_at=iso_z(expire_at))
    ).json()
    assert placed["expire_at"] == iso_z(expire_at)
    submitted = next(r for r in history(placed) if r.event_type == "order.submitted")
    assert submitted.payload["expire_at"] == iso_z(expire_at)

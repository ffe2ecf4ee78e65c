"""Quote-presence sampling: the mid from the worker's book snapshot in Redis, the resting orders
from PostgreSQL, and the uptime they add up to."""

import datetime as dt
import json
from decimal import Decimal

import pytest
from django.test import override_settings

from accounts.models import QuotePresence, QuotePresenceSample
from accounts.quote_presence import daily_presence, quote_presence_sample, uptime_30d
from accounts.tests.fee_tier_data import at, new_instrument, new_user, resting_order
from exchange.embedded_servers import free_port
from exchange.models import Instrument, Order
from exchange.redis_connection import redis_client
from matching.engine import Engine
from matching.engine import protocol as p
from matching.engine.instrument import Instrument as EngineInstrument
from matching.instruments import engine_instrument_spec
from matching.publish import book_snapshot
from matching.transport import book_snapshot_key

pytestmark = pytest.mark.django_db

NOW = at("2031-01-15T10:00:00")
TEN_SECONDS = dt.timedelta(seconds=10)


def publish_book(redis_conn, instrument: Instrument, orders: list[Order]) -> None:
    """Put `orders` in a real engine and write its snapshot where the shard worker does."""
    spec = EngineInstrument(**engine_instrument_spec(instrument))
    engine = Engine([spec])
    for ts, order in enumerate(orders, start=1):
        engine.apply(
            p.place(
                ts=ts,
                symbol=instrument.symbol,
                order_id=order.pk,
                user_id=order.user_id,
                is_buy=order.side == Order.Side.BUY,
                qty=spec.qty_to_lots(order.remaining_quantity),
                price=spec.price_to_ticks(order.price),
                max_quote=10**15,
            )
        )
    snapshot = book_snapshot(engine, instrument.symbol, ts_ns=0)
    redis_conn.set(book_snapshot_key(instrument.symbol), json.dumps(snapshot))


def sample(now: dt.datetime, bps: int = 100):
    return quote_presence_sample(now=now, max_distance_bps=bps, min_interval=TEN_SECONDS / 2)


def counters(user) -> tuple[int, int]:
    row = QuotePresence.objects.filter(user=user, day=NOW.date()).first()
    return (row.samples_quoting, row.samples_present) if row else (0, 0)


@pytest.fixture
def books(redis_conn):
    """Two books and makers around their mids (100.20 and 100.00)."""
    first, second = new_instrument(), new_instrument()
    tight, wide, one_sided, elsewhere, idle = (new_user(n) for n in "twoei")
    orders = {
        first: [
            resting_order(user=tight, instrument=first, side="buy", price="99.50"),
            resting_order(user=tight, instrument=first, side="sell", price="100.50"),
            # 1.20 % below and 1.30 % above the mid: outside 100 bps, inside 150.
            resting_order(user=wide, instrument=first, side="buy", price="99.00"),
            resting_order(user=wide, instrument=first, side="sell", price="101.50"),
            resting_order(user=one_sided, instrument=first, side="buy", price="99.90"),
        ],
        second: [
            resting_order(user=elsewhere, instrument=second, side="buy", price="99.50"),
            resting_order(user=elsewhere, instrument=second, side="sell", price="100.50"),
            # Two-sided on the second book only: wide's bid here pairs with nothing.
            resting_order(user=wide, instrument=second, side="sell", price="100.60"),
        ],
    }
    # The first book's mid is (99.90 + 100.50) / 2 = 100.20, the second's 100.00.
    for instrument, rows in orders.items():
        publish_book(redis_conn, instrument, rows)
    # An order that ended and a pending one are not in the book.
    resting_order(user=idle, instrument=first, side="buy", price="100.00", status="cancelled")
    resting_order(user=idle, instrument=first, side="sell", price="100.10", status="pending_new")
    return {
        "tight": tight,
        "wide": wide,
        "one_sided": one_sided,
        "elsewhere": elsewhere,
        "idle": idle,
        "first": first,
        "second": second,
    }


def test_present_means_a_bid_and_an_ask_near_the_mid_of_one_book(books):
    taken = sample(NOW)
    assert taken is not None
    users = books
    assert counters(users["tight"]) == (1, 1)
    assert counters(users["elsewhere"]) == (1, 1)
    assert counters(users["wide"]) == (1, 0)
    assert counters(users["one_sided"]) == (1, 0)
    assert counters(users["idle"]) == (0, 0)
    assert QuotePresenceSample.objects.get(day=NOW.date()).samples == 1


def test_distance_from_the_mid_is_configurable(books):
    sample(NOW, bps=150)
    assert counters(books["wide"]) == (1, 1)


def test_a_run_closer_than_the_minimum_interval_is_not_counted(books):
    assert sample(NOW) is not None
    assert sample(NOW + dt.timedelta(seconds=4)) is None
    assert sample(NOW + TEN_SECONDS) is not None
    assert QuotePresenceSample.objects.get(day=NOW.date()).samples == 2
    assert counters(books["tight"]) == (2, 2)


def test_uptime_is_present_samples_over_all_samples_taken(books):
    for i in range(3):
        sample(NOW + i * TEN_SECONDS)
    # tight pulls its ask: absent from the fourth sample on, though still quoting.
    Order.objects.filter(user=books["tight"], side="sell").update(
        is_open=False, status="cancelled", remaining_quantity=0
    )
    sample(NOW + 3 * TEN_SECONDS)
    uptime = uptime_30d(user_id=books["tight"].pk, now=NOW)
    assert (uptime.samples, uptime.samples_quoting, uptime.samples_present) == (4, 4, 3)
    assert uptime.pct == Decimal("75.00")
    assert uptime_30d(user_id=books["idle"].pk, now=NOW).pct == Decimal("0.00")
    assert daily_presence(user_id=books["tight"].pk, now=NOW) == {NOW.date(): (4, 4, 3)}


def test_a_book_without_a_two_sided_mid_offers_no_presence(books, redis_conn):
    redis_conn.delete(book_snapshot_key(books["second"].symbol))
    sample(NOW)
    assert counters(books["elsewhere"]) == (1, 0)  # resting, but no mid to measure against


def test_no_sample_is_taken_while_redis_is_out_of_reach(books):
    # No book could be read, so no one was present: the sample was counted all the same, and
    # the exchange's outage counted against every maker's uptime.
    redis_client.cache_clear()
    try:
        with override_settings(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0"):
            assert sample(NOW) is None
    finally:
        redis_client.cache_clear()
    assert not QuotePresenceSample.objects.filter(day=NOW.date()).exists()
    assert counters(books["tight"]) == (0, 0)
    sample(NOW + TEN_SECONDS)
    assert counters(books["tight"]) == (1, 1)


def test_halted_instruments_are_not_sampled_and_no_open_book_means_no_sample(books):
    Instrument.objects.exclude(pk=books["second"].pk).update(status=Instrument.Status.HALTED)
    sample(NOW)
    assert counters(books["tight"]) == (0, 0)  # only on the halted book
    assert counters(books["elsewhere"]) == (1, 1)
    Instrument.objects.update(status=Instrument.Status.HALTED)
    assert sample(NOW + TEN_SECONDS) is None
    assert QuotePresenceSample.objects.get(day=NOW.date()).samples == 1


def test_uptime_without_any_sample_is_unknown():
    user = new_user()
    assert uptime_30d(user_id=user.pk, now=at("2031-06-01T00:00:00")).pct is None

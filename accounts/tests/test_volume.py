"""Daily volume: the worker's incremental upsert and the nightly recompute from the trades."""

import datetime as dt
from decimal import Decimal

import psycopg
import pytest
from django.db import connection, transaction

from accounts.models import DailyVolume
from accounts.tests.fee_tier_data import at, new_instrument, new_user, trade
from accounts.volume import (
    DAILY_VOLUME_ADD_SQL,
    daily_volume_add,
    daily_volume_add_params,
    daily_volume_recompute,
    daily_volume_rows,
    daily_volumes,
    trade_id_lower_bound,
    volume_30d,
)

pytestmark = pytest.mark.django_db

DAY = dt.date(2030, 5, 20)


def stored(user) -> dict[dt.date, Decimal]:
    return dict(DailyVolume.objects.filter(user=user).values_list("day", "quote_volume"))


def add(rows) -> int:
    """As the matching worker does: a raw psycopg cursor on Django's connection, inside the
    batch transaction."""
    with transaction.atomic():
        connection.ensure_connection()
        with psycopg.Cursor(connection.connection) as cursor:
            return daily_volume_add(cursor=cursor, rows=rows)


def test_fills_count_for_maker_and_taker_per_utc_day():
    rows = daily_volume_rows(
        [
            (2, 1, DAY, Decimal("100.50")),
            (2, 3, DAY, Decimal("10")),
            (1, 2, DAY + dt.timedelta(days=1), Decimal("7")),
            (3, 3, DAY, Decimal("1000")),  # a self-trade counts for nobody
        ]
    )
    assert rows == [
        (1, DAY, Decimal("100.50")),
        (1, DAY + dt.timedelta(days=1), Decimal("7")),
        (2, DAY, Decimal("110.50")),
        (2, DAY + dt.timedelta(days=1), Decimal("7")),
        (3, DAY, Decimal("10")),
    ]


def test_daily_volume_add_inserts_then_increments_in_one_statement():
    alice, bob = new_user(), new_user()
    assert add([(bob.pk, DAY, Decimal("250.25")), (alice.pk, DAY, Decimal("100"))]) == 2
    # Unsorted input with a repeated (user, day): summed, written once, in key order.
    written = add(
        [
            (bob.pk, DAY, Decimal("0.75")),
            (alice.pk, DAY + dt.timedelta(days=1), Decimal("5")),
            (bob.pk, DAY, Decimal("1")),
        ]
    )
    assert written == 2
    assert stored(alice) == {DAY: Decimal("100"), DAY + dt.timedelta(days=1): Decimal("5")}
    assert stored(bob) == {DAY: Decimal("252.00")}
    assert DailyVolume.objects.get(user=bob).updated_at is not None
    assert add([]) == 0


def test_daily_volume_add_is_part_of_the_callers_transaction():
    user = new_user()

    class Abort(Exception):
        pass

    with pytest.raises(Abort), transaction.atomic():
        with psycopg.Cursor(connection.connection) as cursor:
            daily_volume_add(cursor=cursor, rows=[(user.pk, DAY, Decimal("10"))])
        raise Abort
    assert stored(user) == {}


def test_daily_volume_add_folds_into_a_multi_statement_round_trip():
    user = new_user()
    params = daily_volume_add_params([(user.pk, DAY, Decimal("2")), (user.pk, DAY, Decimal("3"))])
    assert daily_volume_add_params([(user.pk, DAY, Decimal("0"))]) is None
    with transaction.atomic(), psycopg.ClientCursor(connection.connection) as cursor:
        cursor.execute(f"SELECT 1;\n{DAILY_VOLUME_ADD_SQL.strip()}", params)
    assert stored(user) == {DAY: Decimal("5")}


def test_daily_volume_add_works_on_a_django_cursor_too():
    user = new_user()
    with transaction.atomic(), connection.cursor() as cursor:
        daily_volume_add(cursor=cursor, rows=[(user.pk, DAY, Decimal("3.5"))])
    assert stored(user) == {DAY: Decimal("3.5")}


def test_nightly_recompute_rewrites_completed_days_from_the_trades_and_leaves_today():
    instrument = new_instrument()
    maker, taker = new_user("maker"), new_user("taker")
    now = at("2030-05-20T00:10:00")
    trade(instrument, maker, taker, at("2030-04-19T23:59:59"), "10.00", "1")  # before the window
    trade(instrument, maker, taker, at("2030-04-20T00:00:00"), "100.00", "2")
    trade(instrument, maker, taker, at("2030-05-19T23:59:59.999"), "50.00", "3")
    trade(instrument, taker, maker, at("2030-05-19T12:00:00"), "1.00", "5")
    trade(instrument, maker, taker, at("2030-05-20T00:05:00"), "7.00", "1")  # today
    trade(instrument, maker, maker, at("2030-05-19T13:00:00"), "500.00", "9")  # self-trade
    # Quoted in another asset: not dollars (it had been added as if it were).
    yen = new_instrument(quote_asset="JPYX", quote_precision=0, tick_size=Decimal("1"))
    trade(yen, maker, taker, at("2030-05-19T14:00:00"), "1000", "1000")
    # Drift: a wrong count, a day without trades, and today's row (the worker's, untouched).
    for user in (maker, taker):
        DailyVolume.objects.create(
            user=user, day=dt.date(2030, 5, 19), quote_volume=Decimal("1"), updated_at=now
        )
        DailyVolume.objects.create(
            user=user, day=dt.date(2030, 5, 1), quote_volume=Decimal("99"), updated_at=now
        )
        DailyVolume.objects.create(
            user=user, day=dt.date(2030, 5, 20), quote_volume=Decimal("3"), updated_at=now
        )
    daily_volume_recompute(now=now)
    expected = {
        dt.date(2030, 4, 20): Decimal("200"),
        dt.date(2030, 5, 19): Decimal("155"),
        dt.date(2030, 5, 20): Decimal("3"),
    }
    assert stored(maker) == expected
    assert stored(taker) == expected
    assert volume_30d(user_id=maker.pk, now=now) == Decimal("158")  # 2030-04-21 .. 2030-05-20
    days = daily_volumes(user_id=maker.pk, now=now)
    assert len(days) == 30 and days[0] == (dt.date(2030, 4, 21), Decimal(0))
    assert days[-2:] == [
        (dt.date(2030, 5, 19), Decimal("155")),
        (dt.date(2030, 5, 20), Decimal("3")),
    ]


def test_trade_id_lower_bound_finds_the_window_start_without_skipping_trades():
    instrument = new_instrument()
    maker, taker = new_user("maker"), new_user("taker")
    start = at("2030-07-01T00:00:00")
    trades = [
        trade(instrument, maker, taker, start + dt.timedelta(hours=h), "1.00", "1")
        for h in range(-48, 48, 3)
    ]
    bound = trade_id_lower_bound(start)
    first_inside = next(t for t in trades if t.executed_at >= start)
    assert bound <= first_inside.pk
    # Close to it: only the trades of the hour's safety margin are read in addition.
    assert bound >= next(t for t in trades if t.executed_at >= start - dt.timedelta(hours=4)).pk

"""Celery beat's expiry tick: an `expire_due` command only for a shard that holds an order due.

Each tick wrote one command row per shard every second (86,400 a day a shard, nearly all
changing nothing, never pruned). Real PostgreSQL, real shard workers (MATCHING_SHARDS=2)."""

import datetime as dt
import time
import uuid

import pytest
from django.db import connection

from conftest import transaction_held_open, wait_until
from exchange.models import Order
from exchange.tests.api_client import make_user
from matching.command_codec import datetime_to_ns
from matching.models import Command
from matching.services import shards_expire_due_enqueue
from matching.sharding import shard_for_symbol
from matching.tasks import expire_due_task
from matching.tests.order_rows import instrument_create, order_row_place
from matching.tests.worker_checks import all_commands_applied

pytestmark = [pytest.mark.processes, pytest.mark.django_db(transaction=True)]

SHARDS = 2
DUE = dt.datetime(2100, 1, 1, 12, 0, 0, 123456, tzinfo=dt.UTC)


def instrument_on(shard: int):
    while True:
        symbol = f"T{uuid.uuid4().hex[:8].upper()}"
        if shard_for_symbol(symbol, SHARDS) == shard:
            instrument = instrument_create(symbol=symbol)
            assert instrument.shard == shard
            return instrument


def expire_due_commands() -> list[tuple[int, int]]:
    return list(
        Command.objects.filter(kind=Command.Kind.EXPIRE_DUE)
        .order_by("id")
        .values_list("shard", "payload__now")
    )


def test_no_expire_due_command_while_no_open_order_is_due(settings):
    settings.MATCHING_SHARDS = SHARDS
    first, second = instrument_on(0), instrument_on(1)
    user = make_user()
    # Open GTD/DAY orders not due yet (a resting one and a stop), one that ended past its
    # expiry, and a GTC order carrying an expire_at (which means nothing to the engine).
    order_row_place(user=user, instrument=first, side="buy", quantity="1", price="10.00",
                    time_in_force="GTD", expire_at=DUE)  # fmt: skip
    order_row_place(user=user, instrument=second, side="sell", quantity="1", price="10.00",
                    time_in_force="DAY", expire_at=DUE)  # fmt: skip
    order_row_place(user=user, instrument=second, side="buy", quantity="1", price="20.00",
                    order_type="stop_limit", stop_price="20.00", time_in_force="GTD",
                    expire_at=DUE)  # fmt: skip
    ended = order_row_place(user=user, instrument=first, side="buy", quantity="1",
                            price="9.00", time_in_force="GTD", expire_at=DUE)  # fmt: skip
    Order.objects.filter(pk=ended.pk).update(
        status=Order.Status.EXPIRED, is_open=False, expire_at=dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    )
    order_row_place(user=user, instrument=second, side="buy", quantity="1", price="8.00",
                    expire_at=dt.datetime(2020, 1, 1, tzinfo=dt.UTC))  # fmt: skip

    for _ in range(3):  # three of beat's ticks
        expire_due_task()
    assert expire_due_commands() == []


def test_a_due_order_gets_one_expire_due_on_its_own_shard_and_expires(
    processes, process_env, settings
):
    settings.MATCHING_SHARDS = SHARDS
    env = {**process_env, "MATCHING_SHARDS": str(SHARDS)}
    first, second = instrument_on(0), instrument_on(1)
    for shard in range(SHARDS):
        worker = processes.manage("run_matching", "--shard", str(shard), env=env, name=f"m-{shard}")
        wait_until(lambda w=worker: "shard worker serving" in w.log_path.read_text(), timeout=30)
    user = make_user()
    later = DUE + dt.timedelta(days=1)
    stays = order_row_place(user=user, instrument=first, side="buy", quantity="1",
                            price="10.00", time_in_force="GTD", expire_at=later)  # fmt: skip
    gtd = order_row_place(user=user, instrument=second, side="sell", quantity="1",
                          price="10.00", time_in_force="GTD", expire_at=DUE)  # fmt: skip
    stop = order_row_place(user=user, instrument=second, side="buy", quantity="1",
                           price="20.00", order_type="stop_limit", stop_price="20.00",
                           time_in_force="GTD", expire_at=DUE)  # fmt: skip
    day = order_row_place(user=user, instrument=second, side="buy", quantity="1",
                          price="9.00", time_in_force="DAY",
                          expire_at=DUE + dt.timedelta(seconds=1))  # fmt: skip
    all_commands_applied()

    def statuses():
        return {o.pk: (o.status, o.reason) for o in Order.objects.filter(user=user)}

    assert statuses() == {
        stays.pk: ("new", ""),
        gtd.pk: ("new", ""),
        stop.pk: ("untriggered", ""),
        day.pk: ("new", ""),
    }
    due_ns = datetime_to_ns(DUE)

    # A microsecond before the first expiry: nothing is due anywhere, nothing is queued.
    assert shards_expire_due_enqueue(now_ns=due_ns - 1000, shard_count=SHARDS) == []
    # At it: one command, to shard 1 only; the worker expires the GTD order and the stop.
    queued = shards_expire_due_enqueue(now_ns=due_ns, shard_count=SHARDS)
    assert [(c.shard, c.payload) for c in queued] == [(1, {"now": due_ns})]
    all_commands_applied()
    assert statuses() == {
        stays.pk: ("new", ""),
        gtd.pk: ("expired", "gtd_expired"),
        stop.pk: ("expired", "gtd_expired"),
        day.pk: ("new", ""),
    }
    # The next ticks at that time find nothing due any more; the DAY order's time comes.
    assert shards_expire_due_enqueue(now_ns=due_ns, shard_count=SHARDS) == []
    day_ns = datetime_to_ns(day.expire_at)
    assert [c.shard for c in shards_expire_due_enqueue(now_ns=day_ns, shard_count=SHARDS)] == [1]
    all_commands_applied()
    assert statuses()[day.pk] == ("expired", "day_expired")
    assert statuses()[stays.pk] == ("new", "")
    assert expire_due_commands() == [(1, due_ns), (1, day_ns)]


def test_every_shard_gets_an_expire_due_when_the_orders_cannot_be_read(settings):
    settings.MATCHING_SHARDS = SHARDS

    def lock_orders():
        with connection.cursor() as cursor:
            cursor.execute("LOCK TABLE exchange_order IN ACCESS EXCLUSIVE MODE")

    now_ns = time.time_ns()
    with connection.cursor() as cursor:
        cursor.execute("SET lock_timeout = '200ms'")
    try:
        with transaction_held_open(lock_orders, seconds=20):
            queued = shards_expire_due_enqueue(now_ns=now_ns, shard_count=SHARDS)
    finally:
        with connection.cursor() as cursor:
            cursor.execute("RESET lock_timeout")
    assert sorted(c.shard for c in queued) == [0, 1]
    assert sorted(expire_due_commands()) == [(0, now_ns), (1, now_ns)]

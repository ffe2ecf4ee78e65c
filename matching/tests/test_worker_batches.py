"""The shard worker applies commands in durable batches: orders, trades, replies, snapshots."""

import datetime as dt
import json
import threading
from decimal import Decimal

import psycopg
import pytest
from django.db import connection

from audit.models import AuditRecord
from conftest import wait_until
from exchange.models import Instrument, Order, Trade
from exchange.services import instrument_rules_update
from exchange.tests.api_client import make_user
from exchange.timestamps import iso_z
from matching.command_codec import datetime_to_ns
from matching.engine import STP_CANCEL_BOTH, Engine
from matching.lease import database_conninfo
from matching.models import Command, JournalEntry
from matching.recovery import engine_state_read
from matching.services import shard_expire_due_enqueue
from matching.tests.order_rows import (
    instrument_create,
    order_cancel_enqueue,
    order_row_place,
)
from matching.tests.worker_checks import (
    all_commands_applied,
    exactly_once_invariants,
    matching_verify,
    matching_verify_run,
)
from matching.transport import book_snapshot_key, market_data_channel, replies_channel

pytestmark = [pytest.mark.processes, pytest.mark.django_db(transaction=True)]


def start_worker(processes, env, name="worker"):
    worker = processes.manage("run_matching", "--shard", "0", env=env, name=name)
    wait_until(lambda: "shard worker serving" in worker.log_path.read_text(), timeout=30)
    return worker


def settled(order: Order) -> Order:
    return wait_until(
        lambda: (o := Order.objects.get(pk=order.pk)).status != Order.Status.PENDING_NEW and o,
        timeout=20,
    )


def test_crossing_pair_makes_one_trade_with_both_fills_and_fees(processes, process_env):
    instrument = instrument_create()
    seller, buyer = make_user("seller"), make_user("buyer")
    start_worker(processes, process_env)

    sell = order_row_place(
        user=seller, instrument=instrument, side="sell", quantity="10", price="100.00"
    )
    buy = order_row_place(
        user=buyer, instrument=instrument, side="buy", quantity="10", price="100.00"
    )
    # Both commands applied first: the sell may settle as `new` in an earlier batch.
    all_commands_applied()
    sell, buy = settled(sell), settled(buy)

    trade = Trade.objects.get(instrument=instrument)
    assert (trade.price, trade.quantity, trade.quote_quantity) == (
        Decimal("100.00"),
        Decimal("10"),
        Decimal("1000.00"),
    )
    assert (trade.maker_order_id, trade.taker_order_id) == (sell.pk, buy.pk)
    assert (trade.maker_user_id, trade.taker_user_id) == (seller.pk, buyer.pk)
    assert trade.taker_side == "buy"
    assert (trade.maker_fee, trade.taker_fee) == (Decimal("1.00"), Decimal("2.00"))
    for order, fee in ((sell, Decimal("1.00")), (buy, Decimal("2.00"))):
        assert order.status == "filled"
        assert (order.filled_quantity, order.remaining_quantity) == (Decimal("10"), 0)
        assert (order.cumulative_quote, order.fees) == (Decimal("1000.00"), fee)
    assert buy.quote_spent == Decimal("1002.00")
    assert sell.priority_seq is not None
    commands = Command.objects.filter(order_id__in=[sell.pk, buy.pk]).order_by("id")
    assert [c.apply_seq for c in commands] == sorted(c.apply_seq for c in commands)
    assert JournalEntry.objects.filter(command_id__in=[c.pk for c in commands]).count() == 2
    # The trade is in each side's order history and user activity (the resting order's
    # history ended at "accepted": its fills were named only in the incoming order's record).
    # (Under the two orders: the audit trail's own tests write trade records of made-up ids.)
    records = AuditRecord.objects.filter(
        event_type="trade.executed", trade_id=trade.pk, order_id__in=[sell.pk, buy.pk]
    )
    assert sorted(
        (r.order_id, r.user_id, r.payload["liquidity"], r.payload["quantity"]) for r in records
    ) == sorted([(sell.pk, seller.pk, "maker", "10"), (buy.pk, buyer.pk, "taker", "10")])
    exactly_once_invariants()
    assert "OK" in matching_verify(process_env)


def test_a_cancel_that_comes_after_the_fill_is_audited_as_refused_under_the_orders_user(
    processes, process_env
):
    # It was "order.rejected" (the order filled) with no user or symbol: out of the user's
    # activity, and read as the order being rejected.
    instrument = instrument_create()
    seller, buyer = make_user(), make_user()
    start_worker(processes, process_env)
    sell = order_row_place(
        user=seller, instrument=instrument, side="sell", quantity="1", price="100.00"
    )
    order_row_place(user=buyer, instrument=instrument, side="buy", quantity="1", price="100.00")
    all_commands_applied()
    assert settled(sell).status == "filled"
    order_cancel_enqueue(sell)  # sent before the client learnt of the fill
    all_commands_applied()
    refused = AuditRecord.objects.get(event_type="order.cancel_refused", order_id=sell.pk)
    assert (refused.user_id, refused.symbol) == (seller.pk, instrument.symbol)
    assert (refused.payload["command"], refused.payload["code"]) == ("cancel", "UnknownOrder")
    assert not AuditRecord.objects.filter(event_type="order.rejected", order_id=sell.pk).exists()


def test_order_resting_then_filled_in_the_same_batch_keeps_its_priority_seq(processes, process_env):
    instrument = instrument_create()
    seller, buyer = make_user("seller"), make_user("buyer")
    sell = order_row_place(
        user=seller, instrument=instrument, side="sell", quantity="10", price="100.00"
    )
    buy = order_row_place(
        user=buyer, instrument=instrument, side="buy", quantity="10", price="100.00"
    )
    # Queued before the worker starts: its first poll takes both into one batch.
    start_worker(processes, process_env)
    all_commands_applied()
    sell, buy = settled(sell), settled(buy)
    applied_at = {c.order_id: c.applied_at for c in Command.objects.filter(order_id__isnull=False)}
    assert applied_at[sell.pk] == applied_at[buy.pk], "one batch (one transaction)"
    assert sell.status == buy.status == "filled"
    assert sell.priority_seq is not None, "the row does not depend on how commands were batched"
    exactly_once_invariants()


def test_a_sell_filled_by_large_buys_in_one_batch_sums_its_fills_past_64_bits(
    processes, process_env
):
    """Every trade fits 64 bits (a buy's budget is below 2^61 minor units), but one order's
    fills in a batch are summed: five buys of 2,000,000 at 1 in a 12-decimal quote asset give
    the sell 1e19 minor units. That sum was staged as a bigint: "bigint out of range", the
    worker exited, and the shard stalled until a restart retried the commands one by one."""
    instrument = instrument_create(quote_asset="TOK12", quote_precision=12, tick_size=Decimal("1"))
    sell = order_row_place(
        user=make_user("seller"), instrument=instrument, side="sell", quantity="10000000",
        price="1",
    )  # fmt: skip
    buy = {"instrument": instrument, "side": "buy", "quantity": "2000000", "price": "1"}
    buys = [order_row_place(user=make_user("buyer"), **buy) for _ in range(5)]
    # Queued before the worker starts: its first poll takes them all into one batch.
    start_worker(processes, process_env)
    all_commands_applied()
    sell = settled(sell)
    assert (sell.status, sell.cumulative_quote) == ("filled", Decimal("10000000"))
    assert [settled(buy).status for buy in buys] == ["filled"] * 5
    assert Trade.objects.filter(instrument=instrument).count() == 5
    exactly_once_invariants()


def test_changed_rules_are_journaled_and_rebuilt_after_a_restart(processes, process_env):
    instrument = instrument_create()
    worker = start_worker(processes, process_env)
    previous = Instrument.objects.get(pk=instrument.pk)
    instrument.market_collar_pct, instrument.default_stp_mode = Decimal("12.5"), "cancel_both"
    instrument.save()
    instrument_rules_update(instrument=instrument, previous=previous, actor="test")
    all_commands_applied()
    worker.terminate()
    worker.wait(timeout=30)

    def rules(engine: Engine):
        spec = next(i for i in engine.instruments() if i.symbol == instrument.symbol)
        return spec.collar_ppm, spec.stp_default

    assert rules(Engine.bulk_load(engine_state_read(0)[0])) == (125_000, STP_CANCEL_BOTH)
    start_worker(processes, process_env, name="worker2")  # recovers with the new rules
    sell = order_row_place(
        user=make_user("seller"), instrument=instrument, side="sell", quantity="1", price="9.00"
    )
    assert settled(sell).status == "new"
    # The journal's replay (update command included) equals the book rebuilt from the rows.
    assert "OK" in matching_verify(process_env)


def test_replies_name_the_applied_commands_after_they_commit(processes, process_env, redis_conn):
    instrument = instrument_create()
    start_worker(processes, process_env)
    pubsub = redis_conn.pubsub()
    pubsub.subscribe(replies_channel())
    order = order_row_place(
        user=make_user(), instrument=instrument, side="sell", quantity="3", price="5.00"
    )
    command_id = Command.objects.get(order_id=order.pk).pk
    seen: list[int] = []

    def reply_seen():
        message = pubsub.get_message(timeout=0.2)
        if message and message["type"] == "message":
            seen.extend(json.loads(message["data"]))
        return command_id in seen

    wait_until(reply_seen, timeout=20)
    # The reply is sent after COMMIT: the row is already applied when it arrives.
    assert Command.objects.get(pk=command_id).applied_at is not None
    assert Order.objects.get(pk=order.pk).status == "new"
    pubsub.close()


def test_book_snapshot_in_redis_equals_engine_depth(processes, process_env, redis_conn):
    instrument = instrument_create()
    user = make_user()
    start_worker(processes, process_env)
    for side, qty, price in [
        ("buy", "5", "99.00"),
        ("buy", "7", "99.00"),
        ("buy", "2", "98.50"),
        ("sell", "4", "101.00"),
        ("sell", "1", "102.25"),
    ]:
        order_row_place(user=user, instrument=instrument, side=side, quantity=qty, price=price)
    all_commands_applied()
    engine = Engine.bulk_load(engine_state_read(0)[0])
    bids, asks = engine.depth(instrument.symbol, 50)
    spec = next(i for i in engine.instruments() if i.symbol == instrument.symbol)

    def as_strings(levels):
        return [[str(spec.ticks_to_price(p)), str(spec.lots_to_qty(q)), n] for p, q, n in levels]

    def snapshot_current():
        raw = redis_conn.get(book_snapshot_key(instrument.symbol))
        snap = raw and json.loads(raw)
        return snap if snap and snap["seq"] == engine.book_seq(instrument.symbol) else None

    snapshot = wait_until(snapshot_current, timeout=10)
    assert snapshot["bids"] == as_strings(bids) == [["99.00", "12", 2], ["98.50", "2", 1]]
    assert snapshot["asks"] == as_strings(asks) == [["101.00", "4", 1], ["102.25", "1", 1]]
    assert snapshot["symbol"] == instrument.symbol
    assert snapshot["last_price"] is None


def test_post_only_order_that_would_match_is_stored_rejected(processes, process_env):
    instrument = instrument_create()
    start_worker(processes, process_env)
    order_row_place(
        user=make_user(), instrument=instrument, side="sell", quantity="1", price="10.00"
    )
    crossing = order_row_place(
        user=make_user(),
        instrument=instrument,
        side="buy",
        quantity="1",
        price="10.00",
        post_only=True,
    )
    crossing = settled(crossing)
    assert (crossing.status, crossing.reason, crossing.reject_code) == (
        "rejected",
        "post_only",
        "PostOnlyWouldMatch",
    )
    assert "10.00" in crossing.reject_message
    assert Command.objects.get(order_id=crossing.pk).reject_code == "PostOnlyWouldMatch"


def test_command_committed_late_with_a_smaller_id_is_still_applied(processes, process_env):
    instrument = instrument_create()
    user = make_user()
    start_worker(processes, process_env)
    resting = settled(
        order_row_place(user=user, instrument=instrument, side="sell", quantity="2", price="7.00")
    )
    # A cancel whose transaction takes its id now but commits only later.
    late = psycopg.connect(database_conninfo())
    late_id = late.execute(
        "INSERT INTO matching_command (shard, kind, payload, order_id, user_id, created_at, "
        "attempts, reject_code) VALUES (0, 'cancel', %s, %s, %s, now(), 0, '') RETURNING id",
        [json.dumps({"order_id": resting.pk}), resting.pk, user.pk],
    ).fetchone()[0]
    later = settled(
        order_row_place(user=user, instrument=instrument, side="sell", quantity="1", price="8.00")
    )
    later_command = Command.objects.get(order_id=later.pk)
    assert later_command.pk > late_id and later_command.applied_at is not None
    late.commit()  # no stream signal: only the database poll can find it
    late.close()
    cancelled = wait_until(
        lambda: (o := Order.objects.get(pk=resting.pk)).status == "cancelled" and o, timeout=20
    )
    assert cancelled.reason == "user"
    assert Command.objects.get(pk=late_id).apply_seq > later_command.apply_seq
    exactly_once_invariants()


def test_cancel_while_orders_flow_applies_every_command_once(processes, process_env):
    instrument = instrument_create()
    users = [make_user() for _ in range(3)]
    start_worker(processes, process_env)
    placed: list[Order] = []

    def place_many():
        for i in range(120):
            side = "buy" if i % 2 else "sell"
            price = f"{100 + (i % 7) - 3}.00"
            placed.append(
                order_row_place(
                    user=users[i % 3], instrument=instrument, side=side, quantity="3", price=price
                )
            )
            if i % 10 == 9:
                order_cancel_enqueue(placed[-5])
        connection.close()  # this thread's own connection

    thread = threading.Thread(target=place_many)
    thread.start()
    thread.join()
    all_commands_applied()
    exactly_once_invariants()
    assert "OK" in matching_verify(process_env)


def test_gtd_order_expires_and_a_no_op_expiry_is_not_journaled(processes, process_env):
    instrument = instrument_create()
    start_worker(processes, process_env)
    expire_at = dt.datetime(2100, 1, 1, 12, 0, 0, 123456, tzinfo=dt.UTC)
    gtd = settled(
        order_row_place(
            user=make_user(),
            instrument=instrument,
            side="sell",
            quantity="2",
            price="3.00",
            time_in_force="GTD",
            expire_at=expire_at,
        )
    )
    assert (gtd.status, gtd.expire_at) == ("new", expire_at)
    assert "OK" in matching_verify(process_env)  # the rebuilt GTD order keeps its expiry

    early = shard_expire_due_enqueue(shard=0, now_ns=datetime_to_ns(expire_at) - 1)
    all_commands_applied()
    early.refresh_from_db()
    assert early.applied_at is not None and early.apply_seq is None
    assert not JournalEntry.objects.filter(command_id=early.pk).exists()
    assert Order.objects.get(pk=gtd.pk).status == "new"

    due = shard_expire_due_enqueue(shard=0, now_ns=datetime_to_ns(expire_at))
    all_commands_applied()
    expired = Order.objects.get(pk=gtd.pk)
    assert (expired.status, expired.reason, expired.remaining_quantity) == (
        "expired",
        "gtd_expired",
        0,
    )
    assert JournalEntry.objects.filter(command_id=due.pk).exists()
    exactly_once_invariants()
    assert "OK" in matching_verify(process_env)


def test_matching_verify_fails_when_the_stored_book_differs_from_the_journal(
    processes, process_env
):
    instrument = instrument_create()
    start_worker(processes, process_env)
    order = settled(
        order_row_place(
            user=make_user(), instrument=instrument, side="buy", quantity="4", price="9.00"
        )
    )
    assert "OK" in matching_verify(process_env)
    Order.objects.filter(pk=order.pk).update(remaining_quantity=Decimal("3"))
    result = matching_verify_run(process_env)
    assert result.returncode == 1
    assert "MISMATCH" in result.stderr


def test_new_session_hours_move_open_day_orders_and_replay(processes, process_env, redis_conn):
    """A DAY order kept the expiry of the hours it was placed under: one placed while the
    instrument had hours stayed until that close after it went 24/7, and one placed on a 24/7
    book stayed open after it got hours and closed."""
    instrument = instrument_create(
        trades_24_7=False, session_open=dt.time(0), session_close=dt.time(23, 59),
        session_timezone="UTC",
    )  # fmt: skip
    start_worker(processes, process_env)
    soon = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(minutes=30)
    seller, buyer = make_user("seller"), make_user("buyer")

    def place(user, side, quantity, price, time_in_force):
        return order_row_place(
            user=user, instrument=instrument, side=side, quantity=quantity, price=price,
            time_in_force=time_in_force, expire_at=soon,
        )  # fmt: skip

    day_sell = place(seller, "sell", "2", "10.00", "DAY")
    day_buy = place(buyer, "buy", "1", "9.00", "DAY")
    gtd = place(seller, "sell", "1", "11.00", "GTD")
    all_commands_applied()
    feed = redis_conn.pubsub()
    feed.subscribe(market_data_channel(0))

    def session_change(**hours):
        previous = Instrument.objects.get(pk=instrument.pk)
        for name, value in hours.items():
            setattr(instrument, name, value)
        instrument.save()
        assert instrument_rules_update(instrument=instrument, previous=previous, actor="test")
        all_commands_applied()

    session_change(trades_24_7=True)  # now 24/7: DAY orders end at the next UTC midnight
    midnight = dt.datetime.combine(
        dt.datetime.now(dt.UTC).date() + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC
    )
    for order in (day_sell, day_buy):
        order.refresh_from_db()
        assert (order.status, order.expire_at) == ("new", midnight)
    gtd.refresh_from_db()
    assert gtd.expire_at == soon
    moved = AuditRecord.objects.filter(event_type="order.expiry_changed", symbol=instrument.symbol)
    assert sorted(moved.values_list("order_id", flat=True)) == sorted([day_sell.pk, day_buy.pk])
    payload = moved.first().payload
    assert (payload["expire_at"], payload["previous_expire_at"], payload["reason"]) == (
        iso_z(midnight),
        iso_z(soon),
        "session_hours_changed",
    )  # as the API writes instants (they read +00:00)
    assert payload["command_id"] > 0
    # Their owners hear of it on the orders channel (one frame each, status unchanged).
    frames = []

    def both_heard() -> bool:
        while (message := feed.get_message(timeout=0.2)) is not None:
            if message["type"] == "message":
                frames.extend(json.loads(message["data"]).get("orders", ()))
        return len(frames) >= 2

    wait_until(both_heard, timeout=10)
    # With "Z", as REST and the README write a time (it read "+00:00").
    at = midnight.isoformat().replace("+00:00", "Z")
    assert sorted((f["order_id"], f["status"], f["event"], f["expire_at"]) for f in frames) == [
        (day_sell.pk, "new", "expiry_changed", at),
        (day_buy.pk, "new", "expiry_changed", at),
    ]
    feed.close()

    # Back to hours whose session is over for the day: the DAY orders end at once.
    session_change(trades_24_7=False, session_open=dt.time(0), session_close=dt.time(0, 0, 1))
    for order in (day_sell, day_buy):
        order.refresh_from_db()
        assert (order.status, order.reason, order.is_open) == ("expired", "day_expired", False)
        # Its record says when it expired (it had kept the midnight it never reached).
        assert order.expire_at <= dt.datetime.now(dt.UTC)
    gtd.refresh_from_db()
    assert gtd.status == "new"
    changed = AuditRecord.objects.filter(
        event_type="instrument.rules_changed", symbol=instrument.symbol
    ).latest("seq")
    assert changed.payload["day_orders_expire_at"].endswith("Z")
    exactly_once_invariants()
    # The journal's replay (both updates with their DAY expiry) equals the rebuilt book.
    assert "OK" in matching_verify(process_env)


def test_a_day_order_placed_after_new_session_hours_in_the_same_batch_keeps_its_expiry(
    processes, process_env
):
    instrument = instrument_create(
        trades_24_7=False, session_open=dt.time(0), session_close=dt.time(23, 59),
        session_timezone="UTC",
    )  # fmt: skip
    soon = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(minutes=30)
    seller = make_user("seller")
    place = {"user": seller, "instrument": instrument, "side": "sell", "quantity": "1"}
    before = order_row_place(**place, price="10.00", time_in_force="DAY", expire_at=soon)
    previous = Instrument.objects.get(pk=instrument.pk)
    instrument.trades_24_7 = True
    instrument.save()
    instrument_rules_update(instrument=instrument, previous=previous, actor="test")
    after = order_row_place(**place, price="11.00", time_in_force="DAY", expire_at=soon)
    # Queued before the worker starts: its first poll takes all three into one batch.
    start_worker(processes, process_env)
    all_commands_applied()
    before.refresh_from_db()
    after.refresh_from_db()
    assert before.expire_at != soon and after.expire_at == soon
    moved = AuditRecord.objects.filter(event_type="order.expiry_changed", symbol=instrument.symbol)
    assert list(moved.values_list("order_id", flat=True)) == [before.pk]
    assert "OK" in matching_verify(process_env)


def test_a_batch_whose_session_postgresql_ended_is_not_held_against_its_commands():
    # A commit that failed because the database went away, or because PostgreSQL ended the
    # writer's session idle in its transaction (25P03, raised as an InternalError: a writer
    # stalled mid-batch), is no fault of the batch's commands: two such failures had rejected
    # accepted orders CommandFailed. A failure of the statements themselves still counts.
    from django.db import DatabaseError, IntegrityError, transaction

    from matching.batch_loop import commit_failure_is_commands_fault

    with pytest.raises(DatabaseError) as ended, transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL idle_in_transaction_session_timeout = 200")
        threading.Event().wait(1.0)  # stalled: PostgreSQL ends the session meanwhile
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    connection.close()
    assert getattr(ended.value.__cause__, "sqlstate", None) == "25P03", repr(ended.value)
    assert not commit_failure_is_commands_fault(ended.value)

    with (
        pytest.raises(IntegrityError) as refused,
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute("CREATE TEMP TABLE t (x int PRIMARY KEY); INSERT INTO t VALUES (1), (1)")
    assert commit_failure_is_commands_fault(refused.value)

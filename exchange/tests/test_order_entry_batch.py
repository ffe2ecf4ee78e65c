"""Orders stored together (`services.orders_store`, `order_batcher`): one transaction for the
batch, one answer per order, and an order refused in a batch changes nothing for the others."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest
from django.db import connection, transaction
from django.db.backends.signals import connection_created

from accounts.models import LedgerAccount, LedgerEntry
from accounts.selectors import ledger_discrepancies
from audit.models import AuditRecord
from audit.services import audit_entry
from conftest import start_web
from exchange import services
from exchange.api_errors import ApiError
from exchange.models import Order
from exchange.order_batcher import OrderBatcher, order_batcher
from exchange.order_rules import OrderRequest
from exchange.tests.api_client import ApiClient, make_instrument, make_user
from matching.models import Command


def buy(symbol: str, price: str, quantity: str, client_order_id: str | None = None):
    return OrderRequest(
        symbol=symbol,
        side="buy",
        order_type="limit",
        price=Decimal(price),
        quantity=Decimal(quantity),
        client_order_id=client_order_id,
    )


def plan(user, request):
    return services.order_plan(user=user, request=request)


def cash(user, asset="USD") -> Decimal:
    return LedgerAccount.objects.get(user=user, kind="cash", asset=asset).balance


def second_waits_for_first(*, first, second):
    """Run `first` in a transaction kept open while `second`, on another thread, is seen
    waiting (on a lock `first` holds); then commit `first`. Returns both results; each runs on
    its own thread and database connection."""
    holding, release = threading.Event(), threading.Event()

    def run_first():
        try:
            with transaction.atomic():
                result = first()
                holding.set()
                assert release.wait(timeout=10)
            return result
        finally:
            connection.close()

    def run_second():
        try:
            return second()
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=2) as pool:
        first_done = pool.submit(run_first)
        assert holding.wait(timeout=10)
        second_done = pool.submit(run_second)
        time.sleep(0.3)
        assert not second_done.done()
        release.set()
        return first_done.result(timeout=10), second_done.result(timeout=10)


@pytest.mark.django_db
def test_a_batch_answers_each_order_and_stores_only_those_that_fit():
    instrument = make_instrument()
    rich = make_user(funds={"USD": Decimal("1000.00")})
    poor = make_user(funds={"USD": Decimal("50.00")})
    symbol = instrument.symbol
    # Stored before the batch: the same client_order_id with another body is a conflict.
    earlier = services.order_place(user=rich, request=buy(symbol, "1.00", "1", "earlier"))
    plans = [
        plan(rich, buy(symbol, "10.00", "10")),  # holds 100.29
        plan(poor, buy(symbol, "10.00", "10")),  # 100.29 > 50.00 available
        plan(rich, buy(symbol, "2.00", "5", "twice")),
        plan(rich, buy(symbol, "2.00", "5", "twice")),  # a replay within the batch
        plan(rich, buy(symbol, "3.00", "5", "twice")),  # same id, another body
        plan(rich, buy(symbol, "2.00", "1", "earlier")),  # reused id of a stored order
        plan(poor, buy(symbol, "4.00", "10")),  # 40.17 fits once the other was refused
    ]
    results = services.orders_store(plans=plans)

    first, refused, twice, replay, conflict, reused, small = results
    assert first.created and twice.created and small.created
    assert isinstance(refused, ApiError) and refused.error == "InsufficientBalance"
    assert refused.field == "quantity" and "100.29 needed" in refused.message
    assert replay.order.pk == twice.order.pk and not replay.created and replay.command_id is None
    assert isinstance(conflict, ApiError) and conflict.error == "DuplicateClientOrderId"
    assert conflict.status_code == 409
    assert isinstance(reused, ApiError) and reused.status_code == 409
    assert reused.extra["order_id"] == earlier.order.pk

    stored = [first.order.pk, twice.order.pk, small.order.pk]
    assert Order.objects.filter(user__in=[rich, poor]).count() == 4  # with `earlier`
    commands = list(Command.objects.filter(order_id__in=stored).order_by("id"))
    assert [c.order_id for c in commands] == stored  # the shard applies them in batch order
    assert all(c.payload["order_id"] == c.order_id for c in commands)
    # Holds: price x quantity + the taker fee, rounded up to the cent, + a cent of fee rounding
    # reserve for each lot after the first.
    assert cash(rich) == Decimal("1000.00") - Decimal("1.01") - Decimal("100.29") - Decimal("10.06")
    assert cash(poor) == Decimal("50.00") - Decimal("40.17")
    holds = LedgerEntry.objects.filter(kind="hold", order_id__in=stored)
    assert sorted(holds.values_list("order_id", flat=True)) == sorted(stored)
    submitted = AuditRecord.objects.filter(event_type="order.submitted", order_id__in=stored)
    assert {r.order_id: r.payload["command_id"] for r in submitted} == {
        c.order_id: c.pk for c in commands
    }
    assert ledger_discrepancies() == {}


@pytest.mark.django_db(transaction=True)
def test_orders_placed_together_outside_a_transaction_are_stored_in_one():
    instrument = make_instrument()
    users = [make_user(funds={"USD": Decimal("100.00")}) for _ in range(12)]
    placements: list = []
    start = threading.Barrier(len(users))

    def place(user) -> None:
        start.wait()
        try:
            placements.append(
                services.order_place(user=user, request=buy(instrument.symbol, "1.00", "1"))
            )
        finally:
            connection.close()

    threads = [threading.Thread(target=place, args=(user,)) for user in users]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(placements) == 12 and all(p.created for p in placements)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(DISTINCT txid) FROM audit_record WHERE order_id = ANY(%s)",
            [[p.order.pk for p in placements]],
        )
        transactions = cursor.fetchone()[0]
    assert 1 <= transactions < 12  # the orders that waited for a commit went in together
    assert all(cash(user) == Decimal("100.00") - Decimal("1.01") for user in users)
    assert ledger_discrepancies() == {}


@pytest.mark.django_db(transaction=True)
def test_a_client_order_id_stored_by_a_concurrent_batch_is_answered_as_a_replay():
    """Two batches store the same client_order_id at once: the second one's INSERT waits on the
    first's unique index entry and fails when that commits; the second batch is then stored
    again, finds the order and answers it as a replay (nothing stored or held twice)."""
    instrument = make_instrument()
    user = make_user(funds={"USD": Decimal("100.00")})
    request = buy(instrument.symbol, "1.00", "1", "same-id")
    stored, replay = second_waits_for_first(
        first=lambda: services.orders_store(plans=[plan(user, request)])[0],
        second=lambda: services.orders_store(plans=[plan(user, request)])[0],
    )  # the second batch waits on the first one's unique index entry

    assert stored.created and not replay.created and replay.order.pk == stored.order.pk
    assert Order.objects.filter(user=user).count() == 1
    assert Command.objects.filter(order_id=stored.order.pk).count() == 1
    assert cash(user) == Decimal("100.00") - Decimal("1.01")  # held once
    assert ledger_discrepancies() == {}


@pytest.mark.django_db(transaction=True)
def test_an_amend_waiting_for_a_batch_to_commit_does_not_deadlock_with_it():
    """A batch holds the command-order lock until it commits, and its COMMIT checks the new
    orders' foreign keys (FOR KEY SHARE on the instrument row). An amend of an order of the
    same instrument, waiting for that lock, must not hold the instrument row FOR UPDATE: it
    did (select_related under select_for_update locks every joined row), and PostgreSQL
    aborted one of the two as a deadlock: an order entry batch or an amend answered 500."""
    instrument = make_instrument()
    trader, amender = make_user(), make_user()
    resting = services.order_place(user=amender, request=buy(instrument.symbol, "5.00", "2"))
    placement, command = second_waits_for_first(
        first=lambda: services.orders_store(
            plans=[plan(trader, buy(instrument.symbol, "4.00", "1"))]
        )[0],
        second=lambda: services.order_amend(
            order=resting.order, actor=amender, quantity=Decimal(3)
        ),
    )  # the amend waits for the command-order lock the batch holds until it commits

    assert placement.created and Order.objects.filter(pk=placement.order.pk).exists()
    assert command.kind == Command.Kind.AMEND and command.pk > placement.command_id
    assert ledger_discrepancies() == {}


@pytest.mark.django_db(transaction=True)
def test_a_failed_batch_is_reported_to_each_of_its_orders_and_the_next_one_works():
    instrument = make_instrument()
    user = make_user(funds={"USD": Decimal("100.00")})
    broken = plan(user, buy(instrument.symbol, "1.00", "1"))
    broken.command_payload = {"not json": object()}  # fails inside the batch's transaction
    with pytest.raises(TypeError):
        order_batcher.store(broken)
    assert not Order.objects.filter(user=user).exists()
    assert cash(user) == Decimal("100.00")
    placed = services.order_place(user=user, request=buy(instrument.symbol, "1.00", "1"))
    assert placed.created and Order.objects.filter(user=user).count() == 1


@pytest.mark.django_db(transaction=True)
def test_cancels_and_orders_queued_together_are_stored_in_the_same_transaction():
    instrument = make_instrument()
    user = make_user(funds={"USD": Decimal("100.00")})
    resting = [
        services.order_place(user=user, request=buy(instrument.symbol, "1.00", "1")).order
        for _ in range(3)
    ]
    cancels = [
        services.CancelPlan(
            order=order,
            audit=audit_entry(
                event_type="order.cancel_requested",
                actor=user,
                user_id=user.pk,
                order_id=order.pk,
                symbol=instrument.symbol,
                shard=instrument.shard,
                payload={"reason": "user"},
            ),
        )
        for order in resting
    ]
    places = [plan(user, buy(instrument.symbol, "2.00", "1")) for _ in range(3)]
    futures = [order_batcher.submit(p) for p in cancels + places]
    results = [future.result(timeout=10) for future in futures]

    commands, placements = results[:3], results[3:]
    assert [c.order_id for c in commands] == [o.pk for o in resting]
    assert all(c.kind == "cancel" and c.payload == {"order_id": c.order_id} for c in commands)
    assert all(p.created for p in placements)
    stored = Command.objects.filter(pk__in=[c.pk for c in commands])
    assert sorted(stored.values_list("order_id", flat=True)) == sorted(o.pk for o in resting)
    requested = AuditRecord.objects.filter(event_type="order.cancel_requested", user_id=user.pk)
    assert sorted(r.payload["command_id"] for r in requested) == sorted(c.pk for c in commands)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(DISTINCT txid) FROM audit_record WHERE order_id = ANY(%s)"
            " AND event_type IN ('order.cancel_requested', 'order.submitted')"
            " AND (event_type = 'order.cancel_requested' OR order_id = ANY(%s))",
            [
                [o.pk for o in resting] + [p.order.pk for p in placements],
                [p.order.pk for p in placements],
            ],
        )
        assert cursor.fetchone()[0] < 6  # queued together, stored together


@pytest.mark.processes
def test_more_waiting_orders_than_pooled_connections_are_all_answered(
    exchange_stack, live_db, processes, process_env
):
    """Threads waiting for the batch or for the engine hold no database connection: with a
    pool of 3 and 12 view threads, 36 concurrent orders are all answered (before, the waiting
    threads kept every connection and the batch timed out on the pool: 500s)."""
    base = start_web(
        processes,
        env={
            **process_env,
            "DB_POOL_MAX_SIZE": "3",
            "DB_POOL_TIMEOUT": "3",
            "API_VIEW_THREADS": "12",
        },
        name="web-small-pool",
    )
    instrument = make_instrument()
    clients = [ApiClient(base, make_user()) for _ in range(6)]

    def place(i: int) -> int:
        side, price = ("buy", "9.00") if i % 2 else ("sell", "11.00")
        return (
            clients[i % len(clients)]
            .place(
                symbol=instrument.symbol, side=side, order_type="limit", price=price, quantity="1"
            )
            .status_code
        )

    with ThreadPoolExecutor(max_workers=36) as pool:
        codes = list(pool.map(place, range(36)))
    assert sorted(set(codes)) == [201], codes


@pytest.mark.django_db
def test_day_orders_checked_before_new_session_hours_committed_follow_them():
    """DAY orders in flight while staff closed a 24/7 book had been checked against the old
    row: they rested on the closed book until the next UTC midnight (7 of 23, helper 48)."""
    import dataclasses
    import datetime as dt

    from django.utils import timezone

    from exchange.models import Instrument
    from exchange.order_rules import day_expiry, session_open_at, to_ns

    instrument = make_instrument()  # 24/7
    user = make_user(funds={"USD": Decimal("1000.00")})

    def day_buy():
        return plan(
            user, dataclasses.replace(buy(instrument.symbol, "10.00", "1"), time_in_force="DAY")
        )

    def hours_changed(**hours):
        Instrument.objects.filter(pk=instrument.pk).update(
            trades_24_7=False, session_timezone="UTC", **hours
        )
        return Instrument.objects.get(pk=instrument.pk)

    checked = day_buy()  # against the 24/7 row
    hours_changed(session_open=dt.time(0), session_close=dt.time(0, 0, 1))  # closed now
    [refused] = services.orders_store(plans=[checked])
    assert isinstance(refused, ApiError) and refused.error == "MarketClosed"
    assert not Order.objects.filter(user=user).exists()

    Instrument.objects.filter(pk=instrument.pk).update(trades_24_7=True)
    checked = day_buy()
    edited = hours_changed(session_open=dt.time(0), session_close=dt.time(23, 59, 59))
    [result] = services.orders_store(plans=[checked])
    now = timezone.now()
    if session_open_at(edited, now):  # a weekday: the new session's close
        stored = Order.objects.get(pk=result.order.pk)
        assert stored.expire_at == day_expiry(edited, now)
        command = Command.objects.get(order_id=stored.pk)
        assert command.payload["expire_at"] == to_ns(stored.expire_at)
    else:  # Saturday or Sunday in UTC: no session is open
        assert isinstance(result, ApiError) and result.error == "MarketClosed"


@pytest.mark.django_db(transaction=True)
def test_a_day_order_stored_while_an_edit_of_the_hours_commits_waits_for_it():
    """The read of the hours waits for an edit in progress (a plain read saw the row before
    it and stored the order with the old expiry, after the edit's command had gone)."""
    import dataclasses
    import datetime as dt

    from exchange.models import Instrument

    instrument = make_instrument()  # 24/7
    user = make_user(funds={"USD": Decimal("1000.00")})
    request = dataclasses.replace(buy(instrument.symbol, "10.00", "1"), time_in_force="DAY")
    checked = plan(user, request)

    def edit():
        Instrument.objects.filter(pk=instrument.pk).update(
            trades_24_7=False, session_open=dt.time(0), session_close=dt.time(0, 0, 1),
            session_timezone="UTC",
        )  # fmt: skip

    _, [refused] = second_waits_for_first(
        first=edit, second=lambda: services.orders_store(plans=[checked])
    )
    assert isinstance(refused, ApiError) and refused.error == "MarketClosed"


def deactivate(user, staff) -> int:
    """What the admin's save of a user unticked `is_active` does, in one transaction: the
    row's UPDATE, then a cancel of each open order; returns how many were sent."""
    with transaction.atomic():
        user.is_active = False
        user.save(update_fields=["is_active"])
        return services.orders_cancel_for_deactivated_user(user=user, actor=staff)


@pytest.mark.django_db(transaction=True)
def test_an_order_checked_before_its_user_was_deactivated_is_refused_when_stored_after():
    """The store waits for a deactivation committing and refuses the order (it was stored,
    missed by the deactivation's cancels, and rested on the book for a user who could no
    longer sign in)."""
    instrument = make_instrument()
    user, staff = make_user(funds={"USD": Decimal("1000.00")}), make_user("staff")
    checked = plan(user, buy(instrument.symbol, "10.00", "1"))  # authenticated and checked

    sent, [refused] = second_waits_for_first(
        first=lambda: deactivate(user, staff),
        second=lambda: services.orders_store(plans=[checked]),
    )
    assert sent == 0
    assert isinstance(refused, ApiError)
    assert (refused.error, refused.error_code, refused.status_code) == (
        "AuthenticationFailed", -1003, 401
    )  # fmt: skip
    assert not Order.objects.filter(user=user).exists()
    assert cash(user) == Decimal("1000.00")


@pytest.mark.django_db(transaction=True)
def test_a_deactivation_committing_while_an_order_is_stored_cancels_it():
    """The deactivation waits for the batch storing its user's order, and its cancels then
    include that order."""
    instrument = make_instrument()
    user, staff = make_user(funds={"USD": Decimal("1000.00")}), make_user("staff")
    checked = plan(user, buy(instrument.symbol, "10.00", "1"))

    [placed], sent = second_waits_for_first(
        first=lambda: services.orders_store(plans=[checked]),
        second=lambda: deactivate(user, staff),
    )
    assert sent == 1
    assert Command.objects.filter(
        order_id=placed.order.pk, kind=Command.Kind.CANCEL, payload__reason="staff"
    ).exists()


@pytest.mark.django_db
def test_a_deactivation_stores_its_cancels_together_however_many_open_orders():
    """One set of statements for all the user's open orders (one at a time, 3,000 open orders
    kept the command-order lock for 45 s, and every order entry of the exchange waited)."""
    from django.test.utils import CaptureQueriesContext

    instrument = make_instrument()
    staff = make_user("staff")

    def deactivation_queries(open_orders: int) -> int:
        user = make_user(funds={"USD": Decimal("1000.00")})
        services.orders_store(
            plans=[plan(user, buy(instrument.symbol, "1.00", "1")) for _ in range(open_orders)]
        )
        with CaptureQueriesContext(connection) as queries:
            assert deactivate(user, staff) == open_orders
        cancels = Command.objects.filter(user_id=user.pk, kind=Command.Kind.CANCEL)
        assert cancels.count() == open_orders
        assert (
            AuditRecord.objects.filter(
                user_id=user.pk, event_type="order.cancel_requested", payload__reason="staff"
            ).count()
            == open_orders
        )
        return len(queries.captured_queries)

    assert deactivation_queries(20) == deactivation_queries(1)


@pytest.mark.django_db(transaction=True)
def test_a_batcher_thread_logs_only_the_queries_of_its_current_batch_under_debug(settings):
    """Under DEBUG (`make run`) Django logs every query of a connection until a request starts;
    a batcher thread stores batches for the process's life and had kept every query of every
    batch, up to Django's cap of 9,000 per thread."""
    settings.DEBUG = True
    settings.ORDER_ENTRY_BATCH_THREADS = 1
    instrument = make_instrument()
    user = make_user(funds={"USD": Decimal("100.00")})
    batcher_connections = []

    def seen(sender, connection, **kwargs) -> None:
        if threading.current_thread().name.startswith("order-batcher"):
            batcher_connections.append(connection)

    connection_created.connect(seen)
    batcher = OrderBatcher()
    try:
        logged = []
        for _ in range(4):
            assert batcher.store(plan(user, buy(instrument.symbol, "1.00", "1"))).created
            logged.append(max(len(c.queries_log) for c in batcher_connections))
    finally:
        connection_created.disconnect(seen)
    assert batcher_connections
    assert logged[-1] == logged[0], logged  # one batch's queries, not all of them

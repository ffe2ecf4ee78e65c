"""The worker settles every batch in the ledger: fills move both assets, fees and maker
rebates are booked, and holds go back when orders end or shrink."""

from decimal import Decimal

import psycopg
import pytest
from django.db import connection, transaction
from django.db.models import Sum

from accounts.ledger import USERS_LOCK_SQL, funds_deposit, users_lock_params
from accounts.models import DailyVolume, LedgerAccount
from accounts.selectors import ledger_discrepancies
from conftest import wait_until
from exchange.models import Order, Trade
from exchange.order_rules import OrderRequest
from exchange.services import order_amend, order_place
from exchange.tests.api_client import make_instrument, make_user
from matching.models import Command
from matching.tests.order_rows import instrument_create, order_row_place
from matching.tests.test_worker_batches import start_worker
from matching.tests.worker_checks import all_commands_applied, exactly_once_invariants
from matching.transport import book_snapshot_key

pytestmark = [pytest.mark.processes, pytest.mark.django_db(transaction=True)]

REBATE_PPM = -300  # a maker rebate of 0.03%


def balance(user, kind: str, asset: str) -> Decimal:
    account = LedgerAccount.objects.filter(user=user, kind=kind, asset=asset).first()
    return account.balance if account else Decimal(0)


def exchange_balance(kind: str, asset: str) -> Decimal:
    account = LedgerAccount.objects.filter(user=None, kind=kind, asset=asset).first()
    return account.balance if account else Decimal(0)


def test_maker_rebates_are_paid_by_the_exchange_and_reach_the_maker(processes, process_env):
    instrument = instrument_create()
    base = instrument.base_asset
    seller, buyer = make_user("seller", funds={}), make_user("buyer", funds={})
    rebate_before = exchange_balance("rebate_expense", "USD")
    fees_before = exchange_balance("fee_revenue", "USD")
    start_worker(processes, process_env)
    # A selling maker with a rebate: the rebate is paid into its cash with the trade.
    order_row_place(user=seller, instrument=instrument, side="sell", quantity="10",
                    price="100.00", maker_fee_ppm=REBATE_PPM)  # fmt: skip
    order_row_place(user=buyer, instrument=instrument, side="buy", quantity="10", price="100.00")
    # A buying maker with a rebate: it stays in the hold and comes back with the release.
    order_row_place(user=buyer, instrument=instrument, side="buy", quantity="5",
                    price="99.00", maker_fee_ppm=REBATE_PPM)  # fmt: skip
    order_row_place(user=seller, instrument=instrument, side="sell", quantity="5", price="99.00")
    all_commands_applied()

    # Trade 1: 10 x 100.00 = 1000.00; the seller earns 0.30, the buyer pays 2.00 in fees.
    # Trade 2: 5 x 99.00 = 495.00; the buyer earns 0.14 (a rebate rounds toward zero: 0.1485),
    # the seller pays 0.99.
    assert balance(seller, "cash", "USD") == Decimal("1000.30") + Decimal("494.01")
    assert balance(buyer, "cash", base) == Decimal(15)
    # The buyer deposited what the orders held (x1.01) and spent 1002.00 and 494.86.
    assert balance(buyer, "cash", "USD") == Decimal("1010.00") + Decimal("499.95") - Decimal(
        "1002.00"
    ) - Decimal("494.86")
    assert balance(buyer, "hold", "USD") == 0 and balance(seller, "hold", base) == 0
    assert exchange_balance("rebate_expense", "USD") - rebate_before == Decimal("-0.44")
    assert exchange_balance("fee_revenue", "USD") - fees_before == Decimal("2.99")
    # Both legs of both trades count in each user's daily volume (the fee tiers' 30 days).
    for user in (seller, buyer):
        volume = DailyVolume.objects.filter(user=user).aggregate(total=Sum("quote_volume"))
        assert volume["total"] == Decimal("1495.00")
    exactly_once_invariants()


def test_only_trades_quoted_in_usd_count_toward_the_fee_tiers_volume(processes, process_env):
    # The volume thresholds are in USD: a trade quoted in another asset had been added as if
    # its amount were dollars (a million of a cheap currency bought the Volume 1 tier).
    usd, other = instrument_create(), instrument_create(quote_asset="JPYX")
    seller, buyer = make_user("seller", funds={}), make_user("buyer", funds={})
    start_worker(processes, process_env)
    for instrument in (usd, other):
        order_row_place(user=seller, instrument=instrument, side="sell", quantity="10",
                        price="100.00")  # fmt: skip
        order_row_place(user=buyer, instrument=instrument, side="buy", quantity="10",
                        price="100.00")  # fmt: skip
    all_commands_applied()
    assert Trade.objects.filter(instrument=other).count() == 1
    for user in (seller, buyer):
        volume = DailyVolume.objects.filter(user=user).aggregate(total=Sum("quote_volume"))
        assert volume["total"] == Decimal("1000.00")
    exactly_once_invariants()


def test_the_worker_draws_a_trades_id_only_once_it_holds_its_users(processes, process_env):
    # A user's fills are listed by trade id: an id drawn before the user's lock (held here as
    # any ledger writer holds it, until its commit) let a batch of another shard commit a
    # smaller id after a larger one had been read.
    instrument = instrument_create()
    maker, taker = make_user("maker", funds={}), make_user("taker", funds={})
    start_worker(processes, process_env)
    order_row_place(user=maker, instrument=instrument, side="sell", quantity="1", price="10.00")
    all_commands_applied()
    with psycopg.connect(process_env["DATABASE_URL"]) as writer:  # a transaction, left open
        writer.execute(USERS_LOCK_SQL, users_lock_params([maker.pk]))
        sequence = "SELECT last_value, is_called FROM exchange_trade_id_seq"
        before = writer.execute(sequence).fetchone()
        order_row_place(user=taker, instrument=instrument, side="buy", quantity="1",
                        price="10.00")  # fmt: skip

        def worker_waits_for_the_user() -> bool:
            waiting = (
                "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND database"
                " = (SELECT oid FROM pg_database WHERE datname = current_database())"
            )
            with connection.cursor() as cursor:
                cursor.execute(waiting)
                return cursor.fetchone() is not None

        wait_until(worker_waits_for_the_user, timeout=20)
        after = psycopg.connect(process_env["DATABASE_URL"], autocommit=True)
        with after:
            assert after.execute(sequence).fetchone() == before, "a trade id drawn first"
        writer.rollback()
    all_commands_applied()
    assert Trade.objects.filter(instrument=instrument).count() == 1
    exactly_once_invariants()


def test_amend_down_releases_on_apply_and_a_second_amend_waits_for_the_first(
    processes, process_env
):
    instrument = instrument_create()
    seller = make_user("seller", funds={})
    order = order_row_place(
        user=seller, instrument=instrument, side="sell", quantity="10", price="50.00"
    )
    order_amend(order=order, actor=seller, quantity=Decimal(4))
    with pytest.raises(Exception) as refused:
        order_amend(order=order, actor=seller, quantity=Decimal(3))
    assert refused.value.error == "AmendPending"
    base = instrument.base_asset
    assert balance(seller, "hold", base) == 10, "a decrease is released only once applied"
    start_worker(processes, process_env)
    all_commands_applied()
    assert balance(seller, "hold", base) == 4 and balance(seller, "cash", base) == 6
    assert Order.objects.get(pk=order.pk).hold_remaining == 4
    assert Command.objects.filter(order_id=order.pk, kind="amend").count() == 1
    assert ledger_discrepancies() == {}


def drain_one_command_a_batch() -> None:
    """Apply every queued command of shard 0 in this process, one command per batch."""
    from exchange.redis_connection import redis_client
    from matching.batch_loop import ShardLoop
    from matching.lease import ShardLease
    from matching.publish import Publisher

    lease = ShardLease(shard=0)
    lease.acquire(wait=False)
    loop = ShardLoop(
        shard=0,
        epoch=lease.epoch,
        actor_label="test",
        publisher=Publisher(client=redis_client(), shard=0, consumer="test"),
        batch_limit=1,
    )
    try:
        loop.recover()
        while rows := loop.poll():
            loop.batch_apply(rows)
    finally:
        loop.close()
        lease.release()


@pytest.mark.parametrize("one_batch", [True, False], ids=["same-batch", "later-batch"])
def test_an_amend_refused_because_its_order_ended_leaves_the_orders_held_amount_as_it_was(
    processes, process_env, one_batch
):
    # Its hold went back whole when the order ended, yet the row kept the amend's held_amount:
    # a filled 20 x 99.90 buy read 1201.31 held.
    instrument = instrument_create()
    buyer, seller = make_user("buyer", funds={}), make_user("seller", funds={})
    buy = order_row_place(
        user=buyer, instrument=instrument, side="buy", quantity="20", price="99.90"
    )
    order_row_place(user=seller, instrument=instrument, side="sell", quantity="20", price="99.90")
    held = Order.objects.get(pk=buy.pk).held_amount
    order_amend(order=buy, actor=buyer, quantity=Decimal(12))  # stored: the row is still open
    assert Order.objects.get(pk=buy.pk).held_amount < held
    if one_batch:
        start_worker(processes, process_env)
        all_commands_applied()
    else:
        drain_one_command_a_batch()  # the fill ends the buy a batch before its amend is refused
    ended = Order.objects.get(pk=buy.pk)
    assert (ended.status, ended.hold_remaining, ended.held_amount) == ("filled", 0, held)
    assert Command.objects.get(order_id=buy.pk, kind="amend").reject_code
    assert balance(buyer, "hold", "USD") == 0 and ledger_discrepancies() == {}


@pytest.mark.parametrize("grow", [False, True], ids=["price", "price-and-quantity"])
def test_a_buy_repriced_lower_while_a_fill_of_it_waits_still_fills_in_full(
    processes, process_env, grow
):
    # The amend reckoned its budget from the row (nothing filled yet): 10 lots at 90. The fill
    # of 5 at 100 ahead of it in the engine spent more than that reckoning gave those lots, and
    # the buy ended a lot short with reason max_quote.
    instrument = instrument_create()
    buyer, seller = make_user("buyer", funds={}), make_user("seller", funds={})
    buy = order_row_place(
        user=buyer, instrument=instrument, side="buy", quantity="10", price="100.00"
    )
    order_row_place(user=seller, instrument=instrument, side="sell", quantity="5", price="100.00")
    total = Decimal(12 if grow else 10)
    if grow:
        funds_deposit(user=buyer, asset="USD", amount=Decimal("200.00"), memo="test funds")
    order_amend(order=buy, actor=buyer, price=Decimal("90.00"), quantity=total if grow else None)
    start_worker(processes, process_env)
    all_commands_applied()
    resting = Order.objects.get(pk=buy.pk)
    assert (resting.status, resting.filled_quantity, resting.price) == (
        "partially_filled",
        5,
        Decimal("90.00"),
    )
    # Once applied, the amend's batch gives back what the rest does not need: its lots at 90
    # with the fee at the higher rate and the fill rounding reserve.
    rest_lots = int(total) - 5
    rest_need = Decimal(90 * rest_lots) * Decimal("1.002") + Decimal(rest_lots - 1) / 100
    assert balance(buyer, "hold", "USD") == rest_need.quantize(Decimal("0.01"))
    order_row_place(
        user=seller, instrument=instrument, side="sell", quantity=str(rest_lots), price="90.00"
    )
    all_commands_applied()
    filled = Order.objects.get(pk=buy.pk)
    assert (filled.status, filled.filled_quantity, filled.reason) == ("filled", total, "")
    assert (
        balance(buyer, "hold", "USD") == 0
        and balance(buyer, "cash", instrument.base_asset) == total
    )
    assert ledger_discrepancies() == {}
    exactly_once_invariants()


def test_a_market_buy_behind_a_sell_on_its_way_to_the_engine_is_held_for_it(
    processes, process_env, redis_conn
):
    # A market buy's budget is priced from the best ask of the worker's book snapshot. With no
    # ask there it held nothing, though a sell stored before it was on its way to the engine
    # ahead of it: the buy met that sell and ended cancelled, max_quote, having filled nothing.
    instrument = make_instrument()
    maker, taker = make_user("maker"), make_user("taker")
    worker = start_worker(processes, process_env)
    with transaction.atomic():
        order_place(user=maker, request=limit_request(instrument, "buy", "90.00", "1"))
    all_commands_applied()
    key = book_snapshot_key(instrument.symbol)
    wait_until(lambda: redis_conn.get(key), timeout=15)  # a bid and no ask
    worker.terminate()
    worker.wait(timeout=30)
    with transaction.atomic():
        sell = order_place(user=maker, request=limit_request(instrument, "sell", "100.00", "5"))
        buy = order_place(
            user=taker,
            request=OrderRequest(
                symbol=instrument.symbol, side="buy", order_type="market", quantity=Decimal(5)
            ),
        )
    # 5 at the 5 % collar above 100.00 (105.00), the 0.20 % taker fee and the rounding reserve.
    assert buy.order.held_amount == Decimal("526.09")
    start_worker(processes, process_env, name="worker-2")
    all_commands_applied()
    bought = Order.objects.get(pk=buy.order.pk)
    assert (bought.status, bought.reason, bought.filled_quantity) == ("filled", "", 5)
    assert Order.objects.get(pk=sell.order.pk).status == "filled"
    assert balance(taker, "hold", "USD") == 0
    exactly_once_invariants()


def limit_request(instrument, side: str, price: str, quantity: str) -> OrderRequest:
    return OrderRequest(
        symbol=instrument.symbol,
        side=side,
        order_type="limit",
        price=Decimal(price),
        quantity=Decimal(quantity),
    )

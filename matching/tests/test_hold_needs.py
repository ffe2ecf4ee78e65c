"""What the batch writer reckons a live order's rest needs held (`BatchWriter._hold_needs`):
the amount it gives back above that must bound every way the engine can still spend, since the
engine's own cap (max_quote) stays where it was."""

from matching.batch_writer import Applied, BatchWriter, _OrderUpdate
from matching.engine import protocol as p
from matching.engine.testing import SYM, Harness


def needs(harness: Harness, *order_ids: int) -> dict[int, int | None]:
    updates = {}
    for order_id in order_ids:
        update = updates[order_id] = _OrderUpdate(order_id, SYM, 1)
        update.rebudget = True
    specs = {inst.symbol: inst for inst in harness.engine.instruments()}
    BatchWriter._hold_needs(harness.engine, specs, updates)
    return {order_id: update.need for order_id, update in updates.items()}


def test_a_buy_needs_its_rest_at_its_price_with_the_higher_fee_and_the_rounding_reserve():
    harness = Harness()
    harness.buy(1, price=10_000, qty=6, maker_fee_ppm=1_000, taker_fee_ppm=2_000)
    # A fee tier may charge makers more than takers: the rest may be paid at either rate.
    harness.buy(2, price=10_000, qty=6, maker_fee_ppm=3_000, taker_fee_ppm=2_000)
    harness.sell(3, price=20_000, qty=7)
    # 6 x 100.00 = 600.00, the fee (1.20 or 1.80) and 5 minor units of reserve.
    assert needs(harness, 1, 2, 3) == {1: 60_125, 2: 60_185, 3: 7}


def test_no_need_where_only_the_engines_cap_bounds_what_the_rest_can_cost():
    # A lot at 0.49 of an 8-place coin worth less than a minor unit: each fill costs at least
    # one unit, whatever its size.
    cheap = Harness(tick_size="0.01", lot_size="0.00000001", quote_decimals=2)
    cheap.buy(1, price=49, qty=1_000)
    stops = Harness()
    stops.place(4, True, 2, stop_price=10_000, order_type=p.STOP_MARKET)
    stops.cancel(5)  # unknown: ended orders and strangers have no need either
    assert needs(cheap, 1) == {1: None}
    assert needs(stops, 4, 5) == {4: None, 5: None}


def test_a_batch_locks_the_users_of_the_orders_that_may_give_hold_back_with_the_others():
    # A post-only buy repriced behind the ask trades nothing: its user's ledger lock was taken
    # only when its release was written, after the batch's sorted lock of the others (a
    # deadlock with another shard's batch locking in order).
    harness = Harness()
    harness.sell(1, price=10_000, qty=5, user=4)
    command = p.place(
        ts=10, symbol=SYM, order_id=2, user_id=1, is_buy=True, qty=3, price=10_500,
        flags=p.POST_ONLY_ADJUST, max_quote=10**9, maker_fee_ppm=1_000, taker_fee_ppm=2_000,
    )  # fmt: skip
    events = harness.apply(command)
    assert harness.engine.order(2)["price"] == 9_999
    applied = Applied(
        command_id=7, kind="place", stamp_ns=10, cmd=command, events=events, apply_seq=1,
        order_id=2,
    )  # fmt: skip
    writer = BatchWriter(shard=0, epoch=1, actor_label="test", instrument_ids={SYM: 1})
    prepared = writer.prepare(engine=harness.engine, applied=[applied])
    assert prepared.reducible == [2]
    assert prepared.ledger_users == [1]
    # 3 x 99.99 = 299.97, the 0.20% fee (0.60) and 2 minor units of reserve.
    [row] = prepared.order_rows
    assert row[-1] == 30_059

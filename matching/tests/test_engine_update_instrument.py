"""Changing a listed instrument's rules at run time (OP_UPDATE_INSTRUMENT)."""

import dataclasses

from matching.engine import (
    DAY,
    EV_EXPIRY_MOVED,
    EV_INSTRUMENT,
    GTD,
    INSTRUMENT_HALTED,
    INSTRUMENT_SCALE_CHANGED,
    INVALID_COMMAND,
    INVALID_QUANTITY,
    PRICE_OUTSIDE_BAND,
    STOP_MARKET,
    STP_CANCEL_INCOMING,
    UNKNOWN_INSTRUMENT,
    Engine,
    Instrument,
    expire_due,
    halt,
    update_instrument,
)
from matching.engine.testing import Harness, fills, final, order_events, rejects


def rules(h: Harness, **changes) -> list[tuple]:
    """Apply an update of X's rules: its current instrument with `changes`."""
    inst = dataclasses.replace(h.engine.instruments()[0], **changes)
    return h.apply(update_instrument(ts=h._ts(), instrument=inst))


def test_a_wider_collar_lets_the_next_market_order_walk_further():
    h = Harness(collar_ppm=50_000)
    for oid, price in ((1, 100), (2, 104), (3, 108)):
        h.sell(oid, price, 1)
    assert [f[2] for f in fills(h.market_buy(10, 3))] == [100, 104]  # collar: 105
    h.sell(4, 100, 1)
    h.sell(5, 104, 1)
    assert rules(h, collar_ppm=100_000) == [(5, h.engine.ev_seq, h.ts, "X", "updated")]
    assert [f[2] for f in fills(h.market_buy(11, 3))] == [100, 104, 108]  # collar: 110


def test_a_higher_minimum_refuses_smaller_orders_and_leaves_resting_ones():
    h = Harness()
    h.buy(1, 100, 2)
    rules(h, min_qty=5)
    assert rejects(h.buy(2, 100, 2))[0][0] == INVALID_QUANTITY
    assert final(h.buy(3, 100, 5), 3)[0] == "new"
    assert h.depth()[0] == [(100, 7, 2)]


def test_a_band_switched_on_then_off_applies_to_the_next_orders():
    h = Harness()
    h.sell(1, 100, 1)
    h.buy(2, 100, 1)  # last price 100
    rules(h, band_ppm=100_000)
    assert rejects(h.buy(3, 120, 1))[0][0] == PRICE_OUTSIDE_BAND
    assert final(h.buy(4, 105, 1), 4)[0] == "new"
    rules(h, band_ppm=0)
    assert final(h.buy(5, 120, 1), 5)[0] == "new"


def test_a_new_default_stp_mode_applies_to_orders_that_name_none():
    h = Harness()  # default cancel_resting
    h.sell(1, 100, 1, user=7)
    rules(h, stp_default=STP_CANCEL_INCOMING)
    events = h.buy(2, 100, 1, user=7)
    assert final(events, 2)[:2] == ("cancelled", "stp")
    assert h.depth()[1] == [(100, 1, 1)], "the resting order stays"


def test_orders_placed_before_a_new_default_stp_mode_match_with_it():
    """An order keeps "the instrument's default", not the default of its placement: a stop
    triggered after the change uses the new one (and a rebuilt engine agrees)."""
    h = Harness()  # default cancel_resting
    h.sell(1, 101, 1, user=7)
    h.place(2, True, 1, 0, user=7, order_type=STOP_MARKET, stop_price=100)  # waits for 100
    rules(h, stp_default=STP_CANCEL_INCOMING)
    rebuilt = Engine.bulk_load(h.engine.export_state())
    assert rebuilt.state_hash() == h.engine.state_hash()
    h.sell(3, 100, 1, user=8)
    events = h.buy(4, 100, 1, user=9)  # trades at 100: the stop triggers, meets its own sell
    assert final(events, 2)[:2] == ("cancelled", "stp")
    assert h.depth()[1] == [(101, 1, 1)], "cancel_incoming: user 7's sell stays"


def test_an_update_keeps_a_halt():
    h = Harness()
    h.apply(halt(ts=h._ts(), symbol="X"))
    rules(h, collar_ppm=10_000)
    assert rejects(h.buy(1, 100, 1))[0][0] == INSTRUMENT_HALTED


def test_the_scale_cannot_change_and_the_symbol_must_be_listed():
    h = Harness()
    h.buy(1, 100, 1)
    for change in ({"tick_size": "0.1"}, {"lot_size": "10"}, {"quote_decimals": 4}):
        assert rejects(rules(h, **change))[0][0] == INSTRUMENT_SCALE_CHANGED
    assert h.engine.instruments()[0] == Instrument("X")
    unknown = h.apply(update_instrument(ts=h._ts(), instrument=Instrument("Y")))
    assert rejects(unknown)[0][0] == UNKNOWN_INSTRUMENT
    assert rejects(h.apply(update_instrument(ts=h._ts(), instrument="X")))[0][0] == INVALID_COMMAND


def test_updated_rules_are_in_the_state_hash_and_survive_snapshot_and_bulk_load():
    h = Harness()
    h.buy(1, 100, 3)
    before = h.engine.state_hash()
    rules(h, min_qty=2, band_ppm=200_000, collar_ppm=20_000)
    assert h.engine.state_hash() != before
    for copy in (Engine.restore(h.engine.snapshot()), Engine.bulk_load(h.engine.export_state())):
        assert copy.state_hash() == h.engine.state_hash()
        assert copy.instruments() == h.engine.instruments()
        assert copy.books["X"].fast is False  # the band is on: the fast paths are off


def test_a_higher_price_limit_forgets_which_buys_could_pay_for_any_price():
    h = Harness(price_max=1_000)
    h.buy(1, 100, 1, max_quote=2_000)  # enough for one lot at any price up to 1,000
    order = h.engine.orders[1]
    order.rich = True
    rules(h, price_max=1_000_000)
    assert order.rich is False


def session_change(h: Harness, day_expire_at) -> list[tuple]:
    """An update of X's rules that moves its DAY orders to `day_expire_at` (new session hours)."""
    inst = h.engine.instruments()[0]
    return h.apply(update_instrument(ts=h._ts(), instrument=inst, day_expire_at=day_expire_at))


def test_new_session_hours_move_every_day_order_and_no_other():
    h = Harness()
    h.sell(1, 100, 1, tif=DAY, expire_at=1_000)
    h.buy(2, 90, 1, tif=DAY, expire_at=1_000)
    h.buy(3, 120, 1, tif=DAY, expire_at=1_000, order_type=STOP_MARKET, stop_price=150)
    h.sell(4, 101, 1, tif=GTD, expire_at=1_000)
    h.sell(5, 102, 1)
    events = session_change(h, 500)
    seq = events[0][1]
    assert events == [
        (EV_INSTRUMENT, seq, h.ts, "X", "updated"),
        (EV_EXPIRY_MOVED, seq + 1, h.ts, "X", 1, 2, 500, 1_000),
        (EV_EXPIRY_MOVED, seq + 2, h.ts, "X", 2, 1, 500, 1_000),
        (EV_EXPIRY_MOVED, seq + 3, h.ts, "X", 3, 1, 500, 1_000),
    ]
    assert session_change(h, 500)[1:] == []  # none moves again to the time it has
    expired = h.expire_due(500)
    assert [(e[4], e[6], e[7]) for e in order_events(expired)] == [
        (1, "expired", "day_expired"),
        (2, "expired", "day_expired"),
        (3, "expired", "day_expired"),
    ]
    assert h.depth()[1] == [(101, 1, 1), (102, 1, 1)]  # the GTD and GTC sells stay
    assert order_events(h.expire_due(999)) == []
    assert [(e[4], e[7]) for e in order_events(h.expire_due(1_000))] == [(4, "gtd_expired")]


def test_a_later_close_keeps_day_orders_past_their_old_expiry():
    h = Harness()
    h.sell(1, 100, 1, tif=DAY, expire_at=1_000)
    session_change(h, 2_000)
    assert order_events(h.expire_due(1_500)) == []
    assert fills(h.buy(2, 100, 1)) == [(1, 2, 100, 1)]  # still in the book after its old expiry
    h.sell(3, 100, 1, tif=DAY, expire_at=1_800)
    session_change(h, 2_000)
    assert h.ts < 2_000
    assert final(h.expire_due(2_000), 3)[:2] == ("expired", "day_expired")


def test_a_close_already_passed_expires_day_orders_in_the_same_command():
    h = Harness()
    h.sell(1, 100, 2, tif=DAY, expire_at=1_000)
    h.buy(2, 90, 1, tif=GTD, expire_at=1_000)
    seq = h.engine.book_seq("X")
    events = session_change(h, h.ts + 1)  # the market closed: the close is now
    assert [e[0] for e in events[:2]] == [EV_INSTRUMENT, EV_EXPIRY_MOVED]
    assert [(e[4], e[6], e[7], e[9]) for e in order_events(events)] == [
        (1, "expired", "day_expired", 0)
    ]
    assert h.depth() == ([(90, 1, 1)], [])
    assert h.engine.book_seq("X") == events[-1][1] > seq  # one book update for the command


def test_a_bad_day_expiry_is_refused_and_changes_nothing():
    h = Harness()
    h.sell(1, 100, 1, tif=DAY, expire_at=1_000)
    state = h.engine.export_state
    before = state()
    for bad in (0, -5, 1.5, "1000", True):
        assert rejects(session_change(h, bad))[0][0] == INVALID_COMMAND
    # Only the event counter moved (the rejects); the rules, books and orders are as they were.
    assert {**state(), "counters": None} == {**before, "counters": None}
    assert order_events(h.expire_due(999)) == []


def test_moved_day_expiries_survive_a_snapshot():
    h = Harness()
    h.sell(1, 100, 1, tif=DAY, expire_at=1_000)
    session_change(h, 400)
    restored = Engine.restore(h.engine.snapshot())
    assert restored.state_hash() == h.engine.state_hash()
    events = restored.apply(expire_due(now=400))
    assert [(e[4], e[6]) for e in order_events(events)] == [(1, "expired")]


def test_day_expiry_moves_come_in_the_same_order_from_an_engine_rebuilt_from_its_state():
    """They came in the order table's order: arrival in a running engine, resting orders then
    stops in one rebuilt from its state, so the journal's replay differed from the events a
    restarted worker had journaled (matching_verify: MISMATCH)."""
    h = Harness()
    h.buy(1, 120, 1, tif=DAY, expire_at=1_000, order_type=STOP_MARKET, stop_price=150)
    h.buy(2, 90, 1, tif=DAY, expire_at=1_000)
    h.sell(3, 100, 1, tif=DAY, expire_at=1_000)
    h.amend(2, price=91)  # a new priority seq: behind order 3 now
    rebuilt = Engine.bulk_load(h.engine.export_state())
    command = update_instrument(ts=h._ts(), instrument=h.engine.instruments()[0], day_expire_at=500)
    moved = [e[4] for e in h.apply(command) if e[0] == EV_EXPIRY_MOVED]
    assert moved == [3, 2, 1]  # resting by priority seq, then the stop
    assert rebuilt.apply(command) == h.log[-4:]


def test_day_orders_moved_by_new_hours_expire_at_the_new_time_after_the_expiry_sweep():
    # The expiry heap keeps a moved order's old entry; sweeping it must keep the new one.
    h = Harness()
    h.buy(1, 90, 1, tif=DAY, expire_at=10**12)
    session_change(h, 2 * 10**12)
    for oid in range(2, 10_002):  # enough ended GTD orders for the heap to be swept
        h.sell(oid, 100, 1, tif=GTD, expire_at=3 * 10**12)
        h.cancel(oid)
    assert h.apply(expire_due(now=10**12)) == []
    assert final(h.apply(expire_due(now=2 * 10**12)), 1) == ("expired", "day_expired", 0, 0)

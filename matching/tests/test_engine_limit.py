"""Limit orders: price-time priority, trades at the maker price, validation rejects."""

from matching.engine import (
    BELOW_MIN_NOTIONAL,
    DUPLICATE_ORDER_ID,
    INVALID_QUANTITY,
    PRICE_OUTSIDE_BAND,
    UNKNOWN_INSTRUMENT,
    limit,
)
from matching.engine.testing import Harness, fills, final, rejects


def test_non_crossing_limit_rests_with_status_new():
    h = Harness()
    ev = h.buy(1, 100, 5)
    assert final(ev, 1) == ("new", None, 0, 5)
    assert h.depth() == ([(100, 5, 1)], [])


def test_crossing_limit_trades_at_maker_price():
    h = Harness()
    h.sell(1, 100, 5)
    ev = h.buy(2, 105, 3)
    assert fills(ev) == [(1, 2, 100, 3)]
    assert final(ev, 2) == ("filled", None, 3, 0)
    assert h.depth() == ([], [(100, 2, 1)])


def test_time_priority_within_a_level():
    h = Harness()
    h.sell(1, 100, 2)
    h.sell(2, 100, 2)
    h.sell(3, 100, 2)
    ev = h.buy(4, 100, 3)
    assert fills(ev) == [(1, 4, 100, 2), (2, 4, 100, 1)]
    assert h.l3_ids() == ([], [2, 3])


def test_price_priority_better_price_fills_first():
    h = Harness()
    h.sell(1, 102, 1)
    h.sell(2, 101, 1)
    h.sell(3, 103, 1)
    ev = h.buy(4, 103, 3)
    assert [f[2] for f in fills(ev)] == [101, 102, 103]


def test_partial_fill_rests_remainder_as_partially_filled():
    h = Harness()
    h.sell(1, 100, 2)
    ev = h.buy(2, 101, 5)
    assert final(ev, 2) == ("partially_filled", None, 2, 3)
    assert h.depth() == ([(101, 3, 1)], [])


def test_limit_walks_levels_until_limit_price():
    h = Harness()
    h.sell(1, 100, 1)
    h.sell(2, 101, 1)
    h.sell(3, 102, 1)
    ev = h.buy(4, 101, 5)
    assert fills(ev) == [(1, 4, 100, 1), (2, 4, 101, 1)]
    assert h.engine.best_ask("X") == 102
    assert h.engine.best_bid("X") == 101


def test_price_outside_absolute_band_is_rejected():
    h = Harness(price_min=50, price_max=200)
    assert rejects(h.buy(1, 201, 1)) == [(PRICE_OUTSIDE_BAND, "invalid", None)]
    assert rejects(h.sell(2, 49, 1)) == [(PRICE_OUTSIDE_BAND, "invalid", None)]
    assert h.depth() == ([], [])


def test_relative_band_around_last_trade_price():
    h = Harness(band_ppm=100_000)  # 10%
    h.sell(1, 100, 1)
    h.buy(2, 100, 1)
    assert rejects(h.buy(3, 89, 1)) == [(PRICE_OUTSIDE_BAND, "invalid", None)]
    assert rejects(h.buy(4, 90, 1)) == []


def test_invalid_quantity_and_min_qty_rejected_without_state_change():
    h = Harness(min_qty=2)
    before = h.engine.state_hash()
    assert rejects(h.buy(1, 100, 1))[0][0] == INVALID_QUANTITY
    assert rejects(h.buy(2, 100, -5))[0][0] == INVALID_QUANTITY
    assert rejects(h.buy(3, 100, "5"))[0][0] == INVALID_QUANTITY
    # Rejections only move the event counter.
    assert h.engine.depth("X") == ([], [])
    assert h.engine.state_hash() != before  # event seq moved
    assert h.engine.export_state()["counters"] == (3, 0)  # three rejects, no trade
    assert h.engine.book_seq("X") == 0


def test_min_notional_rejected():
    h = Harness(min_notional=1000)
    assert rejects(h.buy(1, 100, 5))[0][0] == BELOW_MIN_NOTIONAL
    assert rejects(h.buy(2, 100, 10)) == []


def test_duplicate_live_order_id_rejected_and_book_unchanged():
    h = Harness()
    h.buy(1, 100, 5)
    assert rejects(h.sell(1, 110, 5))[0][0] == DUPLICATE_ORDER_ID
    assert h.depth() == ([(100, 5, 1)], [])


def test_unknown_instrument_rejected():
    h = Harness()
    ev = h.apply(limit(ts=1, symbol="NOPE", order_id=1, user_id=1, is_buy=True, price=1, qty=1))
    assert rejects(ev) == [(UNKNOWN_INSTRUMENT, "invalid", None)]


def test_malformed_command_is_rejected_not_raised():
    h = Harness()
    assert rejects(h.apply((1, 1, "X")))[0][0] == "InvalidCommand"
    assert rejects(h.apply((42, 1)))[0][0] == "InvalidCommand"


def test_event_and_trade_seqs_are_consecutive():
    h = Harness()
    h.sell(1, 100, 1)
    h.sell(2, 100, 1)
    ev = h.buy(3, 100, 2)
    seqs = [e[1] for e in h.log]
    assert seqs == list(range(1, len(seqs) + 1))
    assert [e[4] for e in ev if e[0] == 2] == [1, 2]

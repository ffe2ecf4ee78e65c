"""Cancel, amend (priority rules, crossing amend trades), mass cancel."""

from matching.engine import (
    AMEND_QUANTITY_TOO_LOW,
    STOP_MARKET,
    UNKNOWN_ORDER,
    mass_cancel,
)
from matching.engine.testing import Harness, fills, final, order_events, rejects


def test_cancel_removes_order_and_empty_level():
    h = Harness()
    h.buy(1, 100, 5)
    ev = h.cancel(1)
    assert final(ev, 1) == ("cancelled", "user", 0, 0)
    assert h.depth() == ([], [])
    assert h.engine.best_bid("X") is None


def test_cancel_unknown_order_is_rejected():
    h = Harness()
    assert rejects(h.cancel(42)) == [(UNKNOWN_ORDER, None, None)]


def test_cancel_middle_of_queue_keeps_links():
    h = Harness()
    for i in (1, 2, 3):
        h.sell(i, 100, 1)
    h.cancel(2)
    assert h.l3_ids()[1] == [1, 3]
    assert fills(h.buy(4, 100, 2)) == [(1, 4, 100, 1), (3, 4, 100, 1)]


def test_reduce_keeps_time_priority():
    h = Harness()
    h.sell(1, 100, 5)
    h.sell(2, 100, 5)
    ev = h.amend(1, qty=3)
    assert final(ev, 1) == ("new", None, 0, 3)
    assert h.l3_ids()[1] == [1, 2]
    assert h.depth()[1] == [(100, 8, 2)]


def test_increase_loses_time_priority():
    h = Harness()
    h.sell(1, 100, 5)
    h.sell(2, 100, 5)
    h.amend(1, qty=6)
    assert h.l3_ids()[1] == [2, 1]


def test_price_change_loses_priority():
    h = Harness()
    h.sell(1, 101, 5)
    h.sell(2, 100, 5)
    h.amend(1, price=100)
    assert h.l3_ids()[1] == [2, 1]


def test_amend_quantity_is_new_total_and_must_exceed_filled():
    h = Harness()
    h.sell(1, 100, 5)
    h.buy(2, 100, 2)
    assert rejects(h.amend(1, qty=2)) == [(AMEND_QUANTITY_TOO_LOW, None, None)]
    ev = h.amend(1, qty=4)
    assert final(ev, 1) == ("partially_filled", None, 2, 2)


def test_amended_crossing_price_trades_as_taker():
    h = Harness()
    h.sell(1, 100, 2)
    h.buy(2, 95, 5, taker_fee_ppm=1000)
    ev = h.amend(2, price=100)
    assert fills(ev) == [(1, 2, 100, 2)]
    assert final(ev, 2) == ("partially_filled", None, 2, 3)
    assert h.depth() == ([(100, 3, 1)], [])


def test_amend_unknown_order_rejected():
    h = Harness()
    assert rejects(h.amend(9, qty=1))[0][0] == UNKNOWN_ORDER


def test_mass_cancel_cancels_all_of_a_users_orders_including_stops():
    h = Harness()
    h.buy(1, 100, 1, user=5)
    h.sell(2, 110, 1, user=5)
    h.buy(3, 99, 1, user=6)
    h.place(4, True, 1, 0, user=5, order_type=STOP_MARKET, stop_price=200)
    ev = h.apply(mass_cancel(ts=100, user_id=5))
    assert [e[4] for e in order_events(ev)] == [1, 2, 4]
    assert all(e[6] == "cancelled" and e[7] == "user" for e in order_events(ev))
    assert set(h.engine.orders) == {3}


def test_mass_cancel_limited_to_one_symbol():
    from matching.engine import Instrument, add_instrument, limit

    h = Harness()
    h.apply(add_instrument(ts=1, instrument=Instrument("Y")))
    h.buy(1, 100, 1, user=5)
    h.apply(limit(ts=2, symbol="Y", order_id=2, user_id=5, is_buy=False, price=5, qty=1))
    ev = h.apply(mass_cancel(ts=3, user_id=5, symbol="Y"))
    assert [e[4] for e in order_events(ev)] == [2]
    assert set(h.engine.orders) == {1}


def _lone_order_moves(h: Harness) -> list[list[tuple]]:
    """Moves of orders alone at their level to empty prices: keeping their rank among the
    levels, jumping over other levels (both ways), becoming and leaving the best, icebergs."""
    for oid, price in ((1, 90), (2, 95), (3, 97)):
        h.buy(oid, price, 5)
    for oid, price in ((11, 110), (12, 105), (13, 103)):
        h.sell(oid, price, 5)
    h.buy(4, 92, 30, display_qty=4)
    h.sell(14, 108, 30, display_qty=4)
    h.buy(5, 80, 1)
    h.buy(6, 80, 1)  # two at 80: a move of 5 leaves its level behind
    steps = []
    for oid, price in (
        (2, 96),  # keeps its rank
        (1, 98),  # jumps over 92, 96, 97 and becomes the best bid
        (1, 91),  # leaves the best, back below 92
        (3, 99),  # the best bid moves up
        (4, 94),  # iceberg: a fresh visible slice
        (5, 85),  # not alone: its old level stays
        (13, 104),  # best ask keeps its rank
        (11, 102),  # jumps over 103..108 and becomes the best ask
        (11, 111),  # and back to the end of the book
        (14, 101),  # iceberg ask to the best
        (12, 100),  # the best ask moves down next to the best bid (99)
    ):
        steps.append(h.amend(oid, price=price))
    steps.append(h.sell(20, 90, 200))  # sweeps the bids in price-time order
    steps.append(h.buy(21, 120, 200))  # sweeps the asks
    return steps


def test_moving_a_lone_order_to_an_empty_price_matches_the_general_handler():
    fast = Harness()
    # A price band turns the inline fast paths off: every command runs the general handlers.
    slow = Harness(band_ppm=1_000_000)
    before_fast = fast.engine.drain_level_changes()
    assert before_fast == slow.engine.drain_level_changes()
    for ev_fast, ev_slow in zip(_lone_order_moves(fast), _lone_order_moves(slow), strict=True):
        assert ev_fast == ev_slow
        assert fast.engine.drain_level_changes() == slow.engine.drain_level_changes()
        assert fast.engine.l3("X") == slow.engine.l3("X")
        assert fast.engine.depth("X", 20) == slow.engine.depth("X", 20)
        book = fast.engine.books["X"]
        assert book.index_ok()
    assert fast.engine.book_seq("X") == slow.engine.book_seq("X")
    assert fast.engine.resting_orders() == slow.engine.resting_orders()


def test_moved_lone_iceberg_shows_a_fresh_slice_at_the_back():
    h = Harness()
    h.buy(1, 100, 30, display_qty=4)
    h.sell(2, 100, 3)  # visible slice 4 -> 1
    ev = h.amend(1, price=101)
    assert final(ev, 1) == ("partially_filled", None, 3, 27)
    assert h.depth() == ([(101, 4, 1)], [])
    assert h.engine.order(1)["reserve"] == 23

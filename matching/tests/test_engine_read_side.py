"""Read side: best prices, spread, mid, L2 depth, L3, book seq and level changes."""

from fractions import Fraction

from matching.engine import FOK
from matching.engine.testing import Harness


def test_best_spread_mid():
    h = Harness()
    assert h.engine.spread("X") is None and h.engine.mid("X") is None
    h.buy(1, 99, 1)
    h.sell(2, 102, 1)
    assert (h.engine.best_bid("X"), h.engine.best_ask("X")) == (99, 102)
    assert h.engine.spread("X") == 3
    assert h.engine.mid("X") == Fraction(201, 2)


def test_depth_aggregates_qty_and_count_visible_only():
    h = Harness()
    h.buy(1, 99, 1)
    h.buy(2, 99, 2)
    h.buy(3, 98, 10, display_qty=4)
    h.buy(4, 97, 1)
    assert h.depth(2) == ([(99, 3, 2), (98, 4, 1)], [])


def test_l3_lists_orders_in_priority_order():
    h = Harness()
    h.sell(1, 101, 1)
    h.sell(2, 100, 1)
    h.sell(3, 100, 2)
    asks = h.engine.l3("X")[1]
    assert [(r[0], r[1], r[3]) for r in asks] == [(100, 2, 1), (100, 3, 2), (101, 1, 1)]


def test_book_seq_increments_once_per_changing_command():
    h = Harness()
    assert h.engine.book_seq("X") == 0
    h.buy(1, 99, 1)
    h.buy(2, 98, 1)
    assert h.engine.book_seq("X") == 2
    h.cancel(42)  # rejected: no change
    h.buy(3, 100, 1, tif=FOK)  # FOK rejected: no change
    assert h.engine.book_seq("X") == 2
    h.sell(4, 99, 1)  # trade
    assert h.engine.book_seq("X") == 3


def test_level_changes_report_touched_levels_with_new_qty_and_count():
    h = Harness()
    h.buy(1, 99, 1)
    h.buy(2, 99, 2)
    h.sell(3, 105, 1)
    changes = h.engine.drain_level_changes()
    assert changes == {"X": (3, [(True, 99, 3, 2), (False, 105, 1, 1)])}
    h.sell(4, 99, 1)
    assert h.engine.drain_level_changes() == {"X": (4, [(True, 99, 2, 1)])}
    h.cancel(2)
    assert h.engine.drain_level_changes() == {"X": (5, [(True, 99, 0, 0)])}
    assert h.engine.drain_level_changes() == {}

"""The lazy level heaps: stale keys of deleted levels never show, and the heaps stay bounded."""

from matching.engine import FOK, FOK_UNFILLABLE
from matching.engine.engine import HEAP_GROWTH, HEAP_SLACK
from matching.engine.testing import Harness, fills, final, rejects


def test_levels_deleted_below_the_best_leave_no_trace_in_depth_or_matching():
    h = Harness()
    h.buy(1, 105, 1)
    for oid in range(10, 20):
        h.buy(oid, 100, 1)  # one level at 100, re-created ten times below the best
        h.cancel(oid)
    h.buy(2, 100, 2)
    h.buy(3, 99, 3)
    book = h.engine.books["X"]
    assert book.index_ok()
    assert h.depth() == ([(105, 1, 1), (100, 2, 1), (99, 3, 1)], [])
    ev = h.sell(4, 99, 6)
    assert fills(ev) == [(1, 4, 105, 1), (2, 4, 100, 2), (3, 4, 99, 3)]
    assert final(ev, 4) == ("filled", None, 6, 0)
    assert book.bid_heap == [] and book.index_ok()


def test_fok_walks_live_levels_once_past_stale_and_duplicate_keys():
    h = Harness()
    h.sell(1, 101, 2)
    h.sell(2, 103, 2)
    for oid in range(10, 14):
        h.sell(oid, 102, 1)  # 102 re-created while its old keys are still in the heap
        h.sell(oid + 10, 102, 1)
        h.cancel(oid)
        h.cancel(oid + 10)
    h.sell(3, 102, 2)
    h.sell(5, 102, 5)
    h.cancel(5)
    h.sell(6, 102, 1)
    h.cancel(6)
    h.sell(7, 102, 1)
    assert h.engine.books["X"].index_ok()
    # 2 + 2 + 1 lots up to 102: a FOK for 6 must fail, one for 5 fill (each level once).
    assert rejects(h.buy(50, 102, 6, tif=FOK)) == [(FOK_UNFILLABLE, "fok_unfillable", None)]
    ev = h.buy(51, 102, 5, tif=FOK)
    assert fills(ev) == [(1, 51, 101, 2), (3, 51, 102, 2), (7, 51, 102, 1)]
    assert h.depth() == ([], [(103, 2, 1)])


def test_heaps_are_rebuilt_when_stale_keys_pile_up():
    h = Harness()
    h.buy(1, 1000, 1)
    h.sell(2, 2000, 1)
    oid = 10
    for rnd in range(20):
        for i in range(50):
            h.buy(oid + i, 900 - i - rnd, 1)
            h.sell(oid + 100 + i, 2100 + i + rnd, 1)
        for i in range(50):
            h.cancel(oid + i)
            h.cancel(oid + 100 + i)
        oid += 200
    book = h.engine.books["X"]
    assert book.index_ok()
    cap = HEAP_GROWTH * 51 + HEAP_SLACK  # at most 51 live levels a side here
    assert len(book.bid_heap) <= cap and len(book.ask_heap) <= cap
    assert h.depth() == ([(1000, 1, 1)], [(2000, 1, 1)])


def test_moving_the_best_lone_order_away_exposes_the_next_level():
    h = Harness()
    h.buy(1, 100, 1)
    h.buy(2, 98, 1)
    h.sell(3, 110, 1)
    h.sell(4, 112, 1)
    h.buy(5, 99, 1)  # levels 99 and 111 leave stale keys right below the best
    h.sell(6, 111, 1)
    h.cancel(5)
    h.cancel(6)
    h.amend(1, price=97)  # a lone best bid re-keys its level below the next one
    h.amend(3, price=113)
    book = h.engine.books["X"]
    assert book.index_ok()
    assert (h.engine.best_bid("X"), h.engine.best_ask("X")) == (98, 112)
    assert h.depth() == ([(98, 1, 1), (97, 1, 1)], [(112, 1, 1), (113, 1, 1)])


def test_depth_of_a_sparse_book_falls_back_from_the_tick_walk():
    h = Harness()
    for i in range(8):
        h.buy(1 + i, 10_000 - 500 * i, 1 + i)  # levels 500 ticks apart: the walk gives up
        h.sell(20 + i, 20_000 + 700 * i, 1)
    h.buy(9, 9_999, 4)  # one level right under the best
    bids, asks = h.depth(3)
    assert bids == [(10_000, 1, 1), (9_999, 4, 1), (9_500, 2, 1)]
    assert asks == [(20_000, 1, 1), (20_700, 1, 1), (21_400, 1, 1)]
    assert h.depth(100)[0][-1] == (6_500, 8, 1) and len(h.depth(100)[1]) == 8

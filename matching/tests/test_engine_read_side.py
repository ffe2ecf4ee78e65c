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


def test_book_seq_is_the_last_event_seq_of_the_last_changing_command():
    h = Harness()
    assert h.engine.book_seq("X") == 0
    h.buy(1, 99, 1)
    placed = h.buy(2, 98, 1)
    assert h.engine.book_seq("X") == placed[-1][1] == 2
    h.cancel(42)  # rejected: no change
    h.buy(3, 100, 1, tif=FOK)  # FOK rejected: no change
    assert h.engine.book_seq("X") == 2
    traded = h.sell(4, 99, 1)  # the trade, then the taker's event: the last one's seq
    assert len(traded) == 2 and h.engine.book_seq("X") == traded[-1][1] == 6
    h.buy(5, 97, 3, display_qty=1)
    reduced = h.amend(5, qty=2)  # only the hidden reserve shrinks: no visible change
    assert h.engine.book_seq("X") == reduced[-1][1] - 1
    h.amend(5, price=96)  # a price move
    assert h.engine.book_seq("X") == h.engine.export_state()["counters"][0] == 9


def test_level_changes_report_touched_levels_with_new_qty_and_count():
    h = Harness()
    h.buy(1, 99, 1)
    h.buy(2, 99, 2)
    h.sell(3, 105, 1)
    changes = h.engine.drain_level_changes()
    assert changes == {"X": (3, [(True, 99, 3, 2), (False, 105, 1, 1)])}
    h.sell(4, 99, 1)  # events 4 (the trade) and 5 (the taker filled)
    assert h.engine.drain_level_changes() == {"X": (5, [(True, 99, 2, 1)])}
    h.cancel(2)
    assert h.engine.drain_level_changes() == {"X": (6, [(True, 99, 0, 0)])}
    assert h.engine.drain_level_changes() == {}


def test_level_changes_follow_levels_that_move_die_and_are_reused():
    from matching.engine import Engine, Instrument, amend, cancel, limit

    eng = Engine([Instrument("X"), Instrument("Y")])
    ts = iter(range(1, 100))

    def put(oid, sym, is_buy, price, qty):
        extra = {"max_quote": 10**15} if is_buy else {}
        eng.apply(limit(ts=next(ts), symbol=sym, order_id=oid, user_id=oid, is_buy=is_buy,
                        price=price, qty=qty, **extra))  # fmt: skip

    put(1, "X", True, 99, 1)
    put(2, "X", True, 98, 2)
    put(3, "X", False, 105, 1)
    eng.drain_level_changes()
    eng.apply(amend(ts=next(ts), order_id=1, price=97))  # a lone order carries its level away
    eng.apply(cancel(ts=next(ts), order_id=2))  # level 98 dies: its object is pooled...
    put(4, "Y", False, 200, 5)  # ...and may come back as a level of another book
    put(5, "X", False, 106, 2)
    eng.apply(amend(ts=next(ts), order_id=3, qty=1))  # not a reduction: no change at 105
    # Each book's seq is the seq of the last event that changed it: X's is order 5's (event 7;
    # the amend after it, event 8, changed nothing visible), Y's order 4's (event 6).
    assert eng.drain_level_changes() == {
        "X": (7, [(True, 99, 0, 0), (True, 98, 0, 0), (True, 97, 1, 1), (False, 106, 2, 1)]),
        "Y": (6, [(False, 200, 5, 1)]),
    }
    put(6, "Y", False, 200, 1)
    eng.apply(cancel(ts=next(ts), order_id=5))
    put(7, "X", True, 98, 3)  # 98 again, in a fresh or pooled level object
    assert eng.drain_level_changes() == {
        "X": (11, [(True, 98, 3, 1), (False, 106, 0, 0)]),
        "Y": (9, [(False, 200, 6, 2)]),
    }
    assert eng.drain_level_changes() == {}


def test_live_state_and_priority_seq_match_the_order_record():
    h = Harness()
    h.buy(1, 99, 5)
    h.sell(2, 99, 2)  # order 1 partly filled
    h.sell(3, 105, 10, display_qty=4)  # an iceberg
    h.place(4, True, 3, stop_price=110, order_type=2)  # an untriggered stop
    for oid in (1, 3, 4):
        d = h.engine.order(oid)
        assert h.engine.live_state(oid) == (
            d["status"], d["filled"], d["remaining"], d["reserve"], d["price"], d["seq"],
            d["quote_spent"], d["max_quote"], d["expire_at"],
        )  # fmt: skip
        assert h.engine.priority_seq(oid) == d["seq"]
    assert h.engine.live_state(2) is None and h.engine.priority_seq(2) is None

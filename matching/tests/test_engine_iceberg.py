"""Iceberg orders: only the visible slice shows and counts; refills go to the back."""

from matching.engine.testing import Harness, fills, final, trades


def test_only_visible_slice_is_in_depth():
    h = Harness()
    h.sell(1, 100, 10, display_qty=3)
    assert h.depth() == ([], [(100, 3, 1)])
    assert h.engine.order(1)["reserve"] == 7


def test_iceberg_refill_goes_to_back_of_queue():
    h = Harness()
    h.sell(1, 100, 6, display_qty=2)
    h.sell(2, 100, 2)
    ev = h.buy(3, 100, 2)
    assert fills(ev) == [(1, 3, 100, 2)]
    assert h.l3_ids()[1] == [2, 1]
    ev = h.buy(4, 100, 3)
    assert fills(ev) == [(2, 4, 100, 2), (1, 4, 100, 1)]


def test_refill_gets_new_priority_seq():
    h = Harness()
    h.sell(1, 100, 4, display_qty=2)
    seq_before = h.engine.l3("X")[1][0][4]
    h.buy(2, 100, 2)
    assert h.engine.l3("X")[1][0][4] > seq_before


def test_same_taker_keeps_matching_refilled_slices():
    h = Harness()
    h.sell(1, 100, 7, display_qty=2)
    ev = h.buy(2, 100, 7)
    assert [f[3] for f in fills(ev)] == [2, 2, 2, 1]
    assert final(ev, 2) == ("filled", None, 7, 0)
    assert trades(ev)[-1][15] == "filled"


def test_maker_remaining_in_trade_includes_reserve():
    h = Harness()
    h.sell(1, 100, 10, display_qty=3)
    ev = h.buy(2, 100, 1)
    assert trades(ev)[0][17] == 9
    assert h.depth()[1] == [(100, 2, 1)]


def test_incoming_iceberg_takes_full_quantity_then_shows_slice():
    h = Harness()
    h.sell(1, 100, 4)
    ev = h.buy(2, 100, 10, display_qty=3)
    assert fills(ev) == [(1, 2, 100, 4)]
    assert final(ev, 2) == ("partially_filled", None, 4, 6)
    assert h.depth()[0] == [(100, 3, 1)]

"""Self-trade prevention: every mode, instrument default, one EV_STP per prevented match."""

import pytest

from matching.engine import (
    STP_CANCEL_BOTH,
    STP_CANCEL_INCOMING,
    STP_CANCEL_RESTING,
    STP_CANCEL_SMALLEST,
    STP_DECREMENT_BOTH,
    STP_NONE,
)
from matching.engine.testing import Harness, fills, final, order_events, stp_events


def setup_book(h):
    h.sell(1, 100, 3, user=7)  # own order at the front
    h.sell(2, 100, 3, user=8)


def test_cancel_resting_cancels_maker_and_keeps_matching():
    h = Harness()
    setup_book(h)
    ev = h.buy(3, 100, 3, user=7, stp=STP_CANCEL_RESTING)
    assert stp_events(ev) == [("cancel_resting", 3, 1, 3)]
    assert final(ev, 1) == ("cancelled", "stp", 0, 0)
    assert fills(ev) == [(2, 3, 100, 3)]


def test_instrument_default_cancel_resting_applies_when_order_gives_none():
    h = Harness()
    setup_book(h)
    ev = h.buy(3, 100, 3, user=7)
    assert stp_events(ev)[0][0] == "cancel_resting"


def test_instrument_default_can_be_cancel_incoming():
    h = Harness(stp_default=STP_CANCEL_INCOMING)
    setup_book(h)
    ev = h.buy(3, 100, 3, user=7)
    assert final(ev, 3) == ("cancelled", "stp", 0, 0)
    assert h.l3_ids()[1] == [1, 2]


def test_cancel_incoming_keeps_maker():
    h = Harness()
    h.sell(9, 99, 1, user=8)
    setup_book(h)
    ev = h.buy(3, 100, 5, user=7, stp=STP_CANCEL_INCOMING)
    assert fills(ev) == [(9, 3, 99, 1)]
    assert final(ev, 3) == ("cancelled", "stp", 1, 0)
    assert h.l3_ids()[1] == [1, 2]


def test_cancel_both():
    h = Harness()
    setup_book(h)
    ev = h.buy(3, 100, 5, user=7, stp=STP_CANCEL_BOTH)
    assert final(ev, 1) == ("cancelled", "stp", 0, 0)
    assert final(ev, 3) == ("cancelled", "stp", 0, 0)
    assert fills(ev) == []


@pytest.mark.parametrize(
    ("taker_qty", "taker_cancelled", "maker_cancelled"),
    [(2, True, False), (5, False, True), (3, True, True)],
)
def test_cancel_smallest(taker_qty, taker_cancelled, maker_cancelled):
    h = Harness()
    setup_book(h)
    ev = h.buy(3, 100, taker_qty, user=7, stp=STP_CANCEL_SMALLEST)
    assert (1 not in h.engine.orders) == maker_cancelled
    taker_final = final(ev, 3)
    assert (taker_final[:2] == ("cancelled", "stp")) == taker_cancelled


def test_decrement_both_reduces_without_trade():
    h = Harness()
    h.sell(1, 100, 5, user=7)
    ev = h.buy(3, 100, 2, user=7, stp=STP_DECREMENT_BOTH)
    assert fills(ev) == []
    assert stp_events(ev) == [("decrement_both", 3, 1, 2)]
    assert final(ev, 1) == ("new", None, 0, 3)
    assert final(ev, 3) == ("cancelled", "stp", 0, 0)
    assert h.depth()[1] == [(100, 3, 1)]


def test_stp_none_allows_self_trade():
    h = Harness()
    setup_book(h)
    ev = h.buy(3, 100, 3, user=7, stp=STP_NONE)
    assert fills(ev) == [(1, 3, 100, 3)]
    assert stp_events(ev) == []


def test_every_prevented_match_is_an_event():
    h = Harness()
    h.sell(1, 100, 1, user=7)
    h.sell(2, 100, 1, user=7)
    h.sell(4, 100, 1, user=8)
    ev = h.buy(3, 100, 1, user=7, stp=STP_CANCEL_RESTING)
    assert [s[2] for s in stp_events(ev)] == [1, 2]
    assert [e[4] for e in order_events(ev)] == [1, 2, 3]

"""Halt/resume and adding instruments at run time."""

from matching.engine import (
    DUPLICATE_INSTRUMENT,
    INSTRUMENT_HALTED,
    Instrument,
    add_instrument,
    halt,
    limit,
    resume,
)
from matching.engine.testing import Harness, final, rejects


def test_halted_instrument_rejects_new_orders_with_instrument_halted():
    h = Harness()
    h.apply(halt(ts=1, symbol="X"))
    ev = h.buy(1, 100, 1)
    assert rejects(ev) == [(INSTRUMENT_HALTED, "halted", None)]
    assert h.engine.is_halted("X")


def test_cancels_work_while_halted_but_amends_do_not():
    h = Harness()
    h.buy(1, 100, 5)
    h.buy(2, 100, 5)
    h.apply(halt(ts=5, symbol="X"))
    assert rejects(h.amend(1, qty=3))[0][0] == INSTRUMENT_HALTED
    assert final(h.cancel(2), 2) == ("cancelled", "user", 0, 0)


def test_resume_accepts_orders_again():
    h = Harness()
    h.apply(halt(ts=1, symbol="X"))
    h.apply(resume(ts=2, symbol="X"))
    assert final(h.buy(1, 100, 1), 1)[0] == "new"


def test_add_instrument_at_run_time_and_duplicate_rejected():
    h = Harness()
    ev = h.apply(add_instrument(ts=1, instrument=Instrument("Y")))
    assert ev[0][4] == "added"
    ev = h.apply(limit(ts=2, symbol="Y", order_id=1, user_id=1, is_buy=False, price=9, qty=1))
    assert final(ev, 1)[0] == "new"
    ev = h.apply(add_instrument(ts=3, instrument=Instrument("Y")))
    assert rejects(ev)[0][0] == DUPLICATE_INSTRUMENT

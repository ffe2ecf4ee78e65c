"""Time in force: GTC, IOC, FOK (atomic), GTD and DAY expiry (expire_due, or any later command)."""

from matching.engine import (
    DAY,
    FOK,
    FOK_UNFILLABLE,
    GTD,
    INVALID_EXPIRE_AT,
    IOC,
    STP_CANCEL_RESTING,
)
from matching.engine.testing import Harness, fills, final, order_events, rejects, trades


def test_ioc_fills_what_crosses_and_cancels_rest():
    h = Harness()
    h.sell(1, 100, 2)
    ev = h.buy(2, 100, 5, tif=IOC)
    assert fills(ev) == [(1, 2, 100, 2)]
    assert final(ev, 2) == ("cancelled", "ioc_remainder", 2, 0)
    assert h.depth() == ([], [])


def test_ioc_that_does_not_cross_never_rests():
    h = Harness()
    ev = h.buy(1, 100, 5, tif=IOC)
    assert final(ev, 1) == ("cancelled", "ioc_remainder", 0, 0)
    assert 1 not in h.engine.orders


def test_fok_fills_completely_when_liquidity_suffices():
    h = Harness()
    h.sell(1, 100, 2)
    h.sell(2, 101, 3)
    ev = h.buy(3, 101, 5, tif=FOK)
    assert sum(f[3] for f in fills(ev)) == 5
    assert final(ev, 3) == ("filled", None, 5, 0)


def test_fok_unfillable_is_rejected_with_no_trade_and_no_book_change():
    h = Harness()
    h.sell(1, 100, 2)
    h.sell(2, 101, 2)
    before = h.engine.l3("X")
    ev = h.buy(3, 101, 5, tif=FOK)
    assert trades(ev) == []
    assert rejects(ev) == [(FOK_UNFILLABLE, "fok_unfillable", None)]
    assert h.engine.l3("X") == before


def test_fok_counts_liquidity_only_after_self_trade_prevention():
    h = Harness()
    h.sell(1, 100, 3, user=1)  # own order: would be cancelled, not filled
    h.sell(2, 100, 3, user=2)
    ev = h.buy(3, 100, 5, user=1, tif=FOK, stp=STP_CANCEL_RESTING)
    assert rejects(ev)[0][0] == FOK_UNFILLABLE
    assert h.l3_ids() == ([], [1, 2])  # nothing cancelled either
    ev = h.buy(4, 100, 3, user=1, tif=FOK, stp=STP_CANCEL_RESTING)
    assert fills(ev) == [(2, 4, 100, 3)]
    assert final(ev, 1) == ("cancelled", "stp", 0, 0)


def test_fok_counts_iceberg_reserve():
    h = Harness()
    h.sell(1, 100, 10, display_qty=2)
    ev = h.buy(2, 100, 9, tif=FOK)
    assert final(ev, 2) == ("filled", None, 9, 0)


def test_fok_respects_buyer_max_quote():
    h = Harness()
    h.sell(1, 100, 5)
    ev = h.buy(2, 100, 5, tif=FOK, max_quote=499)
    assert rejects(ev)[0][0] == FOK_UNFILLABLE
    assert h.depth()[1] == [(100, 5, 1)]


def test_gtd_expires_at_expire_at_with_reason_gtd_expired():
    h = Harness()
    h.buy(1, 100, 5, tif=GTD, expire_at=1000)
    assert h.expire_due(999) == []
    ev = h.expire_due(1000)
    assert final(ev, 1) == ("expired", "gtd_expired", 0, 0)
    assert h.depth() == ([], [])


def test_day_order_expires_with_reason_day_expired():
    h = Harness()
    h.sell(1, 100, 5, tif=DAY, expire_at=500)
    ev = h.expire_due(600)
    assert final(ev, 1) == ("expired", "day_expired", 0, 0)


def test_expiry_order_is_expire_at_then_priority():
    h = Harness()
    h.buy(1, 100, 1, tif=GTD, expire_at=300)
    h.buy(2, 101, 1, tif=GTD, expire_at=200)
    h.buy(3, 99, 1, tif=GTD, expire_at=300)
    h.buy(4, 98, 1)
    ev = h.expire_due(1000)
    assert [e[4] for e in order_events(ev)] == [2, 1, 3]
    assert h.l3_ids() == ([4], [])


def test_cancelled_gtd_order_is_not_expired_later():
    h = Harness()
    h.buy(1, 100, 1, tif=GTD, expire_at=300)
    h.cancel(1)
    assert h.expire_due(1000) == []


def test_gtd_in_the_past_is_rejected():
    h = Harness()
    h.ts = 100
    ev = h.buy(1, 100, 1, tif=GTD, expire_at=50)
    assert rejects(ev)[0][0] == INVALID_EXPIRE_AT


def test_an_order_past_its_expiry_never_trades_even_before_expire_due():
    # Expiry came only with the scheduled expire_due (every second, from Celery beat): with the
    # scheduler late or down, a GTD order traded as maker after its expire_at.
    h = Harness()
    h.buy(1, 100, 2, tif=GTD, expire_at=5)
    h.ts = 10  # the next command is stamped after the expiry; no expire_due came
    ev = h.sell(2, 100, 2)
    assert final(ev, 1) == ("expired", "gtd_expired", 0, 0)
    assert trades(ev) == []
    assert final(ev, 2) == ("new", None, 0, 2)
    assert [e[4] for e in order_events(ev)] == [1, 2]  # the expiry comes first
    assert rejects(h.amend(1, qty=1))[0][0] == "UnknownOrder"  # nor is it amended


def test_an_order_expires_within_a_command_as_one_book_update():
    h = Harness()
    h.buy(1, 100, 2, tif=GTD, expire_at=5)
    h.ts = 10
    events = h.buy(2, 99, 1)
    assert len(events) == 2  # the expiry, then the new order: one book update, at the last
    assert h.engine.book_seq("X") == events[-1][1]
    assert h.depth() == ([(99, 1, 1)], [])


def test_gtd_orders_that_ended_early_leave_no_expiry_entry_behind():
    # Each GTD or DAY order left its entry in the expiry heap until its expire_at, ended or
    # not: a market maker cancelling GTD orders that run a month grew the worker's memory by
    # every order it ever sent, for a month (and every command paid a longer heap).
    h = Harness()
    far = 10**18
    h.buy(1, 90, 1, tif=GTD, expire_at=far + 1)  # stays, and still expires at its time
    for oid in range(2, 30_002):
        h.sell(oid, 100, 1, tif=GTD, expire_at=far)
        if oid % 2:
            h.cancel(oid)
        else:
            h.market_buy(oid + 10**6, 1)  # fills it
    assert len(h.engine.orders) == 1
    assert len(h.engine._expiry) < 10_000
    assert h.expire_due(far) == []
    assert final(h.expire_due(far + 1), 1) == ("expired", "gtd_expired", 0, 0)

"""Hand-checked cases for the reference model itself, so the property test compares against
something that is known to be right on the rules that matter most."""

from __future__ import annotations

from matching.engine import (
    DAY,
    EV_ORDER,
    EV_REJECT,
    EV_STP,
    EV_TRADE,
    FOK,
    GTD,
    POST_ONLY,
    POST_ONLY_ADJUST,
    STOP_LIMIT,
    STOP_MARKET,
    STP_CANCEL_SMALLEST,
    STP_DECREMENT_BOTH,
    STP_NONE,
    Instrument,
    amend,
    cancel,
    expire_due,
    halt,
    limit,
    market,
    market_buy_quote,
    mass_cancel,
    place,
)
from matching.tests.reference_model import ReferenceModel, affordable, buy_cost, fee

SYM = "T"
BIG = 10**9


class Book:
    """A model with one K=1 instrument (notional = price * qty) and a running ts."""

    def __init__(self, **kw) -> None:
        self.model = ReferenceModel([Instrument(SYM, tick_size="1", lot_size="0.01", **kw)])
        self.ts = 0

    def do(self, cmd_builder, **kw) -> list[tuple]:
        self.ts += 1
        if cmd_builder in (limit, market, place) and kw.get("is_buy"):
            kw.setdefault("max_quote", BIG)
        if cmd_builder in (limit, market, place, market_buy_quote):
            kw.setdefault("symbol", SYM)
        return self.model.apply(cmd_builder(ts=self.ts, **kw))

    def buy(self, oid, price, qty, user=1, **kw):
        return self.do(limit, order_id=oid, user_id=user, is_buy=True, price=price, qty=qty, **kw)

    def sell(self, oid, price, qty, user=2, **kw):
        return self.do(limit, order_id=oid, user_id=user, is_buy=False, price=price, qty=qty, **kw)

    def ids(self) -> tuple[list[int], list[int]]:
        bids, asks = self.model.l3(SYM)
        return [r[1] for r in bids], [r[1] for r in asks]


def fills(events) -> list[tuple]:
    """(maker, taker, price, qty) of each trade."""
    return [(e[8], e[10], e[5], e[6]) for e in events if e[0] == EV_TRADE]


def final(events, oid) -> tuple:
    """(status, reason, filled, remaining) of the order's last EV_ORDER."""
    e = [e for e in events if e[0] == EV_ORDER and e[4] == oid][-1]
    return e[6], e[7], e[8], e[9]


def test_fee_rounds_charges_up_and_rebates_toward_zero() -> None:
    assert fee(1001, 1000) == 2  # 1.001 -> 2
    assert fee(1000, 1000) == 1
    assert fee(1999, -1000) == -1  # rebate 1.999 -> 1
    assert fee(999, -1000) == 0
    inst = Instrument(SYM, tick_size="1", lot_size="0.01")
    assert buy_cost(inst, 100, 3, 1000) == 301
    assert affordable(inst, 100, 301, 1000, 10) == 3
    assert affordable(inst, 100, 300, 1000, 10) == 2


def test_price_time_priority_and_trade_at_resting_price() -> None:
    b = Book()
    b.sell(1, 101, 2)
    b.sell(2, 100, 2)
    b.sell(3, 100, 2)
    events = b.buy(4, 102, 5)
    assert fills(events) == [(2, 4, 100, 2), (3, 4, 100, 2), (1, 4, 101, 1)]
    assert final(events, 4) == ("filled", None, 5, 0)
    assert b.ids() == ([], [1])


def test_fees_per_trade_and_quote_spent_of_a_buy() -> None:
    b = Book()
    b.sell(1, 100, 1, maker_fee_ppm=-2500)
    b.sell(2, 100, 2, maker_fee_ppm=-2500)
    events = b.buy(3, 100, 3, taker_fee_ppm=2500)
    trades = [e for e in events if e[0] == EV_TRADE]
    assert [(e[7], e[13], e[14]) for e in trades] == [(100, 0, 1), (200, 0, 1)]
    assert events[-1][11] == 302  # 300 notional + two fees of 1


def test_taker_buy_stops_at_its_budget() -> None:
    b = Book()
    b.sell(1, 100, 5)
    events = b.buy(2, 100, 5, max_quote=250)
    assert fills(events) == [(1, 2, 100, 2)]
    assert final(events, 2) == ("cancelled", "max_quote", 2, 0)


def test_market_buy_by_quote_ends_filled_when_budget_runs_out() -> None:
    b = Book()
    b.sell(1, 100, 5)
    events = b.do(market_buy_quote, order_id=2, user_id=1, quote_amount=350)
    assert fills(events) == [(1, 2, 100, 3)]
    assert final(events, 2) == ("filled", None, 3, 0)


def test_resting_buy_that_cannot_pay_another_lot_is_cancelled() -> None:
    b = Book()
    b.buy(1, 100, 5, max_quote=250)
    events = b.sell(2, 100, 5)
    assert fills(events) == [(1, 2, 100, 2)]
    assert final(events, 1) == ("cancelled", "max_quote", 2, 0)
    assert final(events, 2) == ("partially_filled", None, 2, 3)


def test_market_order_stops_at_the_collar() -> None:
    b = Book(collar_ppm=20_000)  # 2 ticks at 100
    b.sell(1, 100, 1)
    b.sell(2, 102, 1)
    b.sell(3, 103, 1)
    events = b.do(market, order_id=4, user_id=1, is_buy=True, qty=5)
    assert fills(events) == [(1, 4, 100, 1), (2, 4, 102, 1)]
    assert final(events, 4) == ("cancelled", "no_liquidity", 2, 0)


def test_fok_that_cannot_fill_changes_nothing() -> None:
    b = Book()
    b.sell(1, 100, 2)
    b.sell(2, 101, 2, user=1)  # own order: cancel_resting removes it in the dry run only
    events = b.buy(3, 101, 4, tif=FOK)
    assert [e[0] for e in events] == [EV_REJECT]
    assert events[0][7:9] == ("FokUnfillable", "fok_unfillable")
    assert b.ids() == ([], [1, 2])


def test_post_only_rejects_or_adjusts() -> None:
    b = Book()
    b.sell(1, 100, 2)
    events = b.buy(2, 100, 1, flags=POST_ONLY)
    assert events[0][7:10] == ("PostOnlyWouldMatch", "post_only", 100)
    events = b.buy(3, 101, 1, flags=POST_ONLY_ADJUST)
    assert final(events, 3) == ("new", None, 0, 1) and events[-1][10] == 99


def test_stp_cancel_smallest_and_decrement_both() -> None:
    b = Book()
    b.sell(1, 100, 2, user=1)
    events = b.buy(2, 100, 3, stp=STP_CANCEL_SMALLEST)
    assert [e[0] for e in events] == [EV_STP, EV_ORDER, EV_ORDER]
    assert final(events, 1) == ("cancelled", "stp", 0, 0)
    assert final(events, 2) == ("new", None, 0, 3)
    b = Book()
    b.sell(4, 100, 5, user=1, display_qty=2)
    events = b.buy(5, 100, 2, stp=STP_DECREMENT_BOTH)
    assert final(events, 5) == ("cancelled", "stp", 0, 0)
    assert final(events, 4) == ("new", None, 0, 3)
    assert b.model.l3(SYM)[1][0][3] == 2  # the reserve went first: still 2 visible


def test_iceberg_refills_to_the_back_of_its_level() -> None:
    b = Book()
    b.sell(1, 100, 4, display_qty=2)
    b.sell(2, 100, 3)
    events = b.buy(3, 100, 3)
    assert fills(events) == [(1, 3, 100, 2), (2, 3, 100, 1)]
    assert b.ids() == ([], [2, 1])
    assert b.model.l3(SYM)[1][1][3] == 2


def test_amend_reduce_keeps_priority_and_increase_loses_it() -> None:
    b = Book()
    b.sell(1, 100, 3)
    b.sell(2, 100, 3)
    b.do(amend, order_id=1, qty=2)
    assert b.ids() == ([], [1, 2])
    b.do(amend, order_id=1, qty=4)
    assert b.ids() == ([], [2, 1])
    events = b.do(amend, order_id=2, price=98)
    assert b.ids() == ([], [2, 1]) and final(events, 2) == ("new", None, 0, 3)
    b.buy(3, 97, 1)
    events = b.do(amend, order_id=2, price=97)  # crosses: trades as a taker
    assert fills(events) == [(3, 2, 97, 1)]
    assert final(events, 2) == ("partially_filled", None, 1, 2)


def test_stops_trigger_in_order_and_cascade() -> None:
    b = Book()
    b.sell(1, 100, 1)
    b.sell(2, 101, 1)
    b.sell(3, 102, 1)
    stop = dict(user_id=1, is_buy=True, qty=1, max_quote=BIG)
    b.do(place, order_id=10, order_type=STOP_MARKET, stop_price=101, **stop)
    b.do(place, order_id=11, order_type=STOP_LIMIT, price=105, stop_price=100, **stop)
    events = b.buy(4, 100, 1, user=3)
    triggered = [e[4] for e in events if e[0] == EV_ORDER and e[6] == "triggered"]
    assert triggered == [11, 10]  # by stop price ascending; 10 only after 11 traded at 101
    assert fills(events) == [(1, 4, 100, 1), (2, 11, 101, 1), (3, 10, 102, 1)]


def test_expiry_mass_cancel_and_halt() -> None:
    b = Book()
    b.sell(1, 100, 1, tif=GTD, expire_at=10)
    b.sell(2, 101, 1, tif=DAY, expire_at=5)
    b.sell(3, 102, 1)
    events = b.do(expire_due, now=10)
    assert [(e[4], e[7]) for e in events] == [(2, "day_expired"), (1, "gtd_expired")]
    b.do(halt, symbol=SYM)
    assert b.buy(4, 102, 1)[0][7:9] == ("InstrumentHalted", "halted")
    assert final(b.do(cancel, order_id=3), 3) == ("cancelled", "user", 0, 0)
    assert b.sell(5, 100, 1, stp=STP_NONE)[0][7] == "InstrumentHalted"
    assert b.do(mass_cancel, user_id=2) == []  # nothing of user 2 is left

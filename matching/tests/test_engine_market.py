"""Market orders: walk levels, VWAP from fills, no_liquidity, collar, buy by quote amount."""

from fractions import Fraction

from matching.engine import market_buy_quote
from matching.engine.testing import Harness, fills, final, trades


def vwap(events):
    t = trades(events)
    return Fraction(sum(e[5] * e[6] for e in t), sum(e[6] for e in t))


def test_market_buy_walks_levels_and_reports_vwap():
    h = Harness()
    h.sell(1, 100, 2)
    h.sell(2, 101, 2)
    ev = h.market_buy(3, 3)
    assert fills(ev) == [(1, 3, 100, 2), (2, 3, 101, 1)]
    assert vwap(ev) == Fraction(301, 3)
    assert final(ev, 3) == ("filled", None, 3, 0)


def test_market_insufficient_liquidity_cancels_rest_no_liquidity():
    h = Harness()
    h.sell(1, 100, 2)
    ev = h.market_buy(2, 5)
    assert final(ev, 2) == ("cancelled", "no_liquidity", 2, 0)
    assert h.depth() == ([], [])


def test_market_order_on_empty_book_never_rests():
    h = Harness()
    ev = h.market_sell(1, 5)
    assert final(ev, 1) == ("cancelled", "no_liquidity", 0, 0)
    assert h.engine.orders == {}


def test_collar_stops_market_buy_sweeping_far_levels():
    h = Harness(collar_ppm=50_000)
    h.sell(1, 100, 1)
    h.sell(2, 105, 1)  # exactly at the collar: 100 + 5
    h.sell(3, 106, 1)  # beyond
    ev = h.market_buy(4, 3)
    assert [f[2] for f in fills(ev)] == [100, 105]
    assert final(ev, 4) == ("cancelled", "no_liquidity", 2, 0)
    assert h.depth()[1] == [(106, 1, 1)]


def test_collar_for_market_sell_uses_best_bid():
    h = Harness(collar_ppm=10_000)
    h.buy(1, 1000, 1)
    h.buy(2, 990, 1)
    h.buy(3, 989, 1)
    ev = h.market_sell(4, 3)
    assert [f[2] for f in fills(ev)] == [1000, 990]


def test_market_buy_by_quote_spends_up_to_amount_including_fee():
    h = Harness()
    h.sell(1, 100, 10)
    ev = h.apply(
        market_buy_quote(
            ts=9, symbol="X", order_id=2, user_id=1, quote_amount=350, taker_fee_ppm=10_000
        )
    )
    # 3 lots cost 300 + ceil(3) = 303; 4 lots would cost 400 + 4 > 350.
    assert fills(ev) == [(1, 2, 100, 3)]
    status, _reason, filled, remaining = final(ev, 2)
    assert (status, filled, remaining) == ("filled", 3, 0)
    assert ev[-1][11] == 303


def test_market_buy_by_quote_too_small_for_one_lot_is_cancelled_max_quote():
    h = Harness()
    h.sell(1, 100, 10)
    ev = h.apply(market_buy_quote(ts=9, symbol="X", order_id=2, user_id=1, quote_amount=99))
    assert final(ev, 2) == ("cancelled", "max_quote", 0, 0)


def test_market_buy_never_exceeds_max_quote():
    h = Harness(collar_ppm=200_000)
    h.sell(1, 100, 5)
    h.sell(2, 110, 5)
    ev = h.market_buy(3, 10, max_quote=720)
    # 5 @ 100 = 500, then 2 @ 110 = 220 -> 720 exactly.
    assert [f[3] for f in fills(ev)] == [5, 2]
    assert final(ev, 3) == ("cancelled", "max_quote", 7, 0)
    assert ev[-1][11] <= 720


def cheap_coin() -> Harness:
    """Lot 0.001 at prices around 1.00 (quote 2 decimals): one lot is worth 0.001."""
    return Harness(tick_size="0.01", lot_size="0.001", quote_decimals=2)


def buy_by_quote(h: Harness, order_id: int, amount: int, fee_ppm: int) -> list[tuple]:
    return h.apply(
        market_buy_quote(
            ts=order_id, symbol="X", order_id=order_id, user_id=1, quote_amount=amount,
            taker_fee_ppm=fee_ppm,
        )
    )  # fmt: skip


def test_a_fill_worth_less_than_one_minor_unit_costs_one_and_a_tiny_budget_buys_once():
    # Notionals floored to 0.00, so a market buy of 0.01 took a 5.000 sell in 556 free fills
    # of 9 lots each: its budget never went down.
    h = cheap_coin()
    h.sell(1, 100, 5000)
    ev = buy_by_quote(h, 2, amount=1, fee_ppm=0)
    # One fill: the most that costs 0.01 (19 lots, 0.019 floored as every notional is), then
    # the budget is spent.
    assert fills(ev) == [(1, 2, 100, 19)]
    assert [t[7] for t in trades(ev)] == [1]
    assert final(ev, 2)[:3] == ("filled", None, 19)
    ev = buy_by_quote(h, 3, amount=3, fee_ppm=2000)
    # With a 0.2 % fee every fill costs its notional plus 0.01: 0.03 buys one fill of 0.02.
    assert [(t[6], t[7], t[14]) for t in trades(ev)] == [(29, 2, 1)]
    fresh = cheap_coin()
    fresh.sell(1, 100, 9)
    ev = buy_by_quote(fresh, 2, amount=100, fee_ppm=0)
    # A maker's 9 lots (0.009) cost a whole minor unit, not nothing.
    assert fills(ev) == [(1, 2, 100, 9)]
    assert [t[7] for t in trades(ev)] == [1]
    assert ev[-1][11] == 1


def test_notional_is_never_zero_for_a_lot_however_cheap():
    from matching.engine import Instrument, buy_cost

    inst = Instrument("C", tick_size="0.01", lot_size="0.001", quote_decimals=2)
    assert inst.notional(100, 9) == 1  # 0.009 -> 0.01, not 0.00
    assert inst.notional(100, 15) == 1  # 0.015 -> 0.01 (floor above one minor unit)
    assert buy_cost(inst.k_num, inst.k_den, 100, 1, 2000) == 2

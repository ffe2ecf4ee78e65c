"""Fees in quote minor units: charges round up, rebates round down; buying-power cap."""

from decimal import Decimal

from matching.engine import Instrument, buy_cost, fee_for
from matching.engine.testing import Harness, fills, final, order_events, trades


def test_fee_rounds_up_and_rebate_rounds_toward_zero():
    assert fee_for(1001, 1000) == 2  # 1.001 -> 2
    assert fee_for(1000, 1000) == 1
    assert fee_for(1999, -1000) == -1  # rebate 1.999 -> 1
    assert fee_for(999, -1000) == 0


def test_trade_carries_maker_and_taker_fees_at_frozen_rates():
    h = Harness()
    h.sell(1, 1001, 1, maker_fee_ppm=-1000)
    ev = h.buy(2, 1001, 1, taker_fee_ppm=1000)
    t = trades(ev)[0]
    assert (t[7], t[13], t[14]) == (1001, -1, 2)


def test_notional_multiplier_from_tick_lot_and_quote_precision():
    inst = Instrument("Z", tick_size="0.5", lot_size="0.01", quote_decimals=2)
    assert (inst.k_num, inst.k_den) == (1, 2)
    assert inst.notional(3, 7) == 10  # 3*0.5 * 7*0.01 = 0.105 -> 10 minor (floor)
    inst = Instrument("W", tick_size="0.01", lot_size="0.001", quote_decimals=8)
    assert inst.notional(1, 1) == 1000
    assert inst.price_to_ticks(Decimal("123.45")) == 12345
    assert inst.lots_to_qty(5) == Decimal("0.005")


def test_buy_cost_includes_taker_fee():
    assert buy_cost(1, 1, 100, 3, 10_000) == 303


def test_taker_buy_never_fills_past_max_quote_including_fee():
    h = Harness()
    h.sell(1, 100, 10)
    ev = h.buy(2, 100, 10, max_quote=505, taker_fee_ppm=10_000)
    # 5 lots cost 500 + 5 = 505.
    assert fills(ev) == [(1, 2, 100, 5)]
    assert final(ev, 2) == ("cancelled", "max_quote", 5, 0)
    assert order_events(ev, 2)[-1][11] == 505


def test_resting_buy_whose_max_quote_runs_out_is_cancelled():
    h = Harness()
    h.buy(1, 100, 10, max_quote=350)
    ev = h.sell(2, 100, 10)
    assert fills(ev) == [(1, 2, 100, 3)]
    assert final(ev, 1) == ("cancelled", "max_quote", 3, 0)
    assert final(ev, 2) == ("partially_filled", None, 3, 7)
    assert h.depth() == ([], [(100, 7, 1)])


def test_buy_that_cannot_afford_one_lot_at_rest_is_cancelled():
    h = Harness()
    ev = h.buy(1, 100, 1, max_quote=50)
    assert final(ev, 1) == ("cancelled", "max_quote", 0, 0)


def test_maker_rebate_lowers_buy_cost():
    h = Harness()
    h.buy(1, 1000, 2, max_quote=1999, maker_fee_ppm=-1000)
    ev = h.sell(2, 1000, 2)
    # 1000 - 1 rebate per fill: first fill 2 lots cost 2000-2 = 1998 <= 1999.
    assert fills(ev) == [(1, 2, 1000, 2)]
    assert trades(ev)[0][13] == -2

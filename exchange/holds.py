"""What an order could spend: the amount held for it and passed to the engine as `max_quote`.

The ledger (accounts issue) will lock these amounts against balances in the same transaction;
today the amount is computed, stored on the order and enforced by the engine as the buy's cap.
"""

from decimal import Decimal

from exchange.models import Instrument, Order
from matching.engine import Instrument as EngineInstrument
from matching.engine.instrument import fee_for

PPM = 1_000_000


def _collar_price(ticks: int, collar_ppm: int) -> int:
    return ticks + ticks * collar_ppm // PPM


def buy_hold_minor(
    *,
    engine: EngineInstrument,
    order_type: str,
    price_ticks: int,
    qty_lots: int,
    stop_ticks: int,
    quote_minor: int,
    best_ask_ticks: int | None,
    fee_ppm: int,
) -> int:
    """Quote minor units a buy may spend, fees included at `fee_ppm` (the higher of its maker and
    taker rates: it may fill either way).

    Limit and stop-limit: price x quantity. Market by quote: the quote amount. Market by
    quantity: quantity at the collar above the best ask (no ask: nothing can fill). Stop-loss:
    quantity at the collar above the stop price, or above the best ask when that is higher
    (the book has moved past the stop since the last trade; the stop buys from there when a
    trade reaches it). Plus the fee rounding reserve.
    """
    if order_type == Order.Type.MARKET and quote_minor:
        return quote_minor
    if order_type in (Order.Type.LIMIT, Order.Type.STOP_LIMIT):
        worst_ticks = price_ticks
    elif order_type == Order.Type.STOP_LOSS:
        worst_ticks = _collar_price(max(stop_ticks, best_ask_ticks or 0), engine.collar_ppm)
    elif best_ask_ticks is not None:
        worst_ticks = _collar_price(best_ask_ticks, engine.collar_ppm)
    else:
        return 0
    return buy_cost_minor(engine, worst_ticks, qty_lots, fee_ppm)


def best_ask_ticks(engine: EngineInstrument, price: Decimal | None) -> int | None:
    """The best ask (`exchange.selectors.best_ask`) in ticks, if any."""
    return None if price is None else engine.price_to_ticks(price)


def buy_cost_minor(engine: EngineInstrument, price_ticks: int, qty_lots: int, fee_ppm: int) -> int:
    """The most `qty_lots` bought at `price_ticks` can cost: notional, fee, and one minor unit
    for each fill after the first. The engine rounds each fill's fee up on its own, so n fills
    can cost up to n - 1 minor units more than the fee on the whole notional; without that
    reserve a buy its owner can pay for stopped short (`max_quote`). Released when it ends.

    A fill's fee never exceeds its notional, so the fees never exceed the notional either:
    the reserve is at most the notional less the fee. Without that bound a million lots of a
    coin worth 0.00000085 (8-place quote) held a million of the quote asset for 0.85."""
    notional = engine.notional(price_ticks, qty_lots)
    fee = fee_for(notional, fee_ppm)
    reserve = min(qty_lots - 1, max(notional - fee, 0)) if fee_ppm > 0 and qty_lots > 1 else 0
    return notional + fee + reserve


def held_amount(
    *,
    engine: EngineInstrument,
    instrument: Instrument,
    is_buy: bool,
    quantity: Decimal | None,
    buy_minor: int,
) -> Decimal:
    """The hold as stored on the order: quote for a buy, base quantity for a sell."""
    if is_buy:
        return engine.minor_to_quote(buy_minor)
    return quantity or Decimal(0)

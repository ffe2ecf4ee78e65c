"""An instrument's trading rules applied to an order request, and the request's engine form.

Everything here raises a catalogue error naming the field at fault; nothing here writes.
"""

import datetime as dt
import zoneinfo
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

from exchange.errors import trading_error
from exchange.models import Instrument, Order, StpMode
from matching.engine import Instrument as EngineInstrument
from matching.engine import protocol as p
from matching.instruments import engine_instrument_spec

ORDER_TYPES = {
    Order.Type.LIMIT: p.LIMIT,
    Order.Type.MARKET: p.MARKET,
    Order.Type.STOP_LOSS: p.STOP_MARKET,
    Order.Type.STOP_LIMIT: p.STOP_LIMIT,
}
TIME_IN_FORCE = {
    Order.TimeInForce.GTC: p.GTC,
    Order.TimeInForce.IOC: p.IOC,
    Order.TimeInForce.FOK: p.FOK,
    Order.TimeInForce.GTD: p.GTD,
    Order.TimeInForce.DAY: p.DAY,
}
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def to_ns(moment: dt.datetime) -> int:
    """Aware datetime -> integer nanoseconds since the epoch (exact, no float)."""
    return (moment - EPOCH) // dt.timedelta(microseconds=1) * 1000


@dataclass(frozen=True, slots=True)
class OrderRequest:
    """A normalized order request (what the serializer or another channel hands the service)."""

    symbol: str
    side: str
    order_type: str
    quantity: Decimal | None = None
    price: Decimal | None = None
    stop_price: Decimal | None = None
    quote_quantity: Decimal | None = None
    time_in_force: str = Order.TimeInForce.GTC
    expire_at: dt.datetime | None = None
    post_only: bool = False
    post_only_adjust: bool = False
    display_quantity: Decimal | None = None
    stp_mode: str = ""
    client_order_id: str | None = None


# The instrument fields engine_instrument_spec reads: the cache key of its result.
_ENGINE_RULE_FIELDS = (
    "symbol", "tick_size", "lot_size", "quote_precision", "min_quantity", "min_notional",
    "price_band_pct", "market_collar_pct", "default_stp_mode",
)  # fmt: skip
_ENGINE_INSTRUMENTS: dict[tuple, EngineInstrument] = {}


def engine_instrument_for(instrument: Instrument) -> EngineInstrument:
    """The engine's integer view of `instrument`, cached by the rules it is derived from
    (deriving it cost a tenth of an order's validation)."""
    rules = tuple(getattr(instrument, name) for name in _ENGINE_RULE_FIELDS)
    engine = _ENGINE_INSTRUMENTS.get(rules)
    if engine is None:
        if len(_ENGINE_INSTRUMENTS) >= 512:
            _ENGINE_INSTRUMENTS.clear()
        engine = EngineInstrument(**engine_instrument_spec(instrument))
        _ENGINE_INSTRUMENTS[rules] = engine
    return engine


def session_open_at(instrument: Instrument, now: dt.datetime) -> bool:
    """Whether the instrument's trading session is open at `now` (24/7, or a weekday between
    its open and close in its time zone)."""
    if instrument.trades_24_7:
        return True
    local = now.astimezone(zoneinfo.ZoneInfo(instrument.session_timezone))
    return (
        local.weekday() < 5 and instrument.session_open <= local.time() < instrument.session_close
    )


def check_session(instrument: Instrument, now: dt.datetime) -> None:
    """Refuse orders outside the instrument's trading session (weekdays, open to close)."""
    if not session_open_at(instrument, now):
        raise trading_error(
            "MarketClosed",
            f"{instrument.symbol} trades {_clock(instrument.session_open)}-"
            f"{_clock(instrument.session_close)} {instrument.session_timezone} on weekdays",
        )


def _clock(at: dt.time) -> str:
    """09:30, or 20:48:45 when the time has seconds (a close at 20:48:45 read "20:48")."""
    return f"{at:%H:%M:%S}" if at.second else f"{at:%H:%M}"


def day_expiry(instrument: Instrument, now: dt.datetime) -> dt.datetime:
    """When a DAY order placed at `now` expires: the session close, or UTC midnight for 24/7."""
    if instrument.trades_24_7:
        return dt.datetime.combine(now.date() + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)
    zone = zoneinfo.ZoneInfo(instrument.session_timezone)
    local = now.astimezone(zone)
    return dt.datetime.combine(local.date(), instrument.session_close, tzinfo=zone).astimezone(
        dt.UTC
    )


def session_close_ns(instrument: Instrument, now: dt.datetime) -> int | None:
    """The close of the session open at `now`, in ns, for an order or amend accepted then (None
    for a 24/7 instrument): the matching worker refuses it MarketClosed when it reaches the
    engine only after that close (queued behind a stopped worker, or in flight at the close),
    so that nothing trades outside the session."""
    if instrument.trades_24_7:
        return None
    return to_ns(day_expiry(instrument, now))


def price_ticks(engine: EngineInstrument, instrument: Instrument, value: Decimal, field: str):
    if value <= 0:
        raise trading_error("InvalidNumber", f"{field} must be greater than 0", field=field)
    try:
        ticks = engine.price_to_ticks(value)
    except ValueError:
        raise trading_error(
            "PriceOffTick",
            f"{field} {value:f} is not a multiple of the tick size "
            f"{instrument.tick_size.normalize():f}",
            field=field,
        ) from None
    return _within_engine(ticks, field, value)


def _within_engine(units: int, field: str, value: Decimal) -> int:
    """`units` (ticks, lots or minor units) if the engine can hold them."""
    if units >= p.MAX_UNITS:
        raise trading_error(
            "NumberTooLarge",
            f"{field} {value:f} is more than this instrument's orders can carry "
            f"({p.MAX_UNITS - 1} ticks, lots or minor units)",
            field=field,
        )
    return units


def buy_value_check(engine: EngineInstrument, instrument: Instrument, minor: int, field: str):
    """`minor`, a buy's budget in quote minor units (its worst-case value with the taker fee:
    what it holds and what the engine caps its fills at), if the engine can carry it. Every
    trade's value is bounded by its buyer's budget, so this also keeps each trade's value and
    fees within what the matching worker writes (64-bit integers). Past it, the batch holding
    the trade failed to commit and the worker exited; the buy was rejected (CommandFailed) only
    once two restarts had retried it alone, the whole shard stalled meanwhile."""
    if minor >= p.MAX_UNITS:
        value = engine.minor_to_quote(minor).normalize()
        limit = engine.minor_to_quote(p.MAX_UNITS - 1).normalize()
        raise trading_error(
            "NumberTooLarge",
            f"order value {value:f} {instrument.quote_asset} (price x quantity with the taker "
            f"fee and its rounding reserve) is more than this instrument's orders can carry "
            f"({limit:f}); lower the {field}",
            field=field,
        )
    return minor


def quantity_lots(engine: EngineInstrument, instrument: Instrument, value: Decimal, field: str):
    if value <= 0:
        raise trading_error("InvalidNumber", f"{field} must be greater than 0", field=field)
    try:
        lots = engine.qty_to_lots(value)
    except ValueError:
        raise trading_error(
            "QuantityOffLot",
            f"{field} {value:f} is not a multiple of the lot size "
            f"{instrument.lot_size.normalize():f}",
            field=field,
        ) from None
    if field == "quantity" and value < instrument.min_quantity:
        raise trading_error(
            "QuantityBelowMinimum",
            f"quantity {value:f} is below the minimum {instrument.min_quantity.normalize():f}",
            field=field,
        )
    return _within_engine(lots, field, value)


def quote_minor(engine: EngineInstrument, value: Decimal, field: str) -> int:
    if value <= 0:
        raise trading_error("InvalidNumber", f"{field} must be greater than 0", field=field)
    try:
        minor = engine.quote_to_minor(value)
    except ValueError:
        raise trading_error(
            "AmountTooPrecise",
            f"{field} {value:f} has more than {engine.quote_decimals} decimal places",
            field=field,
        ) from None
    return _within_engine(minor, field, value)


def check_minimums(
    instrument: Instrument,
    price: Decimal | None,
    quantity: Decimal,
    field: str,
    *,
    quantity_field: str = "quantity",
):
    """The instrument's minimum quantity, and its minimum notional (price x quantity) for an
    order with a price; `field` is the request field a refused notional names, and
    `quantity_field` the one a refused quantity names (and what the messages call it)."""
    if quantity < instrument.min_quantity:
        raise trading_error(
            "QuantityBelowMinimum",
            f"{quantity_field} {quantity.normalize():f} is below the minimum "
            f"{instrument.min_quantity.normalize():f}",
            field=quantity_field,
        )
    if price is not None and instrument.min_notional:
        notional = price * quantity
        if notional < instrument.min_notional:
            what = "order value" if quantity_field == "quantity" else f"{quantity_field} value"
            raise trading_error(
                "NotionalTooSmall",
                f"{what} {notional.normalize():f} is below the minimum "
                f"{instrument.min_notional.normalize():f} {instrument.quote_asset}",
                field=field,
            )


def check_display_minimums(
    instrument: Instrument, price: Decimal | None, display: Decimal, quantity: Decimal, field: str
) -> None:
    """An iceberg's slice (its display quantity, or its whole quantity when that is less) meets
    the instrument's minimums at its limit price, as an order does: each slice trades on its
    own, and slices below them split every taker meeting them into dust fills, each paying a
    fee rounded up to a whole minor unit. `field` is the request field a refused notional
    names."""
    check_minimums(
        instrument, price, min(display, quantity), field, quantity_field="display_quantity"
    )


def check_price_max(engine: EngineInstrument, ticks: int, field: str) -> None:
    """A limit price above the highest the matching engine takes (its absolute band,
    `price_max` ticks) is refused here: taken, it was stored and then rejected by the engine."""
    if ticks > engine.price_max:
        raise trading_error(
            "PriceOutsideBand",
            f"{field} {engine.price_text(ticks)} is above the highest price this instrument "
            f"takes, {engine.price_text(engine.price_max)}",
            field=field,
        )


def check_band(instrument: Instrument, price: Decimal, reference: Decimal | None, field: str):
    """A limit price more than price_band_pct away from the last trade price is refused."""
    if reference is None or not instrument.price_band_pct:
        return
    if abs(price - reference) * 100 > reference * instrument.price_band_pct:
        # The band named is the prices it takes: its edges rounded inward to the tick (rounded
        # to the nearest, 4.985-14.955 had read "4.98-14.96" of prices that were refused).
        tick = instrument.tick_size.normalize()
        low_edge = reference * (100 - instrument.price_band_pct) / 100
        high_edge = reference * (100 + instrument.price_band_pct) / 100
        low = ((low_edge / tick).to_integral_value(ROUND_CEILING) * tick).quantize(tick)
        high = ((high_edge / tick).to_integral_value(ROUND_FLOOR) * tick).quantize(tick)
        pct = format(instrument.price_band_pct.normalize(), "f")
        raise trading_error(
            "PriceOutsideBand",
            f"{field} {price} is outside the band {low}-{high} ({pct}% around the last price "
            f"{reference.quantize(tick)})",
            field=field,
        )


def check_shape(request: OrderRequest) -> None:
    """Presence and combination rules that do not depend on the instrument."""
    kind = request.order_type
    needs_price = kind in (Order.Type.LIMIT, Order.Type.STOP_LIMIT)
    price_name = "limit_price" if kind == Order.Type.STOP_LIMIT else "price"
    if needs_price and request.price is None:
        raise trading_error(
            "MissingParameter", f"a {kind} order needs {price_name}", field=price_name
        )
    if not needs_price and request.price is not None:
        raise trading_error("UnexpectedParameter", f"a {kind} order takes no price", field="price")
    is_stop = kind in (Order.Type.STOP_LOSS, Order.Type.STOP_LIMIT)
    if is_stop and request.stop_price is None:
        raise trading_error(
            "MissingParameter", f"a {kind} order needs stop_price", field="stop_price"
        )
    if not is_stop and request.stop_price is not None:
        raise trading_error(
            "UnexpectedParameter", f"a {kind} order takes no stop_price", field="stop_price"
        )
    if request.quote_quantity is not None:
        if kind != Order.Type.MARKET or request.side != Order.Side.BUY:
            raise trading_error(
                "InvalidCombination",
                "quote_quantity is only for market buys (spend up to this amount)",
                field="quote_quantity",
            )
        if request.quantity is not None:
            raise trading_error(
                "InvalidCombination",
                "give either quantity or quote_quantity, not both",
                field="quote_quantity",
            )
        if request.time_in_force == Order.TimeInForce.FOK:
            # All or nothing needs a quantity to fill; the engine refused it after it was stored.
            raise trading_error(
                "InvalidCombination",
                "a market buy by quote_quantity cannot be FOK (give a quantity, or use IOC)",
                field="time_in_force",
            )
    elif request.quantity is None:
        raise trading_error("MissingParameter", "quantity is required", field="quantity")
    tif = request.time_in_force
    if request.post_only or request.post_only_adjust:
        if kind != Order.Type.LIMIT:
            raise trading_error(
                "InvalidCombination", "post-only applies to limit orders", field="post_only"
            )
        if tif in (Order.TimeInForce.IOC, Order.TimeInForce.FOK):
            raise trading_error(
                "InvalidCombination",
                f"a post-only order cannot be {tif}: it must be able to rest",
                field="post_only",
            )
        if request.post_only and request.post_only_adjust:
            raise trading_error(
                "InvalidCombination",
                "choose post_only or post_only_adjust, not both",
                field="post_only_adjust",
            )
    if kind == Order.Type.MARKET and tif in (Order.TimeInForce.GTD, Order.TimeInForce.DAY):
        raise trading_error(
            "InvalidCombination", f"a market order cannot be {tif}", field="time_in_force"
        )
    if request.display_quantity is not None:
        if kind not in (Order.Type.LIMIT, Order.Type.STOP_LIMIT):
            raise trading_error(
                "InvalidCombination",
                "display_quantity (iceberg) applies to limit and stop-limit orders",
                field="display_quantity",
            )
        if tif in (Order.TimeInForce.IOC, Order.TimeInForce.FOK):
            raise trading_error(
                "InvalidCombination",
                f"an iceberg order cannot be {tif}: it must be able to rest",
                field="display_quantity",
            )
    if tif == Order.TimeInForce.GTD and request.expire_at is None:
        raise trading_error("MissingParameter", "a GTD order needs expire_at", field="expire_at")
    if tif != Order.TimeInForce.GTD and request.expire_at is not None:
        raise trading_error(
            "UnexpectedParameter", "expire_at is only for GTD orders", field="expire_at"
        )
    if request.stp_mode and request.stp_mode not in StpMode.values:
        raise trading_error("InvalidParameter", "unknown stp_mode", field="stp_mode")

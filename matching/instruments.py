"""The engine's view of an instrument, derived from the database row (Decimal -> integers)."""

from decimal import Decimal

from exchange.models import Instrument, StpMode
from matching.engine import Instrument as EngineInstrument
from matching.engine.protocol import STP_MODE_NAMES

PPM = 1_000_000


def engine_instrument_spec(instrument: Instrument) -> dict:
    """Keyword arguments of matching.engine.Instrument for `instrument` (JSON-safe)."""
    tick = Decimal(instrument.tick_size).normalize()
    lot = Decimal(instrument.lot_size).normalize()
    spec = EngineInstrument(
        symbol=instrument.symbol,
        tick_size=str(tick),
        lot_size=str(lot),
        quote_decimals=instrument.quote_precision,
    )
    min_lots = spec.qty_to_lots(instrument.min_quantity)
    min_notional = int(
        (Decimal(instrument.min_notional).scaleb(instrument.quote_precision)).to_integral_value()
    )
    return {
        "symbol": instrument.symbol,
        "tick_size": format(tick, "f"),
        "lot_size": format(lot, "f"),
        "quote_decimals": instrument.quote_precision,
        "min_qty": max(min_lots, 1),
        "min_notional": min_notional,
        "band_ppm": int(Decimal(instrument.price_band_pct) * PPM / 100),
        "collar_ppm": int(Decimal(instrument.market_collar_pct) * PPM / 100),
        "stp_default": STP_MODE_NAMES.index(instrument.default_stp_mode or StpMode.CANCEL_RESTING),
    }


def engine_instrument(instrument: Instrument) -> EngineInstrument:
    return EngineInstrument(**engine_instrument_spec(instrument))

"""Reading the API's query parameters strictly: a bad value is a 400 naming it, never ignored."""

from rest_framework.request import Request

from exchange import selectors
from exchange.errors import trading_error


def whole_number(request: Request, name: str, *, default: int, low: int, high: int) -> int:
    """An optional whole-number query parameter within low..high (ASCII digits only: `²` is
    a digit to str.isdigit, not to int)."""
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit() and low <= int(raw) <= high):
        raise trading_error(
            "InvalidParameter", f"{name} must be a whole number from {low} to {high}", field=name
        )
    return int(raw)


def symbol_filter(request: Request) -> str | None:
    """An optional `symbol` filter: None when absent, else a listed instrument's symbol (an
    unknown one is the 400 UnknownSymbol the market-data endpoints answer, not an empty list
    that reads as "no orders")."""
    raw = request.query_params.get("symbol")
    if raw is None:
        return None
    return selectors.instrument_by_symbol(raw).symbol

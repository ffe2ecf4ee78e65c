"""Reading the API's query parameters strictly: a bad value is a 400 naming it, never ignored."""

from rest_framework.request import Request

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

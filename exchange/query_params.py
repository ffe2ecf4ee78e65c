"""Reading the API's query parameters strictly: a bad value is a 400 naming it, never ignored."""

from rest_framework.request import Request
from rest_framework.settings import api_settings

from exchange import selectors
from exchange.errors import echoed, trading_error

# The cursor pages' own parameters (exchange.pagination.CursorPage).
PAGE_QUERY = ("limit", "cursor")


class KnownQueryParameters:
    """A view mixin: `query_parameters` names, per HTTP method, every query parameter the view
    reads; any other, or one given twice, is a 400 UnexpectedParameter, checked after
    authentication, permissions and rate limits. A misspelt filter had been no filter:
    `/fills?symbl=AAPL` listed the fills of every symbol, and `DELETE /orders?symbols=AAPL`
    cancelled every order. A method left out is not checked."""

    query_parameters: dict[str, tuple[str, ...]] = {}

    def initial(self, request, *args, **kwargs) -> None:
        super().initial(request, *args, **kwargs)
        names = self.query_parameters.get(request.method)
        if names is None:
            return
        for name, values in request.query_params.lists():
            if name not in names and name != api_settings.URL_FORMAT_OVERRIDE:  # DRF's `format`
                takes = f"takes only {', '.join(names)}" if names else "takes no query parameters"
                raise trading_error(
                    "UnexpectedParameter",
                    f"{request.method} {request.path} {takes}; got {echoed(name)}",
                    field=name[:100],
                )
            if len(values) > 1:
                # `?symbol=AAA&symbol=BBB` had read the last: a mass cancel of BBB alone.
                raise trading_error(
                    "UnexpectedParameter",
                    f"{name} given {len(values)} times; give it once",
                    field=name[:100],
                )


def time_range_check(start, end) -> None:
    """400 InvalidTimeRange for a list's `start` after its `end` (it had listed nothing)."""
    if start is not None and end is not None and start > end:
        raise trading_error("InvalidTimeRange", "start must not be after end", field="start")


def whole_number(request: Request, name: str, *, default: int, low: int, high: int) -> int:
    """An optional whole-number query parameter within low..high (ASCII digits only: `²` is
    a digit to str.isdigit, not to int)."""
    raw = request.query_params.get(name)
    if raw is None:
        return default
    # Without leading zeros and no longer than `high` first: int() refuses over 4,300 digits.
    significant = raw.lstrip("0")
    if not (
        raw.isascii()
        and raw.isdigit()
        and len(significant) <= len(str(high))
        and low <= int(significant or "0") <= high
    ):
        raise trading_error(
            "InvalidParameter", f"{name} must be a whole number from {low} to {high}", field=name
        )
    return int(significant or "0")


def symbol_filter(request: Request) -> str | None:
    """An optional `symbol` filter: None when absent, else a listed instrument's symbol (an
    unknown one is the 400 UnknownSymbol the market-data endpoints answer, not an empty list
    that reads as "no orders")."""
    raw = request.query_params.get("symbol")
    if raw is None:
        return None
    return selectors.instrument_by_symbol(raw).symbol

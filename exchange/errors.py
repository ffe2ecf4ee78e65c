"""The trading API's error catalogue: stable names and numeric codes (never reused or changed).

Validation errors are 400s with nothing stored. Engine rejections (only the engine can decide
them) are 400s carrying the `order_id` of the order stored as `rejected`.
"""

from rest_framework import status

from exchange.api_errors import ApiError

ERROR_CODES: dict[str, int] = {
    # Authentication (exchange/api_errors.py maps DRF's own): an order whose user staff
    # deactivated between its authentication and its storing.
    "AuthenticationFailed": -1003,
    # API keys and request signing (accounts/api_keys.py); rate limits are TooManyRequests -1015
    "InvalidApiKey": -1010,
    "IpNotAllowed": -1011,
    "ApiKeyPermissionMissing": -1012,
    "MissingAuthHeader": -1013,
    "InvalidTimestamp": -1014,
    "TooManyRequests": -1015,
    "InvalidRecvWindow": -1016,
    "SessionRequired": -1017,
    "ApiKeyNotFound": -1018,
    "TimestampOutsideRecvWindow": -1021,
    "InvalidSignature": -1022,
    # request shape
    "MalformedRequest": -1100,
    "PayloadTooLarge": -1101,
    "InvalidParameter": -1102,
    "NumberNotString": -1103,
    "InvalidNumber": -1104,
    "MissingParameter": -1105,
    "UnexpectedParameter": -1106,
    "InvalidCombination": -1107,
    "NumberTooLarge": -1108,
    "InvalidTimeRange": -1131,  # start after end (the orders list, the audit API)
    # instrument rules
    "PriceOffTick": -1111,
    "QuantityOffLot": -1112,
    "QuantityBelowMinimum": -1113,
    "NotionalTooSmall": -1114,
    "PriceOutsideBand": -1115,
    "DisplayQuantityTooLarge": -1118,
    "ExpireAtInPast": -1119,
    "MarketClosed": -1120,
    "UnknownSymbol": -1121,
    "AmountTooPrecise": -1122,
    "ExpireAtTooFar": -1123,
    # orders
    "PostOnlyWouldMatch": -2010,
    "OrderNotOpen": -2011,
    "InstrumentHalted": -2012,
    "OrderNotFound": -2013,
    "FokUnfillable": -2014,
    "AmendQuantityTooLow": -2015,
    "InvalidMaxQuote": -2016,
    "NothingToAmend": -2017,
    "InsufficientBalance": -2018,
    "AmendPending": -2019,
    "DuplicateClientOrderId": -2026,
    "OrderRejected": -2099,
    # funds
    "UnknownAsset": -3001,
    "DepositNotAllowed": -3002,
    "BalanceLimitExceeded": -3003,
}

# Engine reject codes that keep their own name at the API; any other becomes OrderRejected.
ENGINE_CODES_EXPOSED = {
    "PostOnlyWouldMatch",
    "InstrumentHalted",
    "FokUnfillable",
    "PriceOutsideBand",
    "AmendQuantityTooLow",
    "InvalidMaxQuote",
    # Refused by the matching worker, not the engine: the session closed before it got there.
    "MarketClosed",
}


def echoed(value) -> str:
    """`repr(value)` for an error message, cut to 60 characters: a bad value is named, not
    sent back whole (it may be megabytes)."""
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def trading_error(
    error: str,
    message: str,
    *,
    field: str | None = None,
    http_status: int = status.HTTP_400_BAD_REQUEST,
    extra: dict | None = None,
) -> ApiError:
    """An ApiError from the catalogue (KeyError for a name not in it: codes are deliberate)."""
    return ApiError(
        error=error,
        code=ERROR_CODES[error],
        message=message,
        field=field,
        http_status=http_status,
        extra=extra,
    )


# Engine reject codes answered under a catalogue name of the same meaning.
ENGINE_CODE_NAMES = {
    # expire_at was ahead when the order was accepted, and had passed when the engine took it
    # (a GTD a few milliseconds ahead, a DAY order at the close, the worker away meanwhile).
    "InvalidExpireAt": "ExpireAtInPast",
    # Order entry checked the instrument's rules as it had them (cached up to 2 s), and staff
    # raised a minimum meanwhile: the engine's refusal is the one order entry gives now.
    "InvalidQuantity": "QuantityBelowMinimum",
    "BelowMinNotional": "NotionalTooSmall",
}
# The request field such a refusal names, as order entry's own does.
ENGINE_CODE_FIELDS = {"InvalidQuantity": "quantity", "BelowMinNotional": "quantity"}


def rejection_body(code: str, message: str) -> dict | None:
    """An order's `rejection` as its reads show it: the error body (`error`, `code`, `message`)
    its placement was (or, answered 202, would have been) refused with; None without a code."""
    if not code:
        return None
    error = engine_rejection(code, message)
    return {"error": error.error, "code": error.error_code, "message": error.message}


def engine_rejection(code: str, message: str, *, order_id: int | None = None) -> ApiError:
    """The API error for a command the engine refused."""
    error = ENGINE_CODE_NAMES.get(code, code if code in ENGINE_CODES_EXPOSED else "OrderRejected")
    extra = {"order_id": order_id} if order_id is not None else None
    if error == "OrderRejected":
        message = f"{code}: {message}" if message else code
    return trading_error(error, message or code, field=ENGINE_CODE_FIELDS.get(code), extra=extra)

"""Wire format of the matching engine: command opcodes and constructors, event layouts, names.

Commands are plain tuples whose first element is an integer opcode; events are plain tuples whose
first element is an integer event kind. Both layouts are stable: the worker persists events
field by field and the reference model in the tests builds commands with the constructors below.
See API.md next to this file for the full contract.
"""

from __future__ import annotations

# --------------------------------------------------------------------------------------------
# Command opcodes (element 0 of every command tuple). Element 1 is always `ts` (int, ns).
# --------------------------------------------------------------------------------------------
# Prices in ticks, quantities in lots and quote amounts in minor units must be below this:
# inside, a remaining quantity above it means "a market buy by quote amount" (API.md).
MAX_UNITS = 1 << 61

OP_PLACE = 1
OP_CANCEL = 2
OP_AMEND = 3
OP_MASS_CANCEL = 4
OP_EXPIRE_DUE = 5
OP_HALT = 6
OP_RESUME = 7
OP_ADD_INSTRUMENT = 8
OP_UPDATE_INSTRUMENT = 9

# Field indices of a PLACE command tuple.
P_OP = 0
P_TS = 1
P_SYMBOL = 2
P_ORDER_ID = 3
P_USER_ID = 4
P_IS_BUY = 5
P_TYPE = 6
P_PRICE = 7
P_QTY = 8
P_TIF = 9
P_EXPIRE_AT = 10
P_FLAGS = 11
P_DISPLAY = 12
P_STOP_PRICE = 13
P_MAX_QUOTE = 14
P_MAKER_FEE = 15
P_TAKER_FEE = 16
P_STP = 17

# Order types.
LIMIT = 0
MARKET = 1
STOP_MARKET = 2  # stop-loss: becomes a market order when triggered
STOP_LIMIT = 3  # becomes a limit order when triggered
ORDER_TYPE_NAMES = ("limit", "market", "stop_market", "stop_limit")

# Time in force.
GTC = 0
IOC = 1
FOK = 2
GTD = 3
DAY = 4
TIF_NAMES = ("gtc", "ioc", "fok", "gtd", "day")

# Place flags (bit set).
POST_ONLY = 1  # reject with PostOnlyWouldMatch if the order would match on arrival
POST_ONLY_ADJUST = 2  # reprice a crossing order to one tick behind the opposite best price

# Self-trade prevention modes. STP_DEFAULT means "use the instrument's default mode".
STP_DEFAULT = 0
STP_NONE = 1
STP_CANCEL_RESTING = 2
STP_CANCEL_INCOMING = 3
STP_CANCEL_BOTH = 4
STP_CANCEL_SMALLEST = 5
STP_DECREMENT_BOTH = 6
STP_MODE_NAMES = (
    "default",
    "none",
    "cancel_resting",
    "cancel_incoming",
    "cancel_both",
    "cancel_smallest",
    "decrement_both",
)

# --------------------------------------------------------------------------------------------
# Event kinds (element 0 of every event tuple) and layouts. Element 1 is the engine-wide event
# seq (1, 2, 3, ...), element 2 the `ts` of the command that produced the event.
# --------------------------------------------------------------------------------------------
EV_ORDER = 1
# (EV_ORDER, seq, ts, symbol, order_id, user_id, status, reason, filled, remaining, price,
#  quote_spent)
EV_TRADE = 2
# (EV_TRADE, seq, ts, symbol, trade_seq, price, qty, notional, maker_order_id, maker_user_id,
#  taker_order_id, taker_user_id, taker_is_buy, maker_fee, taker_fee, maker_status,
#  maker_filled, maker_remaining, taker_filled, taker_remaining)
EV_REJECT = 3
# (EV_REJECT, seq, ts, symbol, order_id, user_id, opcode, code, reason, detail)
EV_STP = 4
# (EV_STP, seq, ts, symbol, mode_name, taker_order_id, maker_order_id, user_id, price, qty)
EV_INSTRUMENT = 5
# (EV_INSTRUMENT, seq, ts, symbol, action)
#   action: "added" | "halted" | "resumed" | "updated"
EV_EXPIRY_MOVED = 6
# (EV_EXPIRY_MOVED, seq, ts, symbol, order_id, user_id, expire_at, previous_expire_at): a live
# DAY order's new expiry (update_instrument with day_expire_at: its session hours changed)

# Field indices shared by events.
E_KIND = 0
E_SEQ = 1
E_TS = 2
E_SYMBOL = 3
# EV_ORDER
O_ORDER_ID = 4
O_USER_ID = 5
O_STATUS = 6
O_REASON = 7
O_FILLED = 8
O_REMAINING = 9
O_PRICE = 10
O_QUOTE_SPENT = 11
# EV_TRADE
T_TRADE_SEQ = 4
T_PRICE = 5
T_QTY = 6
T_NOTIONAL = 7
T_MAKER_ORDER_ID = 8
T_MAKER_USER_ID = 9
T_TAKER_ORDER_ID = 10
T_TAKER_USER_ID = 11
T_TAKER_IS_BUY = 12
T_MAKER_FEE = 13
T_TAKER_FEE = 14
T_MAKER_STATUS = 15
T_MAKER_FILLED = 16
T_MAKER_REMAINING = 17
T_TAKER_FILLED = 18
T_TAKER_REMAINING = 19
# EV_REJECT
R_ORDER_ID = 4
R_USER_ID = 5
R_OPCODE = 6
R_CODE = 7
R_REASON = 8
R_DETAIL = 9
# EV_STP
S_MODE = 4
S_TAKER_ORDER_ID = 5
S_MAKER_ORDER_ID = 6
S_USER_ID = 7
S_PRICE = 8
S_QTY = 9
# EV_INSTRUMENT
I_ACTION = 4

# --------------------------------------------------------------------------------------------
# Order statuses and end-state reasons (strings: they go to the database as they are).
# --------------------------------------------------------------------------------------------
NEW = "new"
PARTIALLY_FILLED = "partially_filled"
FILLED = "filled"
CANCELLED = "cancelled"
REJECTED = "rejected"
EXPIRED = "expired"
UNTRIGGERED = "untriggered"
TRIGGERED = "triggered"
STATUSES = (NEW, PARTIALLY_FILLED, FILLED, CANCELLED, REJECTED, EXPIRED, UNTRIGGERED, TRIGGERED)

R_USER = "user"
R_IOC_REMAINDER = "ioc_remainder"
R_FOK_UNFILLABLE = "fok_unfillable"
R_STP = "stp"
R_POST_ONLY = "post_only"
R_GTD_EXPIRED = "gtd_expired"
R_DAY_EXPIRED = "day_expired"
R_HALTED = "halted"
R_NO_LIQUIDITY = "no_liquidity"
R_MAX_QUOTE = "max_quote"
R_INVALID = "invalid"
REASONS = (
    R_USER,
    R_IOC_REMAINDER,
    R_FOK_UNFILLABLE,
    R_STP,
    R_POST_ONLY,
    R_GTD_EXPIRED,
    R_DAY_EXPIRED,
    R_HALTED,
    R_NO_LIQUIDITY,
    R_MAX_QUOTE,
    R_INVALID,
)

# Reject codes (stable names; the API layer maps them to numeric error codes).
POST_ONLY_WOULD_MATCH = "PostOnlyWouldMatch"
INSTRUMENT_HALTED = "InstrumentHalted"
UNKNOWN_INSTRUMENT = "UnknownInstrument"
DUPLICATE_INSTRUMENT = "DuplicateInstrument"
INSTRUMENT_SCALE_CHANGED = "InstrumentScaleChanged"
DUPLICATE_ORDER_ID = "DuplicateOrderId"
UNKNOWN_ORDER = "UnknownOrder"
PRICE_OUTSIDE_BAND = "PriceOutsideBand"
INVALID_PRICE = "InvalidPrice"
INVALID_QUANTITY = "InvalidQuantity"
BELOW_MIN_NOTIONAL = "BelowMinNotional"
INVALID_MAX_QUOTE = "InvalidMaxQuote"
INVALID_FEE = "InvalidFee"
INVALID_TIME_IN_FORCE = "InvalidTimeInForce"
INVALID_EXPIRE_AT = "InvalidExpireAt"
INVALID_ORDER_TYPE = "InvalidOrderType"
INVALID_DISPLAY_QUANTITY = "InvalidDisplayQuantity"
INVALID_STP_MODE = "InvalidStpMode"
FOK_UNFILLABLE = "FokUnfillable"
AMEND_QUANTITY_TOO_LOW = "AmendQuantityTooLow"
INVALID_COMMAND = "InvalidCommand"
REJECT_CODES = (
    POST_ONLY_WOULD_MATCH,
    INSTRUMENT_HALTED,
    UNKNOWN_INSTRUMENT,
    DUPLICATE_INSTRUMENT,
    INSTRUMENT_SCALE_CHANGED,
    DUPLICATE_ORDER_ID,
    UNKNOWN_ORDER,
    PRICE_OUTSIDE_BAND,
    INVALID_PRICE,
    INVALID_QUANTITY,
    BELOW_MIN_NOTIONAL,
    INVALID_MAX_QUOTE,
    INVALID_FEE,
    INVALID_TIME_IN_FORCE,
    INVALID_EXPIRE_AT,
    INVALID_ORDER_TYPE,
    INVALID_DISPLAY_QUANTITY,
    INVALID_STP_MODE,
    FOK_UNFILLABLE,
    AMEND_QUANTITY_TOO_LOW,
    INVALID_COMMAND,
)

# Status reason given to a PLACE that is rejected, by reject code (default R_INVALID).
REJECT_STATUS_REASON = {
    POST_ONLY_WOULD_MATCH: R_POST_ONLY,
    INSTRUMENT_HALTED: R_HALTED,
    FOK_UNFILLABLE: R_FOK_UNFILLABLE,
}


# --------------------------------------------------------------------------------------------
# Command constructors. They only build tuples; all validation happens in the engine.
# --------------------------------------------------------------------------------------------
def place(
    *,
    ts: int,
    symbol: str,
    order_id: int,
    user_id: int,
    is_buy: bool,
    qty: int,
    price: int = 0,
    order_type: int = LIMIT,
    tif: int = GTC,
    expire_at: int = 0,
    flags: int = 0,
    display_qty: int = 0,
    stop_price: int = 0,
    max_quote: int = 0,
    maker_fee_ppm: int = 0,
    taker_fee_ppm: int = 0,
    stp: int = STP_DEFAULT,
) -> tuple:
    """Build a PLACE command (any order type)."""
    return (
        OP_PLACE,
        ts,
        symbol,
        order_id,
        user_id,
        is_buy,
        order_type,
        price,
        qty,
        tif,
        expire_at,
        flags,
        display_qty,
        stop_price,
        max_quote,
        maker_fee_ppm,
        taker_fee_ppm,
        stp,
    )


def limit(
    *,
    ts: int,
    symbol: str,
    order_id: int,
    user_id: int,
    is_buy: bool,
    price: int,
    qty: int,
    **kw,
) -> tuple:
    """Build a PLACE command for a limit order (keyword extras as in `place`)."""
    return place(
        ts=ts,
        symbol=symbol,
        order_id=order_id,
        user_id=user_id,
        is_buy=is_buy,
        price=price,
        qty=qty,
        order_type=LIMIT,
        **kw,
    )


def market(
    *, ts: int, symbol: str, order_id: int, user_id: int, is_buy: bool, qty: int, **kw
) -> tuple:
    """Build a PLACE command for a market order of `qty` lots."""
    return place(
        ts=ts,
        symbol=symbol,
        order_id=order_id,
        user_id=user_id,
        is_buy=is_buy,
        qty=qty,
        order_type=MARKET,
        **kw,
    )


def market_buy_quote(
    *, ts: int, symbol: str, order_id: int, user_id: int, quote_amount: int, **kw
) -> tuple:
    """Build a market buy that spends up to `quote_amount` minor units (fees included)."""
    return place(
        ts=ts,
        symbol=symbol,
        order_id=order_id,
        user_id=user_id,
        is_buy=True,
        qty=0,
        order_type=MARKET,
        max_quote=quote_amount,
        **kw,
    )


def cancel(*, ts: int, order_id: int) -> tuple:
    """Build a CANCEL command: (OP_CANCEL, ts, order_id)."""
    return (OP_CANCEL, ts, order_id)


def amend(
    *,
    ts: int,
    order_id: int,
    price: int | None = None,
    qty: int | None = None,
    max_quote: int | None = None,
) -> tuple:
    """Build an AMEND command: (OP_AMEND, ts, order_id, price, qty, max_quote); None = keep.

    `qty` is the new total quantity (filled included) and must exceed what is already filled.
    """
    return (OP_AMEND, ts, order_id, price, qty, max_quote)


def mass_cancel(*, ts: int, user_id: int, symbol: str | None = None) -> tuple:
    """Build a MASS_CANCEL command: (OP_MASS_CANCEL, ts, user_id, symbol or None)."""
    return (OP_MASS_CANCEL, ts, user_id, symbol)


def expire_due(*, now: int, ts: int | None = None) -> tuple:
    """Build an EXPIRE_DUE command: (OP_EXPIRE_DUE, ts, now); expires every expire_at <= now."""
    return (OP_EXPIRE_DUE, now if ts is None else ts, now)


def halt(*, ts: int, symbol: str) -> tuple:
    """Build a HALT command: (OP_HALT, ts, symbol)."""
    return (OP_HALT, ts, symbol)


def resume(*, ts: int, symbol: str) -> tuple:
    """Build a RESUME command: (OP_RESUME, ts, symbol)."""
    return (OP_RESUME, ts, symbol)


def add_instrument(*, ts: int, instrument) -> tuple:
    """Build an ADD_INSTRUMENT command: (OP_ADD_INSTRUMENT, ts, Instrument)."""
    return (OP_ADD_INSTRUMENT, ts, instrument)


def update_instrument(*, ts: int, instrument, day_expire_at: int | None = None) -> tuple:
    """Build an UPDATE_INSTRUMENT command: (OP_UPDATE_INSTRUMENT, ts, Instrument), the new
    rules of a listed symbol (its tick size, lot size and quote decimals unchanged); with
    `day_expire_at` (its session hours changed), (OP_UPDATE_INSTRUMENT, ts, Instrument,
    day_expire_at): the new expiry of its live DAY orders."""
    if day_expire_at is None:
        return (OP_UPDATE_INSTRUMENT, ts, instrument)
    return (OP_UPDATE_INSTRUMENT, ts, instrument, day_expire_at)

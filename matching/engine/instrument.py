"""Instrument spec: tick/lot sizes, limits, price band, collar, and exact integer money math.

The engine works in integer price ticks, integer quantity lots and integer minor units of the
quote asset. Decimal appears only in the boundary helpers (`price_to_ticks`, `ticks_to_price`,
...). Notional of `price_ticks * qty_lots` in quote minor units is
`price_ticks * qty_lots * K_NUM // K_DEN or 1` where K = tick_size * lot_size *
10**quote_decimals reduced to lowest terms; when K is an integer (K_DEN == 1) this is exact,
otherwise it rounds down (floor), identically for buyer and seller, but never to 0: a fill
worth less than one minor unit (one lot of a cheap coin) costs one. Rounded to 0, such fills
had handed the base asset over for nothing, hundreds of them to one market buy whose budget
they never reduced.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction

from .protocol import STP_CANCEL_RESTING, STP_DEFAULT, STP_MODE_NAMES

PPM = 1_000_000


@dataclass(frozen=True)
class Instrument:
    """Static description of a tradable symbol (passed to Engine or OP_ADD_INSTRUMENT)."""

    symbol: str
    tick_size: str = "0.01"  # price of one tick in quote units (Decimal string)
    lot_size: str = "1"  # quantity of one lot in base units (Decimal string)
    quote_decimals: int = 2  # minor units of quote per unit = 10**quote_decimals
    min_qty: int = 1  # lots; limit and qty-based market/stop orders below it are refused
    min_notional: int = 0  # quote minor units; checked for limit and stop-limit orders
    price_min: int = 1  # absolute band, ticks (inclusive)
    price_max: int = 10**12  # absolute band, ticks (inclusive)
    band_ppm: int = 0  # relative band around the last trade price (0 = off)
    collar_ppm: int = 50_000  # market order protection collar (5%) around best opposite
    stp_default: int = STP_CANCEL_RESTING
    k_num: int = field(init=False, default=0)
    k_den: int = field(init=False, default=1)
    # Decimal places of the texts of prices (the tick size's) and quantities (the lot size's).
    price_places: int = field(init=False, default=0)
    qty_places: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        k = Fraction(Decimal(self.tick_size)) * Fraction(Decimal(self.lot_size))
        k *= 10**self.quote_decimals
        if k <= 0:
            raise ValueError("tick_size and lot_size must be positive")
        if self.stp_default == STP_DEFAULT or not (0 < self.stp_default < len(STP_MODE_NAMES)):
            raise ValueError("stp_default must be a concrete STP mode")
        object.__setattr__(self, "k_num", k.numerator)
        object.__setattr__(self, "k_den", k.denominator)
        object.__setattr__(self, "price_places", decimal_places(self.tick_size))
        object.__setattr__(self, "qty_places", decimal_places(self.lot_size))

    # ---- exact integer money math (also used by the engine) --------------------------------
    def notional(self, price_ticks: int, qty_lots: int) -> int:
        """Quote minor units for qty_lots (>= 1) at price_ticks (floor when K is not an
        integer, but at least 1)."""
        return price_ticks * qty_lots * self.k_num // self.k_den or 1

    # ---- Decimal boundary helpers -----------------------------------------------------------
    def price_to_ticks(self, price: Decimal | str) -> int:
        """Decimal price -> integer ticks; ValueError if not a multiple of tick_size."""
        q = Decimal(price) / Decimal(self.tick_size)
        if q != q.to_integral_value():
            raise ValueError(f"price {price} is not a multiple of tick size {self.tick_size}")
        return int(q)

    def ticks_to_price(self, ticks: int) -> Decimal:
        """Integer ticks -> Decimal price."""
        return Decimal(ticks) * Decimal(self.tick_size)

    def qty_to_lots(self, qty: Decimal | str) -> int:
        """Decimal quantity -> integer lots; ValueError if not a multiple of lot_size."""
        q = Decimal(qty) / Decimal(self.lot_size)
        if q != q.to_integral_value():
            raise ValueError(f"quantity {qty} is not a multiple of lot size {self.lot_size}")
        return int(q)

    def lots_to_qty(self, lots: int) -> Decimal:
        """Integer lots -> Decimal quantity."""
        return Decimal(lots) * Decimal(self.lot_size)

    def minor_to_quote(self, minor: int) -> Decimal:
        """Integer quote minor units -> Decimal amount."""
        return Decimal(minor).scaleb(-self.quote_decimals)

    def quote_to_minor(self, amount: Decimal | str) -> int:
        """Decimal quote amount -> integer minor units; ValueError if finer than precision."""
        q = Decimal(amount).scaleb(self.quote_decimals)
        if q != q.to_integral_value():
            raise ValueError(f"amount {amount} is finer than {self.quote_decimals} decimals")
        return int(q)

    # ---- texts (what clients read: fixed point, never "8.5E-7") --------------------------
    def price_text(self, ticks: int) -> str:
        """Integer ticks -> the price as a decimal string with the tick size's places."""
        return f"{self.ticks_to_price(ticks):.{self.price_places}f}"

    def qty_text(self, lots: int) -> str:
        """Integer lots -> the quantity as a decimal string with the lot size's places."""
        return f"{self.lots_to_qty(lots):.{self.qty_places}f}"

    def quote_text(self, minor: int) -> str:
        """Integer quote minor units -> the amount as a decimal string at the quote precision."""
        return f"{self.minor_to_quote(minor):.{self.quote_decimals}f}"

    def as_tuple(self) -> tuple:
        """Plain-data form (for snapshots and hashing)."""
        return (
            self.symbol,
            self.tick_size,
            self.lot_size,
            self.quote_decimals,
            self.min_qty,
            self.min_notional,
            self.price_min,
            self.price_max,
            self.band_ppm,
            self.collar_ppm,
            self.stp_default,
        )

    @classmethod
    def from_tuple(cls, t: tuple) -> Instrument:
        """Inverse of as_tuple."""
        return cls(*t)


def decimal_places(value: Decimal | str) -> int:
    """Decimal places `value` needs: a tick or lot size's, an amount's ("0.50" -> 1,
    "1E-8" -> 8, "5E+1" -> 0)."""
    exponent = Decimal(value).normalize().as_tuple().exponent
    return -exponent if exponent < 0 else 0


def fee_for(notional: int, rate_ppm: int) -> int:
    """Fee in minor units: a charge (rate > 0) rounds up, a rebate (rate < 0) rounds toward 0."""
    if rate_ppm >= 0:
        return -((-notional * rate_ppm) // PPM)
    return -((notional * -rate_ppm) // PPM)


def buy_cost(k_num: int, k_den: int, price: int, qty: int, rate_ppm: int) -> int:
    """What a buyer pays for qty lots at price: notional + fee (fee may be a negative rebate)."""
    n = price * qty * k_num // k_den or 1
    if rate_ppm >= 0:
        return n - ((-n * rate_ppm) // PPM)
    return n - ((n * -rate_ppm) // PPM)


def affordable_lots(k_num: int, k_den: int, price: int, budget: int, rate_ppm: int) -> int:
    """Largest q >= 0 with buy_cost(price, q, rate) <= budget."""
    if budget <= 0:
        return 0
    denom = price * k_num * (PPM + rate_ppm)
    q = budget * k_den * PPM // denom if denom > 0 else 0
    while buy_cost(k_num, k_den, price, q + 1, rate_ppm) <= budget:
        q += 1
    while q > 0 and buy_cost(k_num, k_den, price, q, rate_ppm) > budget:
        q -= 1
    return q

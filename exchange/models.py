"""The trading core's records. PostgreSQL is the system of record."""

import re
import zoneinfo
from decimal import Decimal

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import RegexValidator
from django.db import models

from matching.engine import decimal_places
from matching.sharding import shard_for_symbol

MONEY = {"max_digits": 30, "decimal_places": 12}


def decimal_plain(value: Decimal | None) -> str:
    """A stored amount without its trailing zeros ("10", not "10.000000000000"; "0", not
    "0E-12"); "-" for none."""
    return "-" if value is None else format(value.normalize(), "f")


class StpMode(models.TextChoices):
    """Self-trade prevention modes; the incoming order's mode decides."""

    CANCEL_RESTING = "cancel_resting", "Cancel resting"
    CANCEL_INCOMING = "cancel_incoming", "Cancel incoming"
    CANCEL_BOTH = "cancel_both", "Cancel both"
    CANCEL_SMALLEST = "cancel_smallest", "Cancel smallest"
    DECREMENT_BOTH = "decrement_both", "Decrement both"
    NONE = "none", "Allow self-trade"


# An asset's code, as the ledger keys balances by it.
ASSET_CODE = re.compile(r"[A-Z0-9]{1,12}")


class Instrument(models.Model):
    """A tradable spot pair with its trading rules; its shard is derived from the symbol."""

    class Status(models.TextChoices):
        TRADING = "trading", "Trading"
        HALTED = "halted", "Halted"
        DELISTED = "delisted", "Delisted"

    symbol = models.CharField(
        max_length=20,
        unique=True,
        validators=[
            RegexValidator(
                r"^[A-Z0-9][A-Z0-9.\-]{0,19}$",
                "Symbols are upper-case letters, digits, '.' and '-'.",
            )
        ],
    )
    base_asset = models.CharField(max_length=12)
    quote_asset = models.CharField(max_length=12)
    base_precision = models.PositiveSmallIntegerField(help_text="Decimal places of quantities.")
    quote_precision = models.PositiveSmallIntegerField(help_text="Decimal places of money.")
    tick_size = models.DecimalField(**MONEY)
    lot_size = models.DecimalField(**MONEY)
    min_quantity = models.DecimalField(**MONEY)
    min_notional = models.DecimalField(**MONEY)
    price_band_pct = models.DecimalField(
        max_digits=6,
        decimal_places=2,
        default=Decimal("10.00"),
        help_text="Limit prices more than this % away from the reference price are refused.",
    )
    market_collar_pct = models.DecimalField(
        max_digits=6,
        decimal_places=2,
        default=Decimal("5.00"),
        help_text="A market order stops filling this % beyond the best opposite price.",
    )
    trades_24_7 = models.BooleanField(default=True)
    session_open = models.TimeField(null=True, blank=True)
    session_close = models.TimeField(null=True, blank=True)
    session_timezone = models.CharField(max_length=64, default="America/New_York")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.TRADING)
    # Staff's reason for the halt or delisting in force (empty while trading): GET /ticker
    # says it to clients that were not connected when the status frame went out.
    status_reason = models.CharField(max_length=200, blank=True, default="")
    default_stp_mode = models.CharField(
        max_length=16, choices=StpMode.choices, default=StpMode.CANCEL_RESTING
    )
    shard = models.PositiveSmallIntegerField(
        editable=False, help_text="Matching shard, from a stable hash of the symbol."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["symbol"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(tick_size__gt=0), name="instrument_tick_gt_0"
            ),
            models.CheckConstraint(condition=models.Q(lot_size__gt=0), name="instrument_lot_gt_0"),
            models.CheckConstraint(
                condition=models.Q(min_quantity__gt=0), name="instrument_min_qty_gt_0"
            ),
            models.CheckConstraint(
                condition=models.Q(min_notional__gte=0), name="instrument_min_notional_gte_0"
            ),
            models.CheckConstraint(
                condition=models.Q(trades_24_7=True)
                | (models.Q(session_open__isnull=False) & models.Q(session_close__isnull=False)),
                name="instrument_session_hours_set",
            ),
        ]

    def __str__(self) -> str:
        return self.symbol

    def save(self, *args, **kwargs) -> None:
        # Its shard is chosen once, when it is listed: its book lives in that shard's engine.
        # Recomputed on every save, an edit made by a process with another MATCHING_SHARDS (an
        # operator scaling out, a manage.py with the default) sent the symbol to a shard that
        # did not hold its book: its orders and cancels waited there for good.
        if self._state.adding:
            self.shard = shard_for_symbol(self.symbol, settings.MATCHING_SHARDS)
        super().save(*args, **kwargs)

    def clean(self) -> None:
        """The rules order entry and the engine rely on (the constraints cover the rest). A
        minimum quantity off the lot size, for one, made every order of the instrument a 500."""
        errors: dict[str, str] = {}
        places = MONEY["decimal_places"]
        for field in ("base_precision", "quote_precision"):
            if getattr(self, field) is not None and getattr(self, field) > places:
                errors[field] = f"At most {places} decimal places (what amounts are stored with)."
        # Said at the field (the database's constraints would name themselves, form-wide).
        for field in ("tick_size", "lot_size", "min_quantity"):
            if getattr(self, field) is not None and getattr(self, field) <= 0:
                errors[field] = "Must be more than 0."
        if self.min_notional is not None and self.min_notional < 0:
            errors["min_notional"] = "Cannot be negative (0: no minimum)."
        lot, minimum = self.lot_size, self.min_quantity
        if lot is not None and lot > 0 and minimum is not None and minimum > 0 and minimum % lot:
            errors["min_quantity"] = f"Must be a multiple of the lot size {lot.normalize():f}."
        for field, value, precision in (
            ("lot_size", lot, self.base_precision),
            ("min_notional", self.min_notional, self.quote_precision),
            # A price is an amount of the quote asset: a finer tick settled a fill of 1 at 0.0099
            # (quote precision 2) for 0.00, the base asset given away.
            ("tick_size", self.tick_size, self.quote_precision),
        ):
            if (
                field not in errors
                and value is not None
                and precision is not None
                and decimal_places(value) > precision
            ):
                errors[field] = f"At most {precision} decimal places (the asset's precision)."
        if self._state.adding:  # fixed once listed: an older row is not judged again
            # The ledger keys balances by the asset's code: "usd" typed for USD had listed a
            # new asset beside it that no one held (and that could then be deposited).
            for field in ("base_asset", "quote_asset"):
                value = getattr(self, field)
                if value and not ASSET_CODE.fullmatch(value):
                    errors[field] = "Upper-case letters and digits only (e.g. USD)."
            if self.base_asset and self.base_asset == self.quote_asset:
                errors["quote_asset"] = "Must differ from the base asset."
        if self.price_band_pct is not None and self.price_band_pct < 0:
            errors["price_band_pct"] = "Cannot be negative (0 turns the band off)."
        if self.market_collar_pct is not None and self.market_collar_pct < 0:
            errors["market_collar_pct"] = "Cannot be negative."
        if self.session_timezone:
            try:
                zoneinfo.ZoneInfo(self.session_timezone)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                errors["session_timezone"] = "Not a time zone name (e.g. America/New_York)."
        opens, closes = self.session_open, self.session_close
        if not self.trades_24_7 and opens is not None and closes is not None and opens >= closes:
            errors["session_close"] = "Must be after the session open."
        if not self.trades_24_7:
            for field, value in (("session_open", opens), ("session_close", closes)):
                if value is None:
                    errors[field] = "Set the session's open and close, or tick trades 24/7."
        if errors:
            raise ValidationError(errors)


class Order(models.Model):
    """An order as placed, and its state as the matching worker last applied it.

    The row is written in `pending_new` by `order_place` (which assigns the id the engine uses)
    and updated by the shard worker's batch transactions. Engine fields (`priority_seq`,
    `remaining_quantity`, `reserve_quantity`, `quote_spent`) are what recovery rebuilds from.
    """

    class Side(models.TextChoices):
        BUY = "buy", "Buy"
        SELL = "sell", "Sell"

    class Type(models.TextChoices):
        LIMIT = "limit", "Limit"
        MARKET = "market", "Market"
        STOP_LOSS = "stop_loss", "Stop-loss (market when triggered)"
        STOP_LIMIT = "stop_limit", "Stop-limit (limit when triggered)"

    class TimeInForce(models.TextChoices):
        GTC = "GTC", "Good till cancelled"
        IOC = "IOC", "Immediate or cancel"
        FOK = "FOK", "Fill or kill"
        GTD = "GTD", "Good till date"
        DAY = "DAY", "Day"

    class Status(models.TextChoices):
        PENDING_NEW = "pending_new", "Pending new"
        NEW = "new", "New"
        PARTIALLY_FILLED = "partially_filled", "Partially filled"
        FILLED = "filled", "Filled"
        CANCELLED = "cancelled", "Cancelled"
        REJECTED = "rejected", "Rejected"
        EXPIRED = "expired", "Expired"
        UNTRIGGERED = "untriggered", "Untriggered stop"
        TRIGGERED = "triggered", "Triggered stop"

    OPEN_STATUSES = (
        Status.PENDING_NEW,
        Status.NEW,
        Status.PARTIALLY_FILLED,
        Status.UNTRIGGERED,
        Status.TRIGGERED,
    )

    # No FK index on user: `order_user_recent` (user, -id) covers it.
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+", db_index=False
    )
    instrument = models.ForeignKey(Instrument, on_delete=models.PROTECT, related_name="orders")
    client_order_id = models.CharField(max_length=64, null=True, blank=True)
    # SHA-256 of the normalized request, so a replayed client_order_id with another body is a 409.
    request_digest = models.CharField(max_length=64, blank=True)
    side = models.CharField(max_length=4, choices=Side.choices)
    order_type = models.CharField(max_length=10, choices=Type.choices)
    time_in_force = models.CharField(max_length=3, choices=TimeInForce.choices)
    price = models.DecimalField(null=True, blank=True, help_text="Limit price.", **MONEY)
    stop_price = models.DecimalField(null=True, blank=True, **MONEY)
    quantity = models.DecimalField(null=True, blank=True, help_text="Total quantity.", **MONEY)
    quote_quantity = models.DecimalField(
        null=True, blank=True, help_text="Market buy by quote amount.", **MONEY
    )
    display_quantity = models.DecimalField(null=True, blank=True, **MONEY)
    post_only = models.BooleanField(default=False)
    post_only_adjust = models.BooleanField(default=False)
    stp_mode = models.CharField(
        max_length=16, choices=StpMode.choices, blank=True, help_text="Blank: instrument default."
    )
    expire_at = models.DateTimeField(null=True, blank=True)
    maker_fee_ppm = models.IntegerField(help_text="Maker rate frozen at placement (ppm).")
    taker_fee_ppm = models.IntegerField(help_text="Taker rate frozen at placement (ppm).")
    held_amount = models.DecimalField(
        default=Decimal(0),
        help_text="What the order may use in all: quote for a buy (its cap), base for a sell.",
        **MONEY,
    )
    hold_remaining = models.DecimalField(
        default=Decimal(0),
        db_default=Decimal(0),
        help_text="Still in the user's hold account for this order (released when it ends).",
        **MONEY,
    )

    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING_NEW)
    # status in OPEN_STATUSES, kept by the worker. It changes once (when the order ends), so the
    # open-order index keys on it instead of on `status`: fills and placement acks, which change
    # status but not is_open, stay HOT updates (no index entry written).
    is_open = models.BooleanField(default=True, db_default=True)
    reason = models.CharField(max_length=32, blank=True, help_text="Why it ended.")
    reject_code = models.CharField(max_length=40, blank=True)
    reject_message = models.CharField(max_length=200, blank=True)
    filled_quantity = models.DecimalField(default=Decimal(0), **MONEY)
    remaining_quantity = models.DecimalField(
        default=Decimal(0), help_text="Open quantity (visible + iceberg reserve).", **MONEY
    )
    reserve_quantity = models.DecimalField(default=Decimal(0), **MONEY)
    cumulative_quote = models.DecimalField(
        default=Decimal(0), help_text="Sum of fill notionals.", **MONEY
    )
    filled_value = models.DecimalField(
        max_digits=60,
        decimal_places=24,
        default=Decimal(0),
        db_default=Decimal(0),
        help_text="Sum of fill price x quantity, exact (a notional is rounded down to the quote's "
        "minor unit): the average price's numerator.",
    )
    fees = models.DecimalField(default=Decimal(0), help_text="Signed; negative = rebate.", **MONEY)
    quote_spent = models.DecimalField(
        default=Decimal(0), help_text="Buys: notional + fees, capped by the hold.", **MONEY
    )
    priority_seq = models.BigIntegerField(null=True, blank=True)
    engine_max_quote = models.BigIntegerField(
        null=True,
        blank=True,
        help_text="The engine's quote budget (minor units) as last applied; recovery restores it.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["user", "client_order_id"],
                condition=models.Q(client_order_id__isnull=False),
                name="order_client_order_id_unique_per_user",
            ),
            models.CheckConstraint(
                condition=models.Q(filled_quantity__gte=0), name="order_filled_gte_0"
            ),
            models.CheckConstraint(
                condition=models.Q(remaining_quantity__gte=0), name="order_remaining_gte_0"
            ),
            models.CheckConstraint(condition=models.Q(held_amount__gte=0), name="order_hold_gte_0"),
            models.CheckConstraint(
                condition=models.Q(hold_remaining__gte=0), name="order_hold_remaining_gte_0"
            ),
        ]
        indexes = [
            models.Index(fields=["user", "-id"], name="order_user_recent"),
            # Recovery's scan of live orders (it sorts them by priority_seq, which the engine
            # assigns on the first update and an amend may change: not indexed, to stay HOT).
            models.Index(
                fields=["instrument"], condition=models.Q(is_open=True), name="order_open"
            ),
            # Which shards hold a GTD/DAY order due (matching.selectors.shards_with_orders_due,
            # every second): only open orders that can expire, so fills stay HOT updates.
            models.Index(
                fields=["instrument", "expire_at"],
                condition=models.Q(is_open=True, time_in_force__in=["GTD", "DAY"]),
                name="order_open_expiring",
            ),
        ]

    def __str__(self) -> str:
        # "order 42: buy 10 AAPL (new)"; the symbol only when the instrument is already loaded
        # (a label must not cost a query per order in a list).
        symbol = (
            self.instrument.symbol
            if Order.instrument.is_cached(self)
            else f"instrument {self.instrument_id}"
        )
        if self.quantity is not None:
            amount = f"{decimal_plain(self.quantity)} {symbol}"
        else:  # a market buy by quote amount
            amount = f"{symbol} for {decimal_plain(self.quote_quantity)}"
        return f"order {self.pk}: {self.side} {amount} ({self.status})"

    @property
    def avg_price(self) -> Decimal | None:
        """The fills' volume-weighted average price, exact (from cumulative_quote for an
        order filled before filled_value was kept)."""
        if not self.filled_quantity:
            return None
        return (self.filled_value or self.cumulative_quote) / self.filled_quantity


class Trade(models.Model):
    """One execution between a resting (maker) and an incoming (taker) order."""

    # FK indexes on instrument and the users are covered by the composite indexes below.
    instrument = models.ForeignKey(
        Instrument, on_delete=models.PROTECT, related_name="trades", db_index=False
    )
    engine_trade_seq = models.BigIntegerField(help_text="The shard engine's trade sequence.")
    price = models.DecimalField(**MONEY)
    quantity = models.DecimalField(**MONEY)
    quote_quantity = models.DecimalField(help_text="price x quantity in the quote asset.", **MONEY)
    maker_order = models.ForeignKey(Order, on_delete=models.PROTECT, related_name="+")
    taker_order = models.ForeignKey(Order, on_delete=models.PROTECT, related_name="+")
    maker_user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+", db_index=False
    )
    taker_user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+", db_index=False
    )
    taker_side = models.CharField(max_length=4, choices=Order.Side.choices)
    maker_fee = models.DecimalField(help_text="Signed; negative = rebate paid.", **MONEY)
    taker_fee = models.DecimalField(**MONEY)
    executed_at = models.DateTimeField()
    executed_at_ns = models.BigIntegerField(help_text="Engine time stamp, ns since the epoch.")

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["instrument", "engine_trade_seq"], name="trade_engine_seq_unique"
            ),
        ]
        indexes = [
            models.Index(fields=["instrument", "-id"], name="trade_instrument_recent"),
            # Time ranges of one instrument: candles and the 24-hour ticker.
            models.Index(fields=["instrument", "executed_at"], name="trade_instrument_time"),
            models.Index(fields=["maker_user", "-id"], name="trade_maker_recent"),
            models.Index(fields=["taker_user", "-id"], name="trade_taker_recent"),
        ]

    def __str__(self) -> str:
        return f"trade {self.pk}: {decimal_plain(self.quantity)} @ {decimal_plain(self.price)}"

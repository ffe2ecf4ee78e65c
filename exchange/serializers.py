"""Request parsing and response shapes of the trading API.

Prices, quantities and money travel as JSON strings at the instrument's precision ("150.45");
a JSON number for them is refused with NumberNotString, so no client loses precision to floats.
"""

import copy
import re
from decimal import Decimal, InvalidOperation

from drf_spectacular.utils import extend_schema_field, inline_serializer
from rest_framework import serializers

from exchange.errors import echoed, rejection_body, trading_error
from exchange.models import MONEY, Instrument, Order, StpMode, Trade, decimal_plain
from exchange.order_rules import OrderRequest
from exchange.timestamps import iso_z
from matching.engine import decimal_places

# ASCII digits only: \d (and Decimal) would read Arabic-Indic digits as 10 for "\u0661\u0660".
DECIMAL_INTEGER_DIGITS, DECIMAL_FRACTION_DIGITS = 24, 18
DECIMAL_STRING = re.compile(r"^[0-9]{1,24}(\.[0-9]{1,18})?\Z")
PLAIN_DECIMAL = re.compile(r"^([0-9]+)(?:\.([0-9]+))?\Z")  # DECIMAL_STRING without the limits
# Amount columns hold 30 digits, 12 of them after the point: every amount stays below 10^18.
AMOUNT_LIMIT = Decimal(10) ** (MONEY["max_digits"] - MONEY["decimal_places"])
CLIENT_ORDER_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,64}\Z")
# An ISO 8601 date-time in ASCII digits, nothing after it. Django's parser alone read any
# Unicode digit (\d: "٢٠٢٦-..." was 2026) and stopped at a NUL ("...Z\x00junk" was accepted).
ISO_DATETIME = re.compile(
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}"
    r"(?:[Tt ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:[.,][0-9]{1,9})?)?)?"
    r"(?:[Zz]|[+-][0-9]{2}(?::?[0-9]{2})?)?\Z"
)
ISO_DATETIME_FORMAT = "YYYY-MM-DDThh:mm[:ss[.ffffff]][Z|+hh:mm|-hh:mm]"
# An order's expiry names its time and zone: a value without them (a date, a local time) was
# read as UTC, and an order meant to end at a New York close ended hours off.
ISO_INSTANT = re.compile(
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}"
    r"[Tt ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:[.,][0-9]{1,9})?)?"
    r"(?:[Zz]|[+-][0-9]{2}(?::?[0-9]{2})?)\Z"
)
ISO_INSTANT_FORMAT = "YYYY-MM-DDThh:mm[:ss[.ffffff]](Z|+hh:mm|-hh:mm)"


class TextOnly(serializers.CharField):
    """A CharField that takes a JSON string only (DRF's turned the number 5 into "5")."""

    def to_internal_value(self, data) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class Choice(serializers.ChoiceField):
    """A ChoiceField whose error names the choices and shows at most 60 characters of the value
    (DRF's repeated the whole value, however long)."""

    def to_internal_value(self, data):
        try:
            return super().to_internal_value(data)
        except serializers.ValidationError:
            raise serializers.ValidationError(
                f"{echoed(data)} is not one of: {', '.join(map(str, self.choices))}"
            ) from None


class IsoDateTime(serializers.DateTimeField):
    """DRF's DateTimeField, taking only an instant as ISO_INSTANT writes it: a date and time
    with its zone, as sent (no surrounding whitespace, as for the decimal fields)."""

    # Whatever DRF's parser refused (a number, month 13, an offset of +99:00) had been told
    # DRF's format, "[+HH:MM|-HH:MM|Z]": the zone optional, where this field requires it.
    default_error_messages = {
        "invalid": f"Datetime has wrong format. Use one of these formats instead: "
        f"{ISO_INSTANT_FORMAT}, a real date and time (e.g. 2026-11-25T14:22:12Z)."
    }

    def to_internal_value(self, value):
        if isinstance(value, str):
            if not ISO_INSTANT.match(value):
                self.fail("invalid")
            value = value.upper()  # RFC 3339 allows "t" and "z"; Django's parser does not
        return super().to_internal_value(value)


class StrictBoolean(serializers.BooleanField):
    """A JSON true or false; DRF's field also took "true", 1, "on" and the like."""

    def to_internal_value(self, data) -> bool:
        if data is True or data is False:
            return data
        raise trading_error(
            "InvalidParameter",
            f"{self.field_name} must be true or false, got {echoed(data)}",
            field=self.field_name,
        )


def _refuse_past_digit_limits(name: str, data: str) -> None:
    """A well-formed decimal past DECIMAL_STRING's digit limits is told which limit (it had been
    told to be a decimal string "like 150.45", which it was); anything else returns."""
    digits = PLAIN_DECIMAL.match(data)
    if digits is None:
        return
    if len(digits[1]) > DECIMAL_INTEGER_DIGITS:
        # Without its leading zeros first: int() refuses a string of over 4,300 digits.
        significant = digits[1].lstrip("0")
        if len(significant) <= DECIMAL_INTEGER_DIGITS and int(significant or "0") < AMOUNT_LIMIT:
            raise trading_error(
                "InvalidNumber",
                f"{name} has more than {DECIMAL_INTEGER_DIGITS} digits before the decimal "
                "point: leave out the leading zeros",
                field=name,
            )
        raise trading_error("NumberTooLarge", f"{name} must be below {AMOUNT_LIMIT:f}", field=name)
    if len(digits[2] or "") > DECIMAL_FRACTION_DIGITS:
        raise trading_error(
            "AmountTooPrecise",
            f"{name} has more than {DECIMAL_FRACTION_DIGITS} decimal places",
            field=name,
        )


def _fixed_point(number: int | float) -> str:
    """A JSON number as the decimal string to send instead, in fixed point as the API takes it
    (0.00000085 had been told to send "8.5e-07", which the API refuses as an exponent), cut to
    60 characters as `echoed` cuts a value (a number may have 4,300 digits)."""
    text = f"{Decimal(repr(number)):f}" if isinstance(number, float) else str(number)
    return text if len(text) <= 60 else text[:57] + "..."


@extend_schema_field(  # the schema's pattern is DECIMAL_STRING's, in ECMAScript's syntax
    {
        "type": "string",
        "format": "decimal",
        "pattern": r"^[0-9]{1,24}(\.[0-9]{1,18})?$",
        "example": "150.45",
    }
)
class DecimalString(serializers.Field):
    """A non-negative decimal given as a JSON string, e.g. "150.45"."""

    def to_internal_value(self, data) -> Decimal:
        name = self.field_name
        if isinstance(data, bool):  # not a number either: said "such as \"True\""
            raise trading_error(
                "InvalidNumber",
                f'{name} must be a non-negative decimal string like "150.45", got {echoed(data)}',
                field=name,
            )
        if isinstance(data, int | float):
            raise trading_error(
                "NumberNotString",
                f'{name} must be a JSON string such as "{_fixed_point(data)}", not a number '
                "(numbers lose precision)",
                field=name,
            )
        # As given, ASCII digits only: " 90.00" or "1\u00a0" (a no-break space) had been
        # trimmed and taken, where the contract is a decimal string.
        if not isinstance(data, str) or not DECIMAL_STRING.match(data):
            if isinstance(data, str):
                _refuse_past_digit_limits(name, data)
            raise trading_error(
                "InvalidNumber",
                f'{name} must be a non-negative decimal string like "150.45" (ASCII digits, no '
                f"spaces), got {echoed(data)}",
                field=name,
            )
        try:
            value = Decimal(data)
        except InvalidOperation:  # pragma: no cover - the pattern already guarantees a decimal
            raise trading_error("InvalidNumber", f"{name} is not a number", field=name) from None
        if value >= AMOUNT_LIMIT:
            raise trading_error(
                "NumberTooLarge", f"{name} must be below {AMOUNT_LIMIT:f}", field=name
            )
        return value

    def to_representation(self, value) -> str:
        return str(value)


def refuse_unknown_fields(serializer: serializers.Serializer, data) -> None:
    if not isinstance(data, dict):
        raise trading_error("MalformedRequest", "the request body must be a JSON object")
    refuse_unknown_names(data, serializer.fields)


def refuse_unknown_names(data: dict, accepted) -> None:
    """UnexpectedParameter naming the first field of `data` (alphabetically) not in
    `accepted`."""
    unknown = sorted(set(data) - set(accepted))
    if unknown:
        raise trading_error(
            "UnexpectedParameter",
            f"unknown field {echoed(unknown[0])}; accepted: {', '.join(sorted(accepted))}",
            field=unknown[0],
        )


class RequestBodySerializer(serializers.Serializer):
    """A serializer that checks a request body: once `is_valid` has run, it lets go of its bound
    fields. DRF links a serializer and its fields both ways (`fields`, each field's `parent`),
    which left every order request's fields to the cyclic garbage collector; a later use of
    `fields` binds them again."""

    def is_valid(self, *, raise_exception: bool = False) -> bool:
        # A body that is not an object (null, a list): DRF said "No data provided" or "This
        # field may not be null" as an InvalidParameter of no field.
        if not isinstance(self.initial_data, dict):
            raise trading_error("MalformedRequest", "the request body must be a JSON object")
        try:
            return super().is_valid(raise_exception=raise_exception)
        finally:
            self.__dict__.pop("fields", None)  # DRF's cached_property


class OrderPlaceSerializer(RequestBodySerializer):
    # As sent: "AAPL\n" had been trimmed and placed on AAPL (a number, 5, taken as "5").
    symbol = TextOnly(max_length=20, trim_whitespace=False)
    side = Choice(choices=Order.Side.choices)
    order_type = Choice(choices=Order.Type.choices)
    quantity = DecimalString(required=False, help_text='Base quantity, e.g. "10".')
    quote_quantity = DecimalString(required=False, help_text="Market buy: quote to spend.")
    price = DecimalString(required=False, help_text="Limit price (limit orders).")
    stop_price = DecimalString(required=False, help_text="Trigger (stop orders).")
    limit_price = DecimalString(required=False, help_text="Limit price (stop-limit orders).")
    time_in_force = Choice(choices=Order.TimeInForce.choices, default=Order.TimeInForce.GTC)
    expire_at = IsoDateTime(required=False, help_text="GTD expiry (ISO 8601).")
    post_only = StrictBoolean(default=False)
    post_only_adjust = StrictBoolean(default=False)
    display_quantity = DecimalString(required=False, help_text="Iceberg visible quantity.")
    stp_mode = Choice(choices=StpMode.choices, required=False)
    client_order_id = TextOnly(max_length=64, required=False, trim_whitespace=False)

    def get_fields(self) -> dict:
        # DRF deep-copies each declared field for every serializer instance, which is half the
        # cost of checking an order request; a shallow copy is enough (binding a field to this
        # serializer sets attributes on the copy, nothing shared is mutated).
        return {name: copy.copy(field) for name, field in self._declared_fields.items()}

    def to_internal_value(self, data):
        refuse_unknown_fields(self, data)
        return super().to_internal_value(data)

    def validate_client_order_id(self, value: str) -> str:
        if not CLIENT_ORDER_ID.match(value):
            raise serializers.ValidationError("use 1-64 characters from A-Z a-z 0-9 . _ : -")
        return value

    def validate(self, attrs: dict) -> dict:
        if attrs.get("order_type") == Order.Type.STOP_LIMIT:
            if "price" in attrs:
                raise trading_error(
                    "UnexpectedParameter",
                    "a stop_limit order takes limit_price and stop_price, not price",
                    field="price",
                )
            attrs["price"] = attrs.pop("limit_price", None)
        elif "limit_price" in attrs:
            raise trading_error(
                "UnexpectedParameter",
                "limit_price is only for stop_limit orders (use price)",
                field="limit_price",
            )
        return attrs

    def to_request(self) -> OrderRequest:
        data = dict(self.validated_data)
        return OrderRequest(**{k: v for k, v in data.items() if v is not None})


class OrderAmendSerializer(RequestBodySerializer):
    quantity = DecimalString(required=False, help_text="New total quantity (fills included).")
    price = DecimalString(required=False, help_text="New limit price (loses time priority).")

    def to_internal_value(self, data):
        refuse_unknown_fields(self, data)
        return super().to_internal_value(data)


def _fmt(value: Decimal | None, step: Decimal) -> str | None:
    if value is None:
        return None
    return f"{value:.{decimal_places(step)}f}"


def price_str(instrument: Instrument, value: Decimal | None) -> str | None:
    return _fmt(value, instrument.tick_size)


def mid_str(instrument: Instrument, value: Decimal | None) -> str | None:
    """A mid price: half a tick needs one decimal place more than a price (fixed, as prices)."""
    return _fmt(value, instrument.tick_size / 10)


def quantity_str(instrument: Instrument, value: Decimal | None) -> str | None:
    return _fmt(value, instrument.lot_size)


def money_str(instrument: Instrument, value: Decimal | None) -> str | None:
    return _fmt(value, Decimal(1).scaleb(-instrument.quote_precision))


class FillSerializer(serializers.Serializer):
    trade_id = serializers.IntegerField()
    price = serializers.CharField()
    quantity = serializers.CharField()
    fee = serializers.CharField()
    liquidity = serializers.ChoiceField(choices=["maker", "taker"])


class OrderSerializer(serializers.Serializer):
    order_id = serializers.IntegerField()
    client_order_id = serializers.CharField(allow_null=True)
    symbol = serializers.CharField()
    side = serializers.CharField()
    order_type = serializers.CharField()
    time_in_force = serializers.CharField()
    status = serializers.ChoiceField(choices=Order.Status.choices)
    reason = serializers.CharField(allow_null=True)
    price = serializers.CharField(allow_null=True)
    stop_price = serializers.CharField(allow_null=True)
    quantity = serializers.CharField(allow_null=True)
    quote_quantity = serializers.CharField(allow_null=True)
    display_quantity = serializers.CharField(allow_null=True)
    post_only = serializers.BooleanField()
    post_only_adjust = serializers.BooleanField()
    stp_mode = serializers.CharField(allow_null=True)
    expire_at = serializers.DateTimeField(allow_null=True)
    filled_quantity = serializers.CharField()
    remaining_quantity = serializers.CharField()
    cancelled_quantity = serializers.CharField(
        allow_null=True,
        help_text="What will never fill: cancelled, expired or rejected, or taken off by "
        "self-trade prevention (decrement_both); quantity = filled + remaining + cancelled",
    )
    rejection = inline_serializer(
        "OrderRejection",
        fields={
            "error": serializers.CharField(),
            "code": serializers.IntegerField(),
            "message": serializers.CharField(),
        },
        allow_null=True,
        help_text="A rejected order's error (as its placement's 400): why the matching engine "
        "refused it; null otherwise",
    )
    avg_price = serializers.CharField(allow_null=True)
    cumulative_quote = serializers.CharField()
    fees = serializers.CharField()
    maker_fee_ppm = serializers.IntegerField(
        help_text="Maker rate frozen when it was placed, parts per million (negative: rebate)."
    )
    taker_fee_ppm = serializers.IntegerField(help_text="Taker rate frozen when it was placed.")
    held_amount = serializers.CharField()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()
    fills = FillSerializer(many=True, required=False)


def _cancelled_quantity(order: Order) -> Decimal | None:
    """The part of the order that will never fill. An open order's is what self-trade
    prevention took off (decrement_both); an ended order's is all it did not fill. None for a
    market buy by quote amount (it has no quantity)."""
    if order.quantity is None:
        return None
    still_open = order.remaining_quantity if order.status in Order.OPEN_STATUSES else 0
    return order.quantity - order.filled_quantity - still_open


def order_representation(order: Order, fills: list[dict] | None = None) -> dict:
    """The API's view of an order (the shape of OrderSerializer, built directly: it is on the
    order path), numbers as strings at the instrument's precision."""
    instrument = order.instrument
    avg = order.avg_price
    data = {
        "order_id": order.pk,
        "client_order_id": order.client_order_id,
        "symbol": instrument.symbol,
        "side": order.side,
        "order_type": order.order_type,
        "time_in_force": order.time_in_force,
        "status": order.status,
        "reason": order.reason or None,
        "price": price_str(instrument, order.price),
        "stop_price": price_str(instrument, order.stop_price),
        "quantity": quantity_str(instrument, order.quantity),
        "quote_quantity": money_str(instrument, order.quote_quantity),
        # The slice shown is never more than the order: an iceberg amended below its display
        # quantity shows its whole quantity (the engine keeps the display for a later increase).
        "display_quantity": quantity_str(
            instrument,
            None if order.display_quantity is None else min(order.display_quantity, order.quantity),
        ),
        "post_only": order.post_only,
        "post_only_adjust": order.post_only_adjust,
        "stp_mode": order.stp_mode or None,
        "expire_at": iso_z(order.expire_at),
        "filled_quantity": quantity_str(instrument, order.filled_quantity),
        "remaining_quantity": quantity_str(instrument, order.remaining_quantity),
        "cancelled_quantity": quantity_str(instrument, _cancelled_quantity(order)),
        "rejection": rejection_body(order.reject_code, order.reject_message),
        # The average carries four more places than the tick, so it is not rounded to a tick.
        "avg_price": _fmt(avg, instrument.tick_size.normalize().scaleb(-4)) if avg else None,
        "cumulative_quote": money_str(instrument, order.cumulative_quote),
        "fees": money_str(instrument, order.fees),
        # The rates its fills pay: a tier change applies to orders placed after it only.
        "maker_fee_ppm": order.maker_fee_ppm,
        "taker_fee_ppm": order.taker_fee_ppm,
        "held_amount": (
            money_str(instrument, order.held_amount)
            if order.side == Order.Side.BUY
            else quantity_str(instrument, order.held_amount)
        ),
        "created_at": iso_z(order.created_at),
        "updated_at": iso_z(order.updated_at),
    }
    if fills is not None:
        data["fills"] = [
            {
                "trade_id": int(fill["trade_id"]),
                "price": price_str(instrument, fill["price"]),
                "quantity": quantity_str(instrument, fill["quantity"]),
                "fee": money_str(instrument, fill["fee"]),
                "liquidity": fill["liquidity"],
            }
            for fill in fills
        ]
    return data


class UserFillSerializer(serializers.Serializer):
    trade_id = serializers.IntegerField()
    order_id = serializers.IntegerField()
    symbol = serializers.CharField()
    side = serializers.CharField()
    price = serializers.CharField()
    quantity = serializers.CharField()
    quote_quantity = serializers.CharField()
    fee = serializers.CharField()
    liquidity = serializers.CharField()
    executed_at = serializers.DateTimeField()


def user_fill_representations(trade: Trade, user) -> list[dict]:
    """The user's fills in `trade`: one, or two for a self-trade (STP mode none), its taker's
    then its maker's (showing only the maker's hid the taker order's fill and fee)."""
    sides = [is_maker for is_maker in (False, True) if _fill_user_id(trade, is_maker) == user.pk]
    return [_fill_representation(trade, is_maker) for is_maker in sides]


def _fill_user_id(trade: Trade, is_maker: bool) -> int:
    return trade.maker_user_id if is_maker else trade.taker_user_id


def _fill_representation(trade: Trade, is_maker: bool) -> dict:
    instrument = trade.instrument
    taker_side = trade.taker_side
    side = taker_side if not is_maker else ("sell" if taker_side == "buy" else "buy")
    return {
        "trade_id": trade.pk,
        "order_id": trade.maker_order_id if is_maker else trade.taker_order_id,
        "symbol": instrument.symbol,
        "side": side,
        "price": price_str(instrument, trade.price),
        "quantity": quantity_str(instrument, trade.quantity),
        "quote_quantity": money_str(instrument, trade.quote_quantity),
        "fee": money_str(instrument, trade.maker_fee if is_maker else trade.taker_fee),
        "liquidity": "maker" if is_maker else "taker",
        "executed_at": trade.executed_at,
    }


class PublicTradeSerializer(serializers.Serializer):
    trade_id = serializers.IntegerField()
    price = serializers.CharField()
    quantity = serializers.CharField()
    taker_side = serializers.CharField()
    executed_at = serializers.DateTimeField()
    executed_at_ns = serializers.IntegerField()


def public_trade_representation(trade: Trade) -> dict:
    instrument = trade.instrument
    return {
        "trade_id": trade.pk,
        "price": price_str(instrument, trade.price),
        "quantity": quantity_str(instrument, trade.quantity),
        "taker_side": trade.taker_side,
        "executed_at": trade.executed_at,
        "executed_at_ns": trade.executed_at_ns,
    }


class InstrumentSerializer(serializers.ModelSerializer):
    tick_size = serializers.SerializerMethodField()
    lot_size = serializers.SerializerMethodField()
    min_quantity = serializers.SerializerMethodField()
    min_notional = serializers.SerializerMethodField()
    price_band_pct = serializers.SerializerMethodField()
    market_collar_pct = serializers.SerializerMethodField()

    class Meta:
        model = Instrument
        fields = [
            "symbol",
            "base_asset",
            "quote_asset",
            "base_precision",
            "quote_precision",
            "tick_size",
            "lot_size",
            "min_quantity",
            "min_notional",
            "price_band_pct",
            "market_collar_pct",
            "trades_24_7",
            "session_open",
            "session_close",
            "session_timezone",
            "status",
            "default_stp_mode",
            "shard",
        ]

    def get_tick_size(self, obj) -> str:
        return decimal_plain(obj.tick_size)

    def get_lot_size(self, obj) -> str:
        return decimal_plain(obj.lot_size)

    def get_min_quantity(self, obj) -> str:
        return decimal_plain(obj.min_quantity)

    def get_min_notional(self, obj) -> str:
        return money_str(obj, obj.min_notional)

    def get_price_band_pct(self, obj) -> str:
        return decimal_plain(obj.price_band_pct)

    def get_market_collar_pct(self, obj) -> str:
        return decimal_plain(obj.market_collar_pct)

"""Test data for the worker tests: users, instruments and orders stored as `order_place` does.

`order_row_place` writes the Order row in pending_new, funds and holds what it may use, and
enqueues its place command in one transaction (`exchange.services.order_place` does the same
with full validation).
"""

import datetime as dt
import uuid
from decimal import ROUND_CEILING, Decimal

from django.db import transaction

from accounts.ledger import funds_deposit, funds_hold
from exchange.models import Instrument, Order
from exchange.services import instrument_list
from matching.command_codec import datetime_to_ns
from matching.engine import protocol as p
from matching.instruments import engine_instrument
from matching.services import command_enqueue

MAKER_FEE_PPM = 1000
TAKER_FEE_PPM = 2000


def instrument_create(*, listed: bool = True, **fields) -> Instrument:
    """An instrument with a unique symbol (tick 0.01, lot 1); `listed` also enqueues its
    add_instrument command through the instrument service."""
    symbol = fields.pop("symbol", None) or f"T{uuid.uuid4().hex[:8].upper()}"
    values = {
        "base_asset": symbol[:12],
        "quote_asset": "USD",
        "base_precision": 0,
        "quote_precision": 2,
        "tick_size": Decimal("0.01"),
        "lot_size": Decimal("1"),
        "min_quantity": Decimal("1"),
        "min_notional": Decimal("0"),
        "price_band_pct": Decimal("50.00"),
        **fields,
    }
    with transaction.atomic():
        instrument = Instrument.objects.create(symbol=symbol, **values)
        if listed:
            instrument_list(instrument=instrument)
    return instrument


def order_row_place(
    *,
    user,
    instrument: Instrument,
    side: str,
    quantity: str | Decimal,
    price: str | Decimal | None = None,
    order_type: str = "limit",
    time_in_force: str = "GTC",
    post_only: bool = False,
    expire_at: dt.datetime | None = None,
    maker_fee_ppm: int = MAKER_FEE_PPM,
    stop_price: str | Decimal | None = None,
) -> Order:
    """Store a pending_new order and its place command in one transaction (a stop_limit or
    stop_loss order with its `stop_price`)."""
    spec = engine_instrument(instrument)
    quantity = Decimal(quantity)
    price = None if price is None else Decimal(price)
    stop_price = None if stop_price is None else Decimal(stop_price)
    is_buy = side == "buy"
    max_quote = 0
    held = quantity
    if is_buy:
        notional = (price or Decimal(0)) * quantity * Decimal("1.01")
        held = notional.quantize(Decimal("0.01"), rounding=ROUND_CEILING)
        max_quote = max(spec.quote_to_minor(held), 1)
    with transaction.atomic():
        order = Order.objects.create(
            user=user,
            instrument=instrument,
            side=side,
            order_type=order_type,
            time_in_force=time_in_force,
            price=price,
            quantity=quantity,
            post_only=post_only,
            expire_at=expire_at,
            stop_price=stop_price,
            maker_fee_ppm=maker_fee_ppm,
            taker_fee_ppm=TAKER_FEE_PPM,
            held_amount=held,
            hold_remaining=held,
            remaining_quantity=quantity,
        )
        # The user is funded with exactly what the order holds, then the hold is taken.
        asset = instrument.quote_asset if is_buy else instrument.base_asset
        if held:
            funds_deposit(user=user, asset=asset, amount=held, memo="test funds")
            funds_hold(user=user, asset=asset, amount=held, order_id=order.pk)
        command_enqueue(
            shard=instrument.shard,
            kind="place",
            payload={
                "symbol": instrument.symbol,
                "order_id": order.pk,
                "user_id": user.pk,
                "is_buy": is_buy,
                "order_type": {
                    "limit": p.LIMIT,
                    "market": p.MARKET,
                    "stop_limit": p.STOP_LIMIT,
                    "stop_loss": p.STOP_MARKET,
                }[order_type],
                "price": 0 if price is None else spec.price_to_ticks(price),
                "qty": spec.qty_to_lots(quantity),
                "tif": {"GTC": p.GTC, "IOC": p.IOC, "FOK": p.FOK, "GTD": p.GTD, "DAY": p.DAY}[
                    time_in_force
                ],
                "expire_at": datetime_to_ns(expire_at) if expire_at else 0,
                "flags": p.POST_ONLY if post_only else 0,
                "display_qty": 0,
                "stop_price": 0 if stop_price is None else spec.price_to_ticks(stop_price),
                "max_quote": max_quote,
                "maker_fee_ppm": maker_fee_ppm,
                "taker_fee_ppm": TAKER_FEE_PPM,
                "stp": 0,
            },
            order_id=order.pk,
            user_id=user.pk,
        )
    return order


def order_cancel_enqueue(order: Order) -> None:
    """Enqueue a cancel of `order` (as order_cancel does)."""
    with transaction.atomic():
        command_enqueue(
            shard=order.instrument.shard,
            kind="cancel",
            payload={"order_id": order.pk},
            order_id=order.pk,
            user_id=order.user_id,
        )

"""Test data of the fee-tier tests: the shipped tiers, users, instruments and stored orders."""

import datetime as dt
import uuid
from decimal import Decimal

from accounts.fee_tiers import fee_rates_cache_clear
from accounts.models import FeeTier, User
from exchange.models import Instrument, Order, Trade
from exchange.tests.api_client import make_user

# The tiers the data migration ships (the rates; the thresholds are ours).
SHIPPED_TIERS = [
    ("Retail", Decimal("0"), Decimal("0.1000"), Decimal("0.2000")),
    ("Volume 1", Decimal("1000000"), Decimal("-0.0100"), Decimal("0.1500")),
    ("Volume 2", Decimal("10000000"), Decimal("-0.0200"), Decimal("0.1200")),
    ("Volume 3", Decimal("50000000"), Decimal("-0.0300"), Decimal("0.1000")),
]


def ensure_shipped_tiers() -> dict[str, FeeTier]:
    """The shipped tiers by name, recreated if a transactional test's flush emptied the table."""
    tiers = {}
    for name, volume, maker, taker in SHIPPED_TIERS:
        tiers[name], _ = FeeTier.objects.update_or_create(
            name=name,
            defaults={
                "min_volume_30d": volume,
                "maker_fee_pct": maker,
                "taker_fee_pct": taker,
                "min_uptime_pct": None,
            },
        )
    fee_rates_cache_clear()
    return tiers


def new_user(prefix: str = "fees") -> User:
    """A user with no money (fee tiers need none)."""
    return make_user(prefix, funds={})


def new_instrument(**overrides) -> Instrument:
    """A 24/7 USD instrument with a unique symbol (stored only: no engine is involved)."""
    fields = {
        "symbol": f"F{uuid.uuid4().hex[:8].upper()}",
        "base_asset": "TST",
        "quote_asset": "USD",
        "base_precision": 0,
        "quote_precision": 2,
        "tick_size": Decimal("0.01"),
        "lot_size": Decimal("1"),
        "min_quantity": Decimal("1"),
        "min_notional": Decimal("1.00"),
    }
    fields.update(overrides)
    return Instrument.objects.create(**fields)


def resting_order(
    *,
    user: User,
    instrument: Instrument,
    side: str,
    price: str,
    quantity: str = "10",
    status: str = Order.Status.NEW,
) -> Order:
    """An order row as the worker leaves a resting limit order."""
    is_open = status in Order.OPEN_STATUSES
    return Order.objects.create(
        user=user,
        instrument=instrument,
        side=side,
        order_type=Order.Type.LIMIT,
        time_in_force=Order.TimeInForce.GTC,
        price=Decimal(price),
        quantity=Decimal(quantity),
        remaining_quantity=Decimal(quantity) if is_open else Decimal(0),
        maker_fee_ppm=1_000,
        taker_fee_ppm=2_000,
        status=status,
        is_open=is_open,
    )


def trade(instrument, maker, taker, executed_at: dt.datetime, price: str, qty: str) -> Trade:
    """A trade row as the worker writes it (fees left at 0: volume is what matters here)."""
    sell = resting_order(user=maker, instrument=instrument, side="sell", price=price)
    buy = resting_order(user=taker, instrument=instrument, side="buy", price=price)
    return Trade.objects.create(
        instrument=instrument,
        engine_trade_seq=Trade.objects.filter(instrument=instrument).count() + 1,
        price=Decimal(price),
        quantity=Decimal(qty),
        quote_quantity=Decimal(price) * Decimal(qty),
        maker_order=sell,
        taker_order=buy,
        maker_user=maker,
        taker_user=taker,
        taker_side=Order.Side.BUY,
        maker_fee=Decimal("0"),
        taker_fee=Decimal("0"),
        executed_at=executed_at,
        executed_at_ns=int(executed_at.timestamp() * 1_000_000_000),
    )


def at(text: str) -> dt.datetime:
    """An aware UTC instant from ISO text."""
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC)

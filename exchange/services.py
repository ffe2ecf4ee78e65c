"""Writes of the trading core. Each public service owns its transaction."""

from decimal import Decimal

from django.contrib.auth import get_user_model
from django.db import transaction

from exchange.models import Instrument

DEMO_INSTRUMENTS = [
    {
        "symbol": "AAPL",
        "base_asset": "AAPL",
        "quote_asset": "USD",
        "base_precision": 0,
        "quote_precision": 2,
        "tick_size": Decimal("0.01"),
        "lot_size": Decimal("1"),
        "min_quantity": Decimal("1"),
        "min_notional": Decimal("1.00"),
    },
    {
        "symbol": "MSFT",
        "base_asset": "MSFT",
        "quote_asset": "USD",
        "base_precision": 0,
        "quote_precision": 2,
        "tick_size": Decimal("0.01"),
        "lot_size": Decimal("1"),
        "min_quantity": Decimal("1"),
        "min_notional": Decimal("1.00"),
    },
    {
        "symbol": "BTC-USD",
        "base_asset": "BTC",
        "quote_asset": "USD",
        "base_precision": 8,
        "quote_precision": 2,
        "tick_size": Decimal("0.01"),
        "lot_size": Decimal("0.00001"),
        "min_quantity": Decimal("0.00001"),
        "min_notional": Decimal("10.00"),
    },
]


@transaction.atomic
def demo_seed(*, credentials: list[dict]) -> dict:
    """Create the demo instruments and users if missing; (re)set the users' passwords.

    `credentials` holds dicts with role ("admin" or "trader"), username and password.
    """
    User = get_user_model()
    symbols = []
    for spec in DEMO_INSTRUMENTS:
        Instrument.objects.get_or_create(symbol=spec["symbol"], defaults=spec)
        symbols.append(spec["symbol"])
    for entry in credentials:
        user, _ = User.objects.get_or_create(
            username=entry["username"],
            defaults={"email": f"{entry['username']}@demo.exchange.local"},
        )
        is_admin = entry["role"] == "admin"
        user.is_staff = is_admin
        user.is_superuser = is_admin
        user.set_password(entry["password"])
        user.save(update_fields=["is_staff", "is_superuser", "password"])
    return {"instruments": symbols, "users": [entry["username"] for entry in credentials]}

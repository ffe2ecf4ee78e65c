"""A small REST client for tests: a user with a token, JSON in and out, like an API client."""

import uuid
from decimal import Decimal

import httpx
from rest_framework.authtoken.models import Token

from accounts.ledger import funds_deposit
from accounts.models import User
from exchange.models import Instrument
from exchange.services import instrument_list


# What `make_user` deposits: enough for any test order on a `make_instrument` (base TST).
TEST_FUNDS = {"USD": Decimal("10000000"), "TST": Decimal("10000000")}


def make_user(prefix: str = "trader", *, funds: dict[str, Decimal] | None = None) -> User:
    """A user with `funds` deposited (default TEST_FUNDS; `{}` for an empty account)."""
    name = f"{prefix}-{uuid.uuid4().hex[:10]}"
    user = User.objects.create_user(username=name, email=f"{name}@test.local", password=None)
    for asset, amount in (TEST_FUNDS if funds is None else funds).items():
        funds_deposit(user=user, asset=asset, amount=amount, memo="test funds")
    return user


def make_instrument(**overrides) -> Instrument:
    """A 24/7 instrument with a unique symbol, listed on its shard's engine."""
    fields = {
        "symbol": f"T{uuid.uuid4().hex[:8].upper()}",
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
    instrument = Instrument.objects.create(**fields)
    instrument_list(instrument=instrument)
    return instrument


class ApiClient:
    def __init__(self, base_url: str, user: User | None = None) -> None:
        self.user = user or make_user()
        token, _ = Token.objects.get_or_create(user=self.user)
        self.http = httpx.Client(
            base_url=base_url,
            headers={"Authorization": f"Token {token.key}"},
            timeout=15,
        )

    def place(self, **body) -> httpx.Response:
        return self.http.post("/api/v1/orders", json=body)

    def get(self, path: str, **params) -> httpx.Response:
        return self.http.get(path, params=params)

    def delete(self, path: str, **params) -> httpx.Response:
        return self.http.delete(path, params=params)

    def patch(self, path: str, body: dict) -> httpx.Response:
        return self.http.patch(path, json=body)

"""A small REST client for tests: a user with an API key signing every request, JSON in and
out, like an API client."""

import datetime as dt
import time
import uuid
from collections.abc import Callable
from decimal import Decimal

import httpx
from django.test import Client
from django.utils.crypto import get_random_string

from accounts.api_keys import CreatedApiKey, api_key_create
from accounts.ledger import funds_deposit
from accounts.models import User
from accounts.signing import sign
from exchange.models import Instrument
from exchange.services import instrument_list

# What `make_user` deposits: enough for any test order on a `make_instrument` (base TST).
TEST_FUNDS = {"USD": Decimal("10000000"), "TST": Decimal("10000000")}


def limit(symbol: str, side: str, price: str, quantity: str, **extra) -> dict:
    """A limit order's body for POST /orders (or the socket's order.place), with `extra`
    fields."""
    return {
        "symbol": symbol,
        "side": side,
        "order_type": "limit",
        "price": price,
        "quantity": quantity,
        **extra,
    }


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


def make_closed_instrument(**overrides) -> Instrument:
    """An instrument outside its trading hours now: its session lasts one second a day (03:00,
    or 15:00 when now is within a minute of 03:00), in UTC."""
    now = dt.datetime.now(dt.UTC)
    opens = dt.time(15, 0) if dt.time(2, 59) <= now.time() <= dt.time(3, 1) else dt.time(3, 0)
    return make_instrument(
        trades_24_7=False,
        session_open=opens,
        session_close=opens.replace(second=1),
        session_timezone="UTC",
        **overrides,
    )


def make_api_key(
    user: User, permissions: tuple[str, ...] = ("read", "trade"), **options
) -> CreatedApiKey:
    """An API key of `user` (read and trade unless told), through the service."""
    return api_key_create(user=user, label="test", permissions=list(permissions), **options)


def session_client(base_url: str, user: User) -> httpx.Client:
    """A browser signed in to the web session (CSRF token in cookie and header)."""
    browser = Client()
    browser.force_login(user)
    csrf = get_random_string(32)
    return httpx.Client(
        base_url=base_url,
        cookies={"sessionid": browser.cookies["sessionid"].value, "csrftoken": csrf},
        headers={"X-CSRFToken": csrf},
        timeout=15,
    )


class ApiKeyAuth(httpx.Auth):
    """Signs every request: X-API-KEY, X-API-TIMESTAMP (from `clock_ms`) and X-API-SIGNATURE,
    the HMAC-SHA256 of timestamp + METHOD + path + ?query + body (README, API keys)."""

    requires_request_body = True

    def __init__(
        self, api_key: str, secret: str, *, clock_ms: Callable[[], int] | None = None
    ) -> None:
        self.api_key, self.secret = api_key, secret
        self.clock_ms = clock_ms or (lambda: time.time_ns() // 1_000_000)

    def auth_flow(self, request: httpx.Request):
        timestamp = str(self.clock_ms())
        path, _, query = request.url.raw_path.decode("ascii").partition("?")
        request.headers["X-API-KEY"] = self.api_key
        request.headers["X-API-TIMESTAMP"] = timestamp
        request.headers["X-API-SIGNATURE"] = sign(
            secret=self.secret,
            timestamp=timestamp,
            method=request.method,
            path=path,
            query=query,
            body=request.content,
        )
        yield request


class ApiClient:
    def __init__(
        self,
        base_url: str,
        user: User | None = None,
        permissions: tuple[str, ...] = ("read", "trade"),
    ) -> None:
        self.user = user or make_user()
        created = make_api_key(self.user, permissions)
        self.api_key, self.secret = created.api_key, created.secret
        self.http = httpx.Client(
            base_url=base_url, auth=ApiKeyAuth(self.api_key.key, self.secret), timeout=15
        )

    def place(self, **body) -> httpx.Response:
        return self.http.post("/api/v1/orders", json=body)

    def get(self, path: str, **params) -> httpx.Response:
        return self.http.get(path, params=params)

    def delete(self, path: str, **params) -> httpx.Response:
        return self.http.delete(path, params=params)

    def patch(self, path: str, body: dict) -> httpx.Response:
        return self.http.patch(path, json=body)

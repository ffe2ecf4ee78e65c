"""Staff in the Django admin over real HTTP, for tests: a signed-in staff client (password and
TOTP code), changelist actions and the instrument change form."""

import re

import httpx
from django.contrib.auth.models import Permission

from accounts.tests.otp_login import give_totp_device, http_sign_in
from exchange.models import Instrument
from exchange.tests.api_client import make_user


def admin_client(base_url: str, *, permissions: tuple[str, ...] | None = None) -> httpx.Client:
    """A staff member signed in over HTTP with email, password and a TOTP code: a superuser,
    or with only `permissions` ("app_label.codename") when given."""
    staff = make_user("staff")
    staff.is_staff = True
    staff.is_superuser = permissions is None
    staff.set_password("staff-password-1")
    staff.save()
    for name in permissions or ():
        app_label, codename = name.split(".")
        staff.user_permissions.add(
            Permission.objects.get(content_type__app_label=app_label, codename=codename)
        )
    client = httpx.Client(base_url=base_url, timeout=15)
    response = http_sign_in(
        client,
        email=staff.email,
        password="staff-password-1",
        device=give_totp_device(staff),
        next_url="/admin/",
    )
    assert response.status_code == 302 and response.headers["location"] == "/admin/"
    return client


def csrf_token(client: httpx.Client, url: str) -> str:
    """The CSRF token of the admin form at `url`."""
    return re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', client.get(url).text).group(1)


def admin_user_change(client: httpx.Client, user, **fields) -> httpx.Response:
    """Post the admin's change form of `user`: its username and email, a join date, then
    `fields` (a checkbox left out is unticked: `is_active="on"` keeps it active)."""
    url = f"/admin/accounts/user/{user.pk}/change/"
    data = {
        "csrfmiddlewaretoken": csrf_token(client, url),
        "username": user.username,
        "email": user.email,
        "date_joined_0": "2026-01-01",
        "date_joined_1": "00:00:00",
        **fields,
    }
    return client.post(url, data=data)


def admin_action_post(client: httpx.Client, changelist: str, action: str, pk: int, **fields):
    """Post `action` on the object `pk` of `changelist`, with the action bar's other `fields`
    (an instrument's halt `reason`); the response (302 when it ran)."""
    return client.post(
        changelist,
        data={
            "action": action,
            "_selected_action": str(pk),
            "csrfmiddlewaretoken": csrf_token(client, changelist),
            **fields,
        },
    )


def admin_action(client: httpx.Client, changelist: str, action: str, pk: int, **fields) -> None:
    response = admin_action_post(client, changelist, action, pk, **fields)
    assert response.status_code == 302, response.text[:300]


def admin_instrument_change(
    client: httpx.Client, instrument: Instrument, **changes
) -> httpx.Response:
    """Post the instrument's admin change form: its current editable values with `changes`."""
    url = f"/admin/exchange/instrument/{instrument.pk}/change/"
    token = csrf_token(client, url)
    data = {
        "min_quantity": str(instrument.min_quantity),
        "min_notional": str(instrument.min_notional),
        "price_band_pct": str(instrument.price_band_pct),
        "market_collar_pct": str(instrument.market_collar_pct),
        "trades_24_7": "on" if instrument.trades_24_7 else "",
        "session_open": "",
        "session_close": "",
        "session_timezone": instrument.session_timezone,
        "default_stp_mode": instrument.default_stp_mode,
        "csrfmiddlewaretoken": token,
        "_save": "Save",
        **changes,
    }
    return client.post(url, data={k: v for k, v in data.items() if v != ""})


def admin_instrument_add(client: httpx.Client, symbol: str, **fields) -> httpx.Response:
    """Post the admin's add-instrument form: a 24/7 USD instrument (tick 0.01, lot 1) with
    `fields` changed."""
    url = "/admin/exchange/instrument/add/"
    data = {
        "csrfmiddlewaretoken": csrf_token(client, url),
        "symbol": symbol,
        "base_asset": symbol[:12],
        "quote_asset": "USD",
        "base_precision": "0",
        "quote_precision": "2",
        "tick_size": "0.01",
        "lot_size": "1",
        "min_quantity": "1",
        "min_notional": "0",
        "price_band_pct": "10",
        "market_collar_pct": "5",
        "trades_24_7": "on",
        "session_timezone": "UTC",
        "default_stp_mode": "cancel_resting",
        **fields,
    }
    return client.post(url, data=data)

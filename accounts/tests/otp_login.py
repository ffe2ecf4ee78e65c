"""Signing in with two-factor authentication in tests, the way a person with an authenticator
app does: codes are computed from the device's secret (django-otp's TOTP) at a chosen instant.

Used by every test that needs the admin (staff need a verified session there).
"""

from __future__ import annotations

import re
import time
import uuid

import httpx
from django.contrib.auth import get_user_model
from django.test import Client
from django_otp.plugins.otp_totp.models import TOTPDevice

from accounts.two_factor import totp_code, totp_key_new

PASSWORD = "correct horse battery 9"
_CSRF_RE = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')


def make_person(*, staff: bool = False, superuser: bool = False, password: str = PASSWORD):
    """A user who signs in with email + password (no authenticator yet)."""
    name = f"p{uuid.uuid4().hex[:10]}"
    return get_user_model().objects.create_user(
        username=name,
        email=f"{name}@example.test",
        password=password,
        is_staff=staff or superuser,
        is_superuser=superuser,
    )


def give_totp_device(user) -> TOTPDevice:
    """A confirmed authenticator for `user`, as if they had enrolled."""
    return TOTPDevice.objects.create(
        user=user, name="Authenticator app", key=totp_key_new(), confirmed=True
    )


def code_instant(device: TOTPDevice, *, now: float | None = None) -> float:
    """An instant inside the tolerance window of `now` whose code the device still accepts
    (a code is accepted once: its time step must be after the last accepted one)."""
    now = time.time() if now is None else now
    device.refresh_from_db(fields=["last_t"])
    return max(now, (device.last_t + 1) * device.step + 1)


def current_code(device: TOTPDevice, *, now: float | None = None) -> str:
    return totp_code(device.key, at=code_instant(device, now=now))


def csrf_token(html: str) -> str:
    return _CSRF_RE.search(html).group(1)


def verified_client(user, client: Client | None = None) -> Client:
    """A test client signed in as `user` and through the OTP step (a device is added if the
    user has none): what a staff member needs for the admin."""
    client = client or Client()
    device = TOTPDevice.objects.filter(user=user, confirmed=True).first() or give_totp_device(user)
    client.force_login(user)
    response = client.post("/accounts/2fa/verify/", {"code": current_code(device)})
    assert response.status_code == 302, response.content[:500]
    return client


def http_sign_in(
    client: httpx.Client, *, email: str, password: str, device: TOTPDevice | None, next_url: str
) -> httpx.Response:
    """Sign in over real HTTP: the login form, then (with a device) the OTP step. Returns the
    last response (a redirect to `next_url` when it worked)."""
    page = client.get("/accounts/login/", params={"next": next_url})
    response = client.post(
        "/accounts/login/",
        data={
            "email": email,
            "password": password,
            "next": next_url,
            "csrfmiddlewaretoken": csrf_token(page.text),
        },
    )
    if device is None or response.status_code != 302:
        return response
    verify_url = response.headers["location"]
    page = client.get(verify_url)
    return client.post(
        verify_url,
        data={
            "code": current_code(device),
            "next": next_url,
            "csrfmiddlewaretoken": csrf_token(page.text),
        },
    )

"""2FA is required for the staff admin, over real HTTP against the ASGI web process: a staff
member without an authenticator is sent to enrol one, with one they must pass the code step;
a half-signed-in session is anonymous on the WebSocket too."""

import asyncio
import json
import re
import time
from base64 import b32decode

import httpx
import pytest
import websockets

from accounts.tests.otp_login import (
    PASSWORD,
    csrf_token,
    current_code,
    give_totp_device,
    http_sign_in,
    make_person,
)
from accounts.two_factor import totp_code
from audit.events import AuditEvent
from audit.models import AuditRecord
from conftest import Processes, start_web

pytestmark = pytest.mark.processes


@pytest.fixture(scope="module")
def web(django_db_setup, process_env, tmp_path_factory) -> str:
    """The real web process (no matching worker: nothing here trades), once per module."""
    procs = Processes(tmp_path_factory.mktemp("web"))
    try:
        yield start_web(procs, env=process_env)
    finally:
        procs.stop_all()


def test_admin_sends_a_visitor_to_the_sign_in_page(web, live_db):
    with httpx.Client(base_url=web, timeout=15) as client:
        first = client.get("/admin/")
        assert first.status_code == 302 and first.headers["location"].startswith("/admin/login/")
        login = client.get(first.headers["location"])
        assert login.headers["location"] == "/accounts/login/?next=%2Fadmin%2F"
        page = client.get(login.headers["location"])
        assert page.status_code == 200 and 'name="email"' in page.text


def test_staff_without_an_authenticator_must_enrol_before_the_admin(web, live_db):
    staff = make_person(staff=True)
    with httpx.Client(base_url=web, timeout=15) as client:
        response = http_sign_in(
            client, email=staff.email, password=PASSWORD, device=None, next_url="/admin/"
        )
        assert response.status_code == 302
        enrol_url = response.headers["location"]
        assert enrol_url == "/accounts/2fa/enrol/?next=%2Fadmin%2F"
        # Signed in with a password only: the admin still refuses, and says where to go.
        refused = client.get("/admin/", follow_redirects=True)
        assert str(refused.url).startswith(f"{web}/accounts/2fa/enrol/")
        assert "Staff accounts need two-factor authentication" in refused.text

        page = client.get(enrol_url)
        assert "<svg" in page.text and "<script" not in page.text
        secret = re.search(r'<code id="totp-secret">([A-Z2-7]+)</code>', page.text).group(1)
        key = b32decode(secret + "=" * (-len(secret) % 8)).hex()
        confirmed = client.post(
            enrol_url,
            data={
                "code": totp_code(key, at=time.time()),
                "next": "/admin/",
                "csrfmiddlewaretoken": csrf_token(page.text),
            },
        )
        assert confirmed.status_code == 200 and "Your recovery codes" in confirmed.text
        assert 'href="/admin/"' in confirmed.text
        assert client.get("/admin/").status_code == 200
    assert AuditRecord.objects.filter(
        event_type=AuditEvent.TWO_FACTOR_ENABLED, user_id=staff.pk
    ).exists()


def test_staff_with_an_authenticator_needs_the_code_for_the_admin(web, live_db):
    staff = make_person(superuser=True)
    device = give_totp_device(staff)
    with httpx.Client(base_url=web, timeout=15) as client:
        response = http_sign_in(
            client, email=staff.email, password=PASSWORD, device=None, next_url="/admin/"
        )
        verify_url = response.headers["location"]
        assert verify_url == "/accounts/2fa/verify/?next=%2Fadmin%2F"
        # Half signed in: neither the admin nor the API.
        assert client.get("/admin/", follow_redirects=True).url.path == "/accounts/2fa/verify/"
        assert client.get("/api/v1/orders").status_code in (401, 403)
        page = client.get(verify_url)
        wrong = client.post(
            verify_url,
            data={
                "code": "000000",
                "next": "/admin/",
                "csrfmiddlewaretoken": csrf_token(page.text),
            },
        )
        assert wrong.status_code == 200 and "That code is not right" in wrong.text
        right = client.post(
            verify_url,
            data={
                "code": current_code(device),
                "next": "/admin/",
                "csrfmiddlewaretoken": csrf_token(wrong.text),
            },
        )
        assert right.status_code == 302 and right.headers["location"] == "/admin/"
        assert client.get("/admin/").status_code == 200
        assert client.get("/api/v1/orders").status_code == 200
    kinds = list(
        AuditRecord.objects.filter(user_id=staff.pk)
        .order_by("seq")
        .values_list("event_type", flat=True)
    )
    assert kinds == [AuditEvent.LOGIN, AuditEvent.TWO_FACTOR_FAILED, AuditEvent.TWO_FACTOR_VERIFIED]


def test_a_verified_ordinary_user_gets_no_admin(web, live_db):
    user = make_person()
    device = give_totp_device(user)
    with httpx.Client(base_url=web, timeout=15) as client:
        response = http_sign_in(
            client, email=user.email, password=PASSWORD, device=device, next_url="/"
        )
        assert response.status_code == 302
        assert client.get("/admin/").status_code == 302


def ws_url(web: str) -> str:
    return web.replace("http://", "ws://") + "/ws/v1"


async def subscribe_orders(web: str, cookie: str) -> dict:
    async with websockets.connect(
        ws_url(web), ping_interval=None, additional_headers={"Cookie": cookie}
    ) as ws:
        await ws.send(json.dumps({"op": "subscribe", "channels": ["orders"]}))
        while True:
            frame = json.loads(await asyncio.wait_for(ws.recv(), timeout=10))
            if frame.get("type") in ("subscribed", "error"):
                return frame


def test_a_half_signed_in_session_is_anonymous_on_the_websocket(web, live_db):
    user = make_person()
    device = give_totp_device(user)
    with httpx.Client(base_url=web, timeout=15) as client:
        http_sign_in(client, email=user.email, password=PASSWORD, device=None, next_url="/")
        cookie = f"sessionid={client.cookies['sessionid']}"
        refused = asyncio.run(subscribe_orders(web, cookie))
        assert refused["type"] == "error" and refused["error"] == "NotAuthenticated"
        page = client.get("/accounts/2fa/verify/")
        client.post(
            "/accounts/2fa/verify/",
            data={"code": current_code(device), "csrfmiddlewaretoken": csrf_token(page.text)},
        )
        cookie = f"sessionid={client.cookies['sessionid']}"
        accepted = asyncio.run(subscribe_orders(web, cookie))
        assert accepted["type"] == "subscribed" and accepted["channel"] == "orders"


@pytest.mark.django_db
def test_staff_use_the_api_with_a_session_only_after_the_otp_step():
    # A password alone let a staff member without an authenticator credit deposits, read the
    # audit trail and the exchange's metrics, and mint an API key (which then never needs 2FA),
    # while the admin sent them to the login.
    from django.contrib.auth.models import Permission
    from django.test import Client

    from accounts.tests.otp_login import PASSWORD, make_person, verified_client

    staff = make_person(staff=True)
    staff.user_permissions.add(Permission.objects.get(codename="add_ledgerentry"))
    trader = make_person()
    client = Client(enforce_csrf_checks=False)
    assert client.login(username=staff.username, password=PASSWORD)
    attempts = [
        client.post(
            f"/api/v1/users/{trader.pk}/deposit",
            {"asset": "USD", "amount": "5.00"},
            content_type="application/json",
        ),
        client.get("/api/v1/metrics/exchange"),
        client.post(
            "/api/v1/api-keys",
            {"label": "x", "permissions": ["read"]},
            content_type="application/json",
        ),
        client.get("/api/v1/balances"),
    ]
    for response in attempts:
        assert response.status_code in (401, 403), response.content[:300]
        assert response.json()["error"] == "AuthenticationFailed", response.content[:300]
        assert "two-factor" in response.json()["message"]
    from accounts.models import LedgerAccount

    assert not LedgerAccount.objects.filter(user=trader).exists()  # nothing was credited
    verified = verified_client(staff)
    assert verified.get("/api/v1/metrics/exchange").status_code == 200
    assert verified.get("/api/v1/balances").status_code == 200


@pytest.mark.django_db
def test_a_staff_socket_session_without_the_otp_step_is_anonymous():
    from accounts.tests.otp_login import make_person
    from accounts.two_factor import session_two_factor_pending

    assert session_two_factor_pending(make_person(staff=True), {})
    assert not session_two_factor_pending(make_person(), {})

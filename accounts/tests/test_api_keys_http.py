"""API keys over real HTTP: signed requests, permissions, owner scoping, rate limits, audit."""

import asyncio
import json
import time
from decimal import Decimal

import httpx
import pytest
import websockets
from django.contrib.auth.models import Permission
from django.utils.crypto import get_random_string

from accounts.models import APIKey
from accounts.signing import sign, ws_login_message
from audit.events import AuditEvent
from audit.models import AuditRecord
from conftest import start_web, wait_until
from exchange.tests.api_client import (
    ApiClient,
    make_api_key,
    make_instrument,
    make_user,
    session_client,
)

pytestmark = [pytest.mark.processes]


@pytest.fixture
def base(exchange_stack, live_db) -> str:
    return exchange_stack


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def send_signed(
    base_url: str,
    api_key: str,
    secret: str,
    method: str,
    path: str,
    *,
    query: str = "",
    body: bytes = b"",
    timestamp: int | None = None,
    sent_path: str | None = None,
    sent_query: str | None = None,
    sent_body: bytes | None = None,
    extra_headers: dict[str, str] | None = None,
) -> httpx.Response:
    """Sign one request, then send it (optionally with a different path, query or body, or
    more headers)."""
    timestamp = str(now_ms() if timestamp is None else timestamp)
    signature = sign(
        secret=secret, timestamp=timestamp, method=method, path=path, query=query, body=body
    )
    sent_query = query if sent_query is None else sent_query
    url = base_url + (path if sent_path is None else sent_path)
    url += f"?{sent_query}" if sent_query else ""
    headers = {
        "X-API-KEY": api_key,
        "X-API-TIMESTAMP": timestamp,
        "X-API-SIGNATURE": signature,
        "Content-Type": "application/json",
        **(extra_headers or {}),
    }
    content = body if sent_body is None else sent_body
    return httpx.request(method, url, headers=headers, content=content, timeout=15)


def audit_reasons(user, event: AuditEvent) -> list[str]:
    records = AuditRecord.objects.filter(event_type=event, user_id=user.pk).order_by("seq")
    return [r.payload["reason"] for r in records]


def buy(symbol: str, price: str = "1.00") -> dict:
    return {
        "symbol": symbol,
        "side": "buy",
        "order_type": "limit",
        "price": price,
        "quantity": "1",
    }


def test_a_signed_request_is_answered_and_the_key_lists_its_last_use(base):
    client = ApiClient(base)
    response = client.get("/api/v1/orders")
    assert response.status_code == 200
    assert int(response.headers["X-Used-Weight-1m"]) >= 5
    assert "X-Used-Weight-1s" in response.headers
    listed = client.get("/api/v1/api-keys").json()["results"]
    assert [k["api_key"] for k in listed] == [client.api_key.key]
    assert listed[0]["last_used_at"].endswith("Z") and listed[0]["last_used_ip"] == "127.0.0.1"
    assert listed[0]["permissions"] == ["read", "trade"] and listed[0]["status"] == "active"
    assert "secret" not in listed[0]


def test_signed_and_session_requests_get_the_same_security_headers(base):
    """Signed API requests take the lean handler and skip the session middleware: they still
    get Django's security headers, and no session or CSRF cookie."""
    instrument = make_instrument()
    client = ApiClient(base)
    signed = client.place(
        symbol=instrument.symbol, side="buy", order_type="limit", price="1.00", quantity="1"
    )
    assert signed.status_code in (201, 202), signed.text
    browser = session_client(base, client.user)
    in_session = browser.get("/api/v1/orders", params={"symbol": instrument.symbol})
    assert in_session.status_code == 200 and len(in_session.json()["results"]) == 1
    for response in (signed, in_session):
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["Referrer-Policy"] == "same-origin"
        assert response.headers["Cross-Origin-Opener-Policy"] == "same-origin"
        assert response.headers["Content-Type"] == "application/json"
    assert int(signed.headers["X-Order-Weight-1s"]) >= 1
    assert "set-cookie" not in signed.headers


def test_orders_from_the_web_session_are_audited_as_web_and_signed_ones_as_rest(base):
    # The web UI's pages place orders through the API with the session cookie: they were all
    # recorded as channel `rest`, as if an API client had sent them.
    instrument = make_instrument()
    client = ApiClient(base)
    order = {"symbol": instrument.symbol, "side": "buy", "order_type": "limit", "quantity": "1"}
    signed = client.place(**order, price="1.00")
    browser = session_client(base, client.user)
    in_session = browser.post("/api/v1/orders", json={**order, "price": "1.01"})
    cancelled = browser.delete(f"/api/v1/orders/{signed.json()['order_id']}")
    assert (signed.status_code, in_session.status_code, cancelled.status_code) == (201, 201, 200)
    records = AuditRecord.objects.filter(
        event_type__in=(AuditEvent.ORDER_SUBMITTED, AuditEvent.ORDER_CANCEL_REQUESTED),
        symbol=instrument.symbol,
    )
    signed_id, session_id = signed.json()["order_id"], in_session.json()["order_id"]
    assert set(records.values_list("event_type", "order_id", "channel")) == {
        (AuditEvent.ORDER_SUBMITTED, signed_id, "rest"),
        (AuditEvent.ORDER_SUBMITTED, session_id, "web"),
        (AuditEvent.ORDER_CANCEL_REQUESTED, signed_id, "web"),
    }


@pytest.mark.parametrize(
    ("tamper", "error", "code", "reason"),
    [
        ({"sent_body": b'{"symbol": "MSFT"}'}, "InvalidSignature", -1022, "bad_signature"),
        ({"sent_path": "/api/v1/fills"}, "InvalidSignature", -1022, "bad_signature"),
        ({"sent_query": "symbol=MSFT"}, "InvalidSignature", -1022, "bad_signature"),
        ({"timestamp_offset": -6_000}, "TimestampOutsideRecvWindow", -1021, "stale_timestamp"),
        ({"timestamp_offset": 3_000}, "TimestampOutsideRecvWindow", -1021, "future_timestamp"),
    ],
    ids=["body", "path", "query", "stale", "future"],
)
def test_a_tampered_or_mistimed_request_is_refused_with_401_and_audited(
    base, tamper, error, code, reason
):
    user = make_user()
    created = make_api_key(user)
    offset = tamper.pop("timestamp_offset", None)
    response = send_signed(
        base,
        created.api_key.key,
        created.secret,
        "POST",
        "/api/v1/orders",
        query="symbol=AAPL",
        body=b'{"symbol": "AAPL"}',
        timestamp=now_ms() + offset if offset is not None else None,
        **tamper,
    )
    assert response.status_code == 401
    assert response.json()["error"] == error and response.json()["code"] == code
    assert audit_reasons(user, AuditEvent.API_KEY_AUTH_FAILED) == [reason]
    [record] = AuditRecord.objects.filter(
        event_type=AuditEvent.API_KEY_AUTH_FAILED, user_id=user.pk
    )
    assert record.api_key_id == created.api_key.pk and record.ip == "127.0.0.1"
    assert record.actor_label == "anonymous" and record.channel == "rest"


def test_a_signed_post_body_is_verified_byte_for_byte(base):
    instrument = make_instrument()
    created = make_api_key(make_user())
    body = json.dumps(buy(instrument.symbol)).encode()
    placed = send_signed(
        base, created.api_key.key, created.secret, "POST", "/api/v1/orders", body=body
    )
    assert placed.status_code in (201, 202), placed.text
    [submitted] = AuditRecord.objects.filter(
        event_type=AuditEvent.ORDER_SUBMITTED, order_id=placed.json()["order_id"]
    )
    assert submitted.api_key_id == created.api_key.pk
    spaced = body.replace(b":", b": ")
    refused = send_signed(
        base, created.api_key.key, created.secret, "POST", "/api/v1/orders", body=body,
        sent_body=spaced,
    )  # fmt: skip
    assert refused.status_code == 401 and refused.json()["error"] == "InvalidSignature"


def test_unknown_keys_and_missing_headers_are_401(base):
    unknown = send_signed(base, "f" * 32, "whatever", "GET", "/api/v1/orders")
    assert unknown.status_code == 401 and unknown.json()["code"] == -1010
    partial = httpx.get(f"{base}/api/v1/orders", headers={"X-API-KEY": "f" * 32})
    assert partial.status_code == 401 and partial.json()["error"] == "MissingAuthHeader"
    anonymous = httpx.get(f"{base}/api/v1/orders")
    assert anonymous.status_code == 401 and anonymous.json()["error"] == "NotAuthenticated"


def test_a_read_only_key_reads_but_cannot_trade(base):
    instrument = make_instrument()
    reader = ApiClient(base, permissions=("read",))
    assert reader.get("/api/v1/orders").status_code == 200
    refused = reader.place(**buy(instrument.symbol))
    assert refused.status_code == 403
    assert refused.json()["error"] == "ApiKeyPermissionMissing" and refused.json()["code"] == -1012
    assert reader.delete("/api/v1/orders").status_code == 403
    assert audit_reasons(reader.user, AuditEvent.API_KEY_ACCESS_DENIED) == [
        "missing_permission",
        "missing_permission",
    ]
    trader_only = ApiClient(base, permissions=("trade",))
    assert trader_only.get("/api/v1/orders").status_code == 403
    assert trader_only.place(**buy(instrument.symbol)).status_code in (201, 202)


def test_the_ip_allow_list_refuses_other_addresses_with_403(base):
    user = make_user()
    elsewhere = make_api_key(user, ip_allowlist=["203.0.113.0/24"])
    here = make_api_key(user, ip_allowlist=["203.0.113.0/24", "127.0.0.1"])
    refused = send_signed(base, elsewhere.api_key.key, elsewhere.secret, "GET", "/api/v1/orders")
    assert refused.status_code == 403 and refused.json()["error"] == "IpNotAllowed"
    assert audit_reasons(user, AuditEvent.API_KEY_ACCESS_DENIED) == ["ip_not_allowed"]
    allowed = send_signed(base, here.api_key.key, here.secret, "GET", "/api/v1/orders")
    assert allowed.status_code == 200
    # A client naming another address is still at its own (uvicorn believed X-Forwarded-For
    # from any local client: the allow-list, the per-IP limits and the audit's IP followed it).
    for header in ("X-Forwarded-For", "X-Real-IP", "Forwarded"):
        spoofed = send_signed(
            base,
            elsewhere.api_key.key,
            elsewhere.secret,
            "GET",
            "/api/v1/orders",
            extra_headers={header: "203.0.113.7" if header != "Forwarded" else "for=203.0.113.7"},
        )
        assert spoofed.status_code == 403, (header, spoofed.text)


def test_keys_are_created_and_revoked_through_the_web_session_only(base):
    user = make_user()
    browser = session_client(base, user)
    created = browser.post("/api/v1/api-keys", json={"label": "my bot"})
    assert created.status_code == 201, created.text
    key = created.json()
    assert key["permissions"] == ["read"] and key["status"] == "active"
    assert len(key["secret"]) >= 40
    stored = APIKey.objects.get(pk=key["id"])
    assert key["secret"] not in stored.secret_encrypted

    def read(path):
        return send_signed(base, key["api_key"], key["secret"], "GET", path)

    assert read("/api/v1/orders").status_code == 200
    by_key = send_signed(
        base, key["api_key"], key["secret"], "POST", "/api/v1/api-keys",
        body=b'{"label": "successor", "permissions": ["read", "trade", "withdraw"]}',
    )  # fmt: skip
    assert by_key.status_code == 403 and by_key.json()["error"] == "SessionRequired"
    revoke_by_key = send_signed(
        base, key["api_key"], key["secret"], "DELETE", f"/api/v1/api-keys/{key['id']}"
    )
    assert revoke_by_key.status_code == 403
    assert APIKey.objects.filter(user=user).count() == 1

    revoked = browser.delete(f"/api/v1/api-keys/{key['id']}")
    assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"
    after = read("/api/v1/orders")
    assert after.status_code == 401 and after.json()["error"] == "InvalidApiKey"
    events = AuditRecord.objects.filter(user_id=user.pk, event_type__startswith="auth.api_key")
    assert [r.event_type for r in events.order_by("seq")] == [
        AuditEvent.API_KEY_CREATED,
        AuditEvent.API_KEY_ACCESS_DENIED,
        AuditEvent.API_KEY_ACCESS_DENIED,
        AuditEvent.API_KEY_REVOKED,
        AuditEvent.API_KEY_AUTH_FAILED,
    ]
    assert audit_reasons(user, AuditEvent.API_KEY_AUTH_FAILED) == ["revoked_key"]


def test_a_method_the_key_endpoints_do_not_take_is_a_405_for_a_key_as_for_a_session(base):
    # A key's PUT or PATCH had been answered 403 SessionRequired ("sign in to the web session
    # for this") and audited as a denied request: signed in, it is a 405 all the same.
    user = make_user()
    created = make_api_key(user)
    key, secret = created.api_key, created.secret
    for method, path in (
        ("PUT", "/api/v1/api-keys"),
        ("PATCH", "/api/v1/api-keys"),
        ("PUT", f"/api/v1/api-keys/{key.pk}"),
        ("PATCH", f"/api/v1/api-keys/{key.pk}"),
        ("POST", f"/api/v1/api-keys/{key.pk}"),
    ):
        answer = send_signed(base, key.key, secret, method, path, body=b"{}")
        assert answer.status_code == 405, (method, path, answer.text)
        assert answer.json()["error"] == "MethodNotAllowed"
        assert session_client(base, user).request(method, path, json={}).status_code == 405
    assert not AuditRecord.objects.filter(
        user_id=user.pk, event_type=AuditEvent.API_KEY_ACCESS_DENIED
    ).exists()


def test_key_creation_refuses_bad_input_with_the_field(base):
    browser = session_client(base, make_user())
    refused = browser.post(
        "/api/v1/api-keys", json={"label": "k", "permissions": ["read"], "ip_allowlist": ["x"]}
    )
    assert refused.status_code == 400 and refused.json()["field"] == "ip_allowlist"
    unknown = browser.post("/api/v1/api-keys", json={"label": "k", "permissions": ["admin"]})
    assert unknown.status_code == 400 and unknown.json()["field"].startswith("permissions")
    # A misspelt field was dropped: the key was made, read-only and usable from any address.
    misspelt = browser.post(
        "/api/v1/api-keys",
        json={"label": "bot", "permissions": ["trade"], "ip_whitelist": ["203.0.113.7"]},
    )
    assert misspelt.status_code == 400, misspelt.text
    assert (misspelt.json()["error"], misspelt.json()["field"]) == (
        "UnexpectedParameter",
        "ip_whitelist",
    )
    for body in (b"[]", b'"x"', b"null"):
        malformed = browser.post(
            "/api/v1/api-keys", content=body, headers={"Content-Type": "application/json"}
        )
        assert malformed.json()["error"] == "MalformedRequest", (body, malformed.text)
    numeric = browser.post("/api/v1/api-keys", json={"label": 1})
    assert numeric.status_code == 400 and numeric.json()["field"] == "label"
    assert browser.get("/api/v1/api-keys").json()["results"] == []


def test_two_users_cannot_use_or_see_each_others_keys(base):
    alice, bob = make_user(), make_user()
    alices, bobs = make_api_key(alice), make_api_key(bob)
    # Bob names Alice's key but can only sign with his own secret.
    forged = send_signed(base, alices.api_key.key, bobs.secret, "GET", "/api/v1/orders")
    assert forged.status_code == 401 and forged.json()["error"] == "InvalidSignature"
    bob_browser = session_client(base, bob)
    for method in ("GET", "DELETE"):
        answer = bob_browser.request(method, f"/api/v1/api-keys/{alices.api_key.pk}")
        assert answer.status_code == 404 and answer.json()["error"] == "ApiKeyNotFound"
    by_bobs_key = send_signed(
        base, bobs.api_key.key, bobs.secret, "GET", f"/api/v1/api-keys/{alices.api_key.pk}"
    )
    assert by_bobs_key.status_code == 404
    listed = bob_browser.get("/api/v1/api-keys").json()["results"]
    assert [k["id"] for k in listed] == [bobs.api_key.pk]
    alices.api_key.refresh_from_db()
    assert alices.api_key.revoked_at is None


def test_the_schema_documents_the_key_endpoints_and_the_signature(base):
    schema = httpx.get(f"{base}/api/schema/", headers={"Accept": "application/json"}).json()
    assert {"get", "post"} <= schema["paths"]["/api/v1/api-keys"].keys()
    assert {"get", "delete"} <= schema["paths"]["/api/v1/api-keys/{api_key_id}"].keys()
    scheme = schema["components"]["securitySchemes"]["ApiKeySignature"]
    assert scheme["name"] == "X-API-KEY" and "HMAC-SHA256" in scheme["description"]


@pytest.fixture
def limited_web(base, processes, process_env) -> str:
    """A second web process (same database, Redis and worker) with small rate limits."""
    return start_web(
        processes,
        env={
            **process_env,
            "RATE_LIMIT_ORDERS_KEY_PER_MINUTE": "2",
            "RATE_LIMIT_ORDERS_USER_PER_MINUTE": "3",
            "RATE_LIMIT_REQUESTS_KEY_PER_MINUTE": "20",
        },
        name="web-limited",
    )


def early_in_a_minute() -> None:
    """Start a scenario early in a minute so its requests share one 1-minute window."""
    wait_until(lambda: time.time() % 60 < 45, timeout=20, interval=0.2)


def test_order_entry_is_limited_per_key_and_per_user_with_429_and_retry_after(limited_web):
    instrument = make_instrument()
    user = make_user()
    key_a, key_b = ApiClient(limited_web, user), ApiClient(limited_web, user)
    other = ApiClient(limited_web)
    early_in_a_minute()
    first, second = key_a.place(**buy(instrument.symbol)), key_a.place(**buy(instrument.symbol))
    assert first.status_code in (201, 202) and second.status_code in (201, 202)
    assert (first.headers["X-Order-Weight-1m"], second.headers["X-Order-Weight-1m"]) == ("1", "2")
    limited = key_a.place(**buy(instrument.symbol))
    assert limited.status_code == 429
    assert limited.json()["error"] == "TooManyRequests" and limited.json()["code"] == -1015
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    assert limited.headers["X-Order-Weight-1m"] == "2"
    # Reads have their own budget; the refused order cost nothing.
    assert key_a.get("/api/v1/orders").status_code == 200
    # Key B has its own key budget but shares the user's (3 a minute).
    assert key_b.place(**buy(instrument.symbol)).status_code in (201, 202)
    assert key_b.place(**buy(instrument.symbol)).status_code == 429
    assert other.place(**buy(instrument.symbol)).status_code in (201, 202)


def test_reads_are_limited_by_weight_per_key(limited_web):
    reader = ApiClient(limited_web, permissions=("read",))
    early_in_a_minute()
    weights = [reader.get("/api/v1/fills").headers.get("X-Used-Weight-1m") for _ in range(4)]
    assert weights == ["5", "10", "15", "20"]
    limited = reader.get("/api/v1/fills")
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
    assert Decimal(limited.headers["X-Used-Weight-1m"]) == 20


def test_public_market_data_is_limited_per_client_ip(base, processes, process_env):
    # Counters are per IP across every web process: this one counts under a Redis prefix of
    # its own, so the other tests' requests from 127.0.0.1 do not use up its budget.
    web = start_web(
        processes,
        env={
            **process_env,
            "REDIS_KEY_PREFIX": f"{process_env['REDIS_KEY_PREFIX']}ip-{get_random_string(6)}:",
            "RATE_LIMIT_REQUESTS_IP_PER_MINUTE": "5",
        },
        name="web-ip-limited",
    )
    early_in_a_minute()
    assert all(httpx.get(f"{web}/healthz", timeout=15).status_code == 200 for _ in range(8))
    # Each naming another address in X-Forwarded-For, which counted them apart: never limited.
    anonymous = [
        httpx.get(f"{web}/api/v1/time", headers={"X-Forwarded-For": f"10.9.{n}.1"}, timeout=15)
        for n in range(6)
    ]
    assert [r.status_code for r in anonymous] == [200] * 5 + [429]
    assert [r.headers.get("X-Used-Weight-1m") for r in anonymous[:5]] == ["1", "2", "3", "4", "5"]
    assert anonymous[5].json()["error"] == "TooManyRequests"
    assert 1 <= int(anonymous[5].headers["Retry-After"]) <= 60
    # A signed request from the same address counts against its key and user, not the IP.
    assert ApiClient(web).get("/api/v1/orders").status_code == 200


def test_refused_signatures_are_audited_up_to_a_budget_per_client_ip(base, processes, process_env):
    web = start_web(
        processes,
        env={
            **process_env,
            "REDIS_KEY_PREFIX": f"{process_env['REDIS_KEY_PREFIX']}auth-{get_random_string(6)}:",
            "RATE_LIMIT_AUTH_FAILURES_IP_PER_MINUTE": "3",
        },
        name="web-auth-limited",
    )
    user = make_user()
    created = make_api_key(user)
    early_in_a_minute()
    wrong = [
        send_signed(web, created.api_key.key, "not-the-secret", "GET", "/api/v1/orders")
        for _ in range(4)
    ]
    assert [r.status_code for r in wrong] == [401, 401, 401, 429]
    assert wrong[3].json()["error"] == "TooManyRequests" and int(wrong[3].headers["Retry-After"])
    assert audit_reasons(user, AuditEvent.API_KEY_AUTH_FAILED) == ["bad_signature"] * 3
    good = send_signed(web, created.api_key.key, created.secret, "GET", "/api/v1/orders")
    assert good.status_code == 200

    # The socket's logins share the budget: each refused one was audited, without limit.
    async def socket_logins() -> list[str]:
        errors = []
        async with websockets.connect(web.replace("http://", "ws://") + "/ws/v1") as ws:
            for n in range(3):
                login = ws_login_message(
                    api_key=created.api_key.key, secret="not-the-secret", timestamp_ms=now_ms()
                )
                await ws.send(json.dumps({**login, "id": n}))
                frame = json.loads(await asyncio.wait_for(ws.recv(), 15))
                while frame["type"] != "error":
                    frame = json.loads(await asyncio.wait_for(ws.recv(), 15))
                errors.append(frame["error"])
        return errors

    assert asyncio.run(socket_logins()) == ["TooManyRequests"] * 3
    assert audit_reasons(user, AuditEvent.API_KEY_AUTH_FAILED) == ["bad_signature"] * 3


def test_requests_a_key_may_not_make_are_audited_up_to_the_same_budget(
    base, processes, process_env
):
    # A denied request is refused before the rate limits count it: a read-only key had written
    # an audit record for every order it sent, some three hundred a second, over REST and over
    # the socket alike.
    web = start_web(
        processes,
        env={
            **process_env,
            "REDIS_KEY_PREFIX": f"{process_env['REDIS_KEY_PREFIX']}deny-{get_random_string(6)}:",
            "RATE_LIMIT_AUTH_FAILURES_IP_PER_MINUTE": "3",
        },
        name="web-deny-limited",
    )
    instrument = make_instrument()
    reader = ApiClient(web, permissions=("read",))
    early_in_a_minute()
    refused = [reader.place(**buy(instrument.symbol)) for _ in range(4)]
    assert [r.status_code for r in refused] == [403, 403, 403, 429]
    assert refused[3].json()["error"] == "TooManyRequests"
    assert 1 <= int(refused[3].headers["Retry-After"]) <= 60
    assert (
        audit_reasons(reader.user, AuditEvent.API_KEY_ACCESS_DENIED) == ["missing_permission"] * 3
    )
    assert reader.get("/api/v1/orders").status_code == 200  # what the key may do, it does

    async def socket_places() -> list[int]:
        statuses = []
        async with websockets.connect(web.replace("http://", "ws://") + "/ws/v1") as ws:
            login = ws_login_message(
                api_key=reader.api_key.key, secret=reader.secret, timestamp_ms=now_ms()
            )
            await ws.send(json.dumps(login))
            for n in range(3):
                await ws.send(json.dumps({"op": "order.place", "id": n, **buy(instrument.symbol)}))
                frame = json.loads(await asyncio.wait_for(ws.recv(), 15))
                while frame["type"] != "response":
                    frame = json.loads(await asyncio.wait_for(ws.recv(), 15))
                statuses.append(frame["status"])
        return statuses

    assert asyncio.run(socket_places()) == [403] * 3
    # The socket's records are written on a view thread: none may appear for a second.
    deadline = time.monotonic() + 1
    while time.monotonic() < deadline:
        denied = audit_reasons(reader.user, AuditEvent.API_KEY_ACCESS_DENIED)
        assert denied == ["missing_permission"] * 3
        time.sleep(0.1)


def test_a_compliance_officers_key_needs_read_for_the_audit_api(base):
    officer = make_user("compliance")
    officer.is_staff = True
    officer.save(update_fields=["is_staff"])
    officer.user_permissions.add(
        Permission.objects.get(content_type__app_label="audit", codename="view_audit_trail")
    )
    path = f"/api/v1/audit/users/{officer.pk}/activity"
    trade_only = ApiClient(base, officer, permissions=("trade",)).get(path)
    assert trade_only.status_code == 403 and trade_only.json()["error"] == "ApiKeyPermissionMissing"
    assert ApiClient(base, officer, permissions=("read",)).get(path).status_code == 200


def test_socket_order_entry_counts_against_the_same_limits(limited_web):
    instrument = make_instrument()
    created = make_api_key(make_user())
    ws_url = limited_web.replace("http://", "ws://") + "/ws/v1"

    async def answer(ws) -> dict:
        while True:
            frame = json.loads(await asyncio.wait_for(ws.recv(), 15))
            if frame.get("type") in ("response", "login", "error"):
                return frame

    async def scenario() -> list[dict]:
        async with websockets.connect(ws_url, ping_interval=None) as ws:
            login = ws_login_message(
                api_key=created.api_key.key, secret=created.secret, timestamp_ms=now_ms()
            )
            await ws.send(json.dumps(login))
            assert (await answer(ws))["type"] == "login"
            answers = []
            for n in range(3):
                await ws.send(json.dumps({"op": "order.place", "id": n, **buy(instrument.symbol)}))
                answers.append(await answer(ws))
            return answers

    early_in_a_minute()
    first, second, third = asyncio.run(scenario())
    assert first["status"] in (201, 202) and second["status"] in (201, 202)
    assert third["status"] == 429 and third["error"]["error"] == "TooManyRequests"
    assert 1 <= third["error"]["retry_after"] <= 60


def test_a_socket_place_refused_by_the_rate_limit_holds_up_no_later_op(
    base, processes, process_env
):
    # A refused place was never marked settled: every later cancel, amend and cancel_all on
    # the socket waited its 5 s for it (PLACES_BEFORE_CANCEL_WAIT_SECONDS), for good.
    web = start_web(
        processes,
        env={**process_env, "RATE_LIMIT_ORDERS_KEY_PER_SECOND": "2"},
        name="web-limited-per-second",
    )
    instrument = make_instrument()
    created = make_api_key(make_user())

    async def answer(ws) -> dict:
        while True:
            frame = json.loads(await asyncio.wait_for(ws.recv(), 15))
            if frame.get("type") in ("response", "login", "error"):
                return frame

    async def scenario() -> tuple[list[dict], list[float]]:
        async with websockets.connect(web.replace("http://", "ws://") + "/ws/v1") as ws:
            login = ws_login_message(
                api_key=created.api_key.key, secret=created.secret, timestamp_ms=now_ms()
            )
            await ws.send(json.dumps(login))
            assert (await answer(ws))["type"] == "login"
            for n in range(3):
                await ws.send(json.dumps({"op": "order.place", "id": n, **buy(instrument.symbol)}))
            placed = sorted([await answer(ws) for _ in range(3)], key=lambda a: a["status"])
            first, second = (a["data"]["order_id"] for a in placed[:2])
            await asyncio.sleep(1.2)  # the next second: the limit admits ops again
            waits = []
            for op in (
                {"op": "order.cancel", "order_id": first},
                {"op": "order.amend", "order_id": second, "quantity": "2"},
            ):
                sent = time.monotonic()
                await ws.send(json.dumps({**op, "id": "later"}))
                placed.append(await answer(ws))
                waits.append(time.monotonic() - sent)
            return placed, waits

    answers, waits = asyncio.run(scenario())
    assert answers[2]["status"] == 429, answers
    assert [a["status"] for a in answers[3:]] == [200, 200], answers
    assert max(waits) < 3, waits


def test_a_key_revoked_or_a_user_deactivated_elsewhere_is_refused_at_once(base):
    """The web process keeps credentials in a cache; a revocation or a deactivation made by
    another process (here the test's) is seen on the very next request."""
    from accounts.api_keys import api_key_revoke

    user, other = make_user(), make_user()
    keys = [make_api_key(u) for u in (user, user, other)]

    def status(created) -> int:
        return send_signed(
            base, created.api_key.key, created.secret, "GET", "/api/v1/orders"
        ).status_code

    assert [status(k) for k in keys] == [200, 200, 200]  # now cached by the web process
    api_key_revoke(api_key=keys[0].api_key, actor=user)
    assert [status(k) for k in keys] == [401, 200, 200]
    other.is_active = False
    other.save(update_fields=["is_active"])
    assert [status(k) for k in keys] == [401, 200, 401]


def test_me_says_who_signed_a_request_and_with_which_key(base):
    """The user id that /users/{user_id}/deposit, /withdraw and /fee-tier take was on no REST
    answer: an API client had to read it off the account page's HTML."""
    client = ApiClient(base, permissions=("read",))
    me = client.get("/api/v1/me")
    assert me.status_code == 200, me.text
    assert me.json() == {
        "user_id": client.user.pk,
        "email": client.user.email,
        "api_key": {"id": client.api_key.pk, "permissions": ["read"]},
    }
    with session_client(base, client.user) as browser:
        assert browser.get("/api/v1/me").json()["api_key"] is None
    assert httpx.get(f"{base}/api/v1/me").status_code == 401

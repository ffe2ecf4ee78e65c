"""The API when the database drops the web process's connections (a restart, a failover): a
503 a client can retry, never Django's HTML 500 page, and the next requests work again."""

import time
import uuid

import httpx
import pytest
from django.db import connection

from conftest import start_web
from exchange.models import Order
from exchange.tests.api_client import ApiKeyAuth, make_api_key, make_instrument, make_user

pytestmark = [pytest.mark.processes, pytest.mark.django_db(transaction=True)]


def test_dropped_database_connections_are_a_retryable_503_then_requests_work(
    processes, process_env
):
    app_name = f"outage-web-{uuid.uuid4().hex[:8]}"  # names this web process's sessions
    base_url = start_web(processes, env={**process_env, "PGAPPNAME": app_name})
    instrument = make_instrument()
    key = make_api_key(make_user())
    client = httpx.Client(
        base_url=base_url, auth=ApiKeyAuth(key.api_key.key, key.secret), timeout=15
    )
    order = {
        "symbol": instrument.symbol,
        "side": "buy",
        "order_type": "limit",
        "price": "10.00",
        "quantity": "1",
        "client_order_id": "after-outage",
    }
    assert client.get("/api/v1/orders").status_code == 200  # its pool holds connections now

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE application_name = %s",
            [app_name],
        )
        assert cursor.fetchone()[0] >= 1

    unavailable = []
    for _ in range(40):  # each dead pooled connection fails one request, then is replaced
        response = client.post("/api/v1/orders", json=order)
        if response.status_code != 503:
            break
        unavailable.append(response)
    assert unavailable, "no request met a dropped connection"
    # Logged as the outage it is, not as a 500 with a traceback (false alerts on 500s).
    log = (processes.log_dir / "web.log").read_text()
    assert "Service Unavailable" in log and "Internal Server Error" not in log
    for refused in unavailable:
        assert refused.headers["content-type"] == "application/json"
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["error"] == "ServiceUnavailable"
        assert refused.json()["code"] == -1001
    # Retried with the same client_order_id: stored once (no worker runs: pending_new).
    assert response.status_code == 202, response.text
    replay = client.post("/api/v1/orders", json=order)
    assert replay.status_code == 202 and replay.json()["order_id"] == response.json()["order_id"]
    assert Order.objects.filter(client_order_id="after-outage").count() == 1


def test_a_socket_login_without_the_database_is_a_retryable_service_unavailable(
    processes, process_env
):
    # It was MalformedRequest "the request could not be handled": a client told its request
    # is malformed does not retry it.
    import asyncio
    import json

    import websockets

    from accounts.signing import ws_login_message

    out_of_reach = "postgres://postgres@127.0.0.1:1/unreachable?connect_timeout=1"
    base_url = start_web(processes, env={**process_env, "DATABASE_URL": out_of_reach})
    key = make_api_key(make_user())
    login = ws_login_message(
        api_key=key.api_key.key, secret=key.secret, timestamp_ms=int(time.time() * 1000)
    )

    async def scenario():
        url = base_url.replace("http://", "ws://") + "/ws/v1"
        async with websockets.connect(url, ping_interval=None) as ws:
            await ws.send(json.dumps({**login, "id": 1}))
            while True:
                frame = json.loads(await asyncio.wait_for(ws.recv(), 30))
                if frame.get("type") == "ping":  # the server's keep-alive: answered
                    await ws.send(json.dumps({"op": "pong", "id": frame["id"]}))
                elif frame.get("id") == 1:
                    return frame

    refused = asyncio.run(scenario())
    assert (refused["type"], refused["error"], refused["code"]) == (
        "error", "ServiceUnavailable", -1001
    )  # fmt: skip


def test_order_entry_behind_a_stuck_lock_holder_is_a_retryable_503_in_bounded_time(
    processes, process_env
):
    # A matching worker stopped mid-batch (SIGSTOP) holds its users' ledger locks: every
    # order entry batch waited behind it without end, for every user.
    import psycopg

    from accounts.ledger import USERS_LOCK_SQL, users_lock_params

    base_url = start_web(processes, env={**process_env, "DB_LOCK_TIMEOUT_MS": "1000"})
    instrument = make_instrument()
    user = make_user()
    key = make_api_key(user)
    client = httpx.Client(
        base_url=base_url, auth=ApiKeyAuth(key.api_key.key, key.secret), timeout=30
    )
    order = {"symbol": instrument.symbol, "side": "buy", "order_type": "limit",
             "price": "10.00", "quantity": "1"}  # fmt: skip
    with psycopg.connect(process_env["DATABASE_URL"]) as stuck:  # a transaction left open
        stuck.execute(USERS_LOCK_SQL, users_lock_params([user.pk]))
        started = time.monotonic()
        refused = client.post("/api/v1/orders", json=order)
        waited = time.monotonic() - started
        stuck.rollback()
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"] == "ServiceUnavailable" and waited < 10
    assert not Order.objects.filter(user=user).exists()  # nothing half-stored
    assert client.post("/api/v1/orders", json=order).status_code in (201, 202)

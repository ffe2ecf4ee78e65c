"""The API when the database drops the web process's connections (a restart, a failover): a
503 a client can retry, never Django's HTML 500 page, and the next requests work again."""

import time
import uuid
from decimal import Decimal

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
    # Logged as the outage it is, not as a bug (a traceback at ERROR for each entry batch).
    log = (processes.log_dir / "web.log").read_text()
    assert "order entry batch failed: database out of reach" in log
    assert "Traceback" not in log and '"level":"error"' not in log


def test_an_order_committed_before_the_database_failed_is_answered_202_not_503(settings):
    # The answer's read-back (waiting for the engine) met a dropped connection after the order
    # had committed: a 503 told the client to retry, and the retried order was placed twice.
    from exchange.order_answers import order_placed_answer
    from exchange.order_rules import OrderRequest
    from exchange.services import order_place

    settings.ORDER_REPLY_TIMEOUT_SECONDS = 0.2  # no matching worker here
    instrument = make_instrument()
    placed = order_place(
        user=make_user(),
        request=OrderRequest(
            symbol=instrument.symbol,
            side="buy",
            order_type="limit",
            price=Decimal("10.00"),
            quantity=Decimal("1"),
        ),
    )
    # Every other session of this database ends (a failover, say), the pool's idle ones too.
    import psycopg

    from matching.lease import database_conninfo

    with psycopg.connect(database_conninfo(), autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    status, body = order_placed_answer(placed.order, placed.command_id, placed.created)
    assert (status, body["order_id"], body["status"]) == (202, placed.order.pk, "pending_new")
    connection.close()
    assert Order.objects.filter(pk=placed.order.pk).count() == 1


def test_a_session_idle_inside_a_transaction_is_ended_and_lets_its_locks_go(process_env):
    # A web process stopped mid-transaction held the order entry's command-order lock, and
    # every process's order entry waited on it without end: PostgreSQL now ends such a session
    # (DB_IDLE_IN_TRANSACTION_TIMEOUT_MS, 15 s; 1 s here).
    import subprocess
    import sys

    from conftest import BASE_DIR

    script = (
        "import time, django; django.setup()\n"
        "from django.db import connection, transaction\n"
        "with transaction.atomic():\n"
        "    connection.cursor().execute('SELECT pg_advisory_xact_lock(424242)')\n"
        "    time.sleep(4)\n"  # idle in the transaction, as a stopped process would be
    )
    env = {**process_env, "DB_IDLE_IN_TRANSACTION_TIMEOUT_MS": "1000"}
    holder = subprocess.Popen([sys.executable, "-c", script], cwd=BASE_DIR, env=env)
    try:
        time.sleep(1.0)
        started = time.monotonic()
        with connection.cursor() as cursor:
            cursor.execute("SET lock_timeout = '10s'")
            cursor.execute("SELECT pg_advisory_xact_lock(424242)")
        assert time.monotonic() - started < 3.5  # ended after ~1 s idle, not at the sleep's end
    finally:
        holder.wait(timeout=30)


def backend_pids(application_name: str, *, waiting_on_lock: bool = False) -> list[int]:
    """The database sessions named `application_name` (only those waiting for a lock)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s"
            + (" AND wait_event_type = 'Lock'" if waiting_on_lock else ""),
            [application_name],
        )
        return [row[0] for row in cursor.fetchall()]


@pytest.mark.parametrize("lock", ["command-order", "ledger"])
def test_a_web_process_stopped_while_its_batch_waits_for_a_lock_holds_no_order_entry(
    processes, process_env, lock
):
    # A web process stopped (SIGSTOP, a paused host) while its order entry batch waited for the
    # command-order lock (or its user's ledger lock) got it while stopped, and kept it: the
    # session sat idle in its transaction for good, since a psycopg pipeline ends with a Flush
    # after its Sync, and a message after the Sync turns PostgreSQL's idle-in-transaction timer
    # off. Every process's order entry (that user's) then failed (503 after
    # DB_LOCK_TIMEOUT_MS) until the process woke up.
    import os
    import signal
    import threading

    import psycopg

    from accounts.ledger import USERS_LOCK_SQL, users_lock_params
    from conftest import wait_until
    from exchange.order_rules import OrderRequest
    from exchange.services import order_place
    from matching.services import COMMAND_ORDER_LOCK_SQL

    app_name = f"stopped-web-{uuid.uuid4().hex[:8]}"
    env = {**process_env, "PGAPPNAME": app_name, "DB_LOCK_TIMEOUT_MS": "0",
           "DB_IDLE_IN_TRANSACTION_TIMEOUT_MS": "1000"}  # fmt: skip
    web = start_web(processes, env=env)
    web_process = processes.started[-1]
    instrument = make_instrument()
    user = make_user()
    key = make_api_key(user)
    client = httpx.Client(base_url=web, auth=ApiKeyAuth(key.api_key.key, key.secret), timeout=30)
    order = {"symbol": instrument.symbol, "side": "buy", "order_type": "limit",
             "price": "10.00", "quantity": "1", "client_order_id": "stalled"}  # fmt: skip
    answers = []
    with psycopg.connect(process_env["DATABASE_URL"]) as blocker:
        if lock == "ledger":  # another transaction moving the user's money
            blocker.execute(USERS_LOCK_SQL, users_lock_params([user.pk]))
        else:  # another transaction enqueuing commands
            blocker.execute(COMMAND_ORDER_LOCK_SQL)
        sender = threading.Thread(
            target=lambda: answers.append(client.post("/api/v1/orders", json=order))
        )
        sender.start()
        (batch_pid,) = wait_until(lambda: backend_pids(app_name, waiting_on_lock=True), timeout=15)
        os.killpg(web_process.pid, signal.SIGSTOP)
        try:
            blocker.rollback()  # the stopped process's batch now holds that lock
            # PostgreSQL ends its session (1 s idle in the transaction), and the lock is free:
            # another process's order of that user (here the test's own) is stored meanwhile.
            wait_until(lambda: batch_pid not in backend_pids(app_name), timeout=15)
            other = order_place(
                user=user,
                request=OrderRequest(symbol=instrument.symbol, side="buy", order_type="limit",
                                     price=Decimal("10.00"), quantity=Decimal("1")),
            )  # fmt: skip
            assert other.created
        finally:
            os.killpg(web_process.pid, signal.SIGCONT)
        sender.join(30)
    # The stopped process's client is told to retry; nothing of its batch was stored.
    (refused,) = answers
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"] == "ServiceUnavailable"
    assert refused.headers["retry-after"] == "1"
    assert not Order.objects.filter(user=user, client_order_id="stalled").exists()
    retried = client.post("/api/v1/orders", json=order)
    assert retried.status_code == 202, retried.text  # no worker runs: pending_new
    assert Order.objects.filter(user=user, client_order_id="stalled").count() == 1
    log = (processes.log_dir / "web.log").read_text()
    assert "order entry batch failed: database out of reach" in log
    assert "Traceback" not in log and "Internal Server Error" not in log


def test_a_session_ended_idle_in_its_transaction_is_a_retryable_503_not_a_500():
    # PostgreSQL ends a session left idle inside its transaction past
    # DB_IDLE_IN_TRANSACTION_TIMEOUT_MS (a process stalled mid-transaction) with SQLSTATE 25P03,
    # which psycopg raises as an InternalError, not an OperationalError: the order entry batch
    # logged a traceback at ERROR and its clients got 500 Error, which a client does not retry,
    # for an order rolled back whole.
    from django.db import DatabaseError, transaction

    from exchange.api_errors import error_answer
    from exchange.order_rules import OrderRequest
    from exchange.services import order_place

    instrument = make_instrument()
    user = make_user()
    with pytest.raises(DatabaseError) as ended, transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL idle_in_transaction_session_timeout = 200")
        time.sleep(1.0)  # stalled: PostgreSQL ends the session meanwhile
        order_place(
            user=user,
            request=OrderRequest(symbol=instrument.symbol, side="buy", order_type="limit",
                                 price=Decimal("10.00"), quantity=Decimal("1")),
        )  # fmt: skip
    assert getattr(ended.value.__cause__, "sqlstate", None) == "25P03", repr(ended.value)
    status, body = error_answer(ended.value)
    assert (status, body["error"], body["code"]) == (503, "ServiceUnavailable", -1001)
    connection.close()
    assert not Order.objects.filter(user=user).exists()  # nothing half-stored


def test_a_mass_cancel_committed_before_the_database_failed_is_answered_202_not_503(settings):
    # As for an order: the mass cancel is committed and on its way to the engine when its
    # answer's wait meets a dropped connection; a 503 told the client to retry it, and the
    # retry also cancelled every order placed in between.
    import psycopg

    from exchange.order_answers import mass_cancel_answer
    from exchange.order_rules import OrderRequest
    from exchange.services import order_place, orders_mass_cancel
    from matching.lease import database_conninfo
    from matching.models import Command

    settings.ORDER_REPLY_TIMEOUT_SECONDS = 0.2  # no matching worker here
    instrument, user = make_instrument(), make_user()
    order_place(
        user=user,
        request=OrderRequest(symbol=instrument.symbol, side="buy", order_type="limit",
                             price=Decimal("10.00"), quantity=Decimal("1")),
    )  # fmt: skip
    command_ids = orders_mass_cancel(user=user, actor=user, symbol=instrument.symbol)
    assert command_ids
    # Every other session of this database ends (a failover, say), the pool's idle ones too.
    with psycopg.connect(database_conninfo(), autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    assert mass_cancel_answer(command_ids) == (202, {"command_ids": command_ids})
    connection.close()
    assert Command.objects.filter(pk__in=command_ids).count() == len(command_ids)

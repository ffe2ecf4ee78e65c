"""The watchdog of sessions stopped mid-statement (exchange/stalled_sessions.py), against real
web, matching and Celery processes."""

import asyncio
import contextlib
import os
import signal
import socket
import threading
import time

import httpx
import psycopg
import pytest

from audit.events import AuditEvent
from audit.models import AuditRecord
from conftest import celery_command, start_web, wait_until
from exchange.models import Order, Trade
from exchange.redis_connection import redis_client
from exchange.tests.api_client import ApiClient, ApiKeyAuth, limit, make_api_key, make_instrument
from matching.heartbeat import heartbeat_key
from matching.models import Command

pytestmark = [pytest.mark.processes, pytest.mark.django_db(transaction=True)]

LIMIT_MS = 2000  # DB_IDLE_IN_TRANSACTION_TIMEOUT_MS here: the watchdog checks every second


def copy_sessions(monitor: psycopg.Connection, application_name: str, *, waiting: bool) -> list:
    """The sessions named `application_name` in the middle of a COPY (only those waiting for
    their client to send the rows), with when their COPY began."""
    return monitor.execute(
        "SELECT pid, query_start FROM pg_stat_activity WHERE application_name = %s"
        " AND state = 'active' AND query LIKE 'COPY %%'"
        + (" AND wait_event = 'ClientRead'" if waiting else ""),
        [application_name],
    ).fetchall()


def stop_inside_a_copy(monitor, web_process, application_name: str, *, timeout: float) -> int:
    """SIGSTOP the web process while one of its sessions is inside the COPY of an order entry
    batch (tried again, after a SIGCONT, when it was stopped elsewhere); that session's pid."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not copy_sessions(monitor, application_name, waiting=False):
            continue
        os.killpg(web_process.pid, signal.SIGSTOP)
        time.sleep(0.3)  # what it had sent is taken in: the COPY waits for the rest
        first = copy_sessions(monitor, application_name, waiting=True)
        time.sleep(0.3)
        if first and copy_sessions(monitor, application_name, waiting=True) == first:
            return first[0][0]
        os.killpg(web_process.pid, signal.SIGCONT)  # stopped after its COPY: again
    raise AssertionError("the web process was never stopped inside a COPY")


def test_a_web_process_stopped_inside_its_batch_copy_holds_no_locks_past_the_limit(
    processes, process_env
):
    # A web process stopped (SIGSTOP, a paused host) in the middle of its order entry batch's
    # COPY left its session `active`, waiting on ClientRead: PostgreSQL's idle-in-transaction
    # timer does not run for it, nor statement_timeout. It kept its users' ledger locks (and,
    # past the commands, the command-order lock) for as long as it stayed stopped: the worker's
    # settlement of those users and other processes' order entry waited behind it.
    env = {**process_env, "DB_IDLE_IN_TRANSACTION_TIMEOUT_MS": str(LIMIT_MS),
           "RATE_LIMIT_ENABLED": "false"}  # fmt: skip
    processes.manage("run_matching", "--shard", "0", env=env, name="matching-0")
    processes.start(celery_command("worker", "--pool", "solo"), env=env, name="celery-worker")
    processes.start(celery_command("beat"), env=env, name="celery-beat")
    wait_until(lambda: redis_client().get(heartbeat_key(0)), timeout=60, interval=0.2)
    other_web = start_web(processes, env={**env, "DB_LOCK_TIMEOUT_MS": "0"}, name="web-b")
    stopped_web = start_web(processes, env={**env, "API_VIEW_THREADS": "64"}, name="web-a")
    web_process = processes.started[-1]
    application_name = f"exchange:{web_process.pid}@{socket.gethostname()}"[:63]

    instrument = make_instrument()
    symbol = instrument.symbol
    seller = ApiClient(other_web)
    resting = seller.place(**limit(symbol, "sell", "10.50", "1"))
    assert resting.status_code in (201, 202), resting.text
    wait_until(
        lambda: Order.objects.filter(pk=resting.json()["order_id"], status="new").exists(),
        timeout=30,
    )
    # The seller's orders arrive at web A together: large batches, each written with COPY.
    key = make_api_key(seller.user)
    answers: list[httpx.Response | Exception] = []
    loading = threading.Event()
    loading.set()

    async def load() -> None:
        auth = ApiKeyAuth(key.api_key.key, key.secret)
        async with httpx.AsyncClient(base_url=stopped_web, auth=auth, timeout=120) as client:

            async def sender() -> None:
                while loading.is_set():
                    try:
                        answers.append(
                            await client.post(
                                "/api/v1/orders", json=limit(symbol, "buy", "10.00", "1")
                            )
                        )
                    except httpx.HTTPError as exc:
                        answers.append(exc)

            await asyncio.gather(*(sender() for _ in range(48)))

    loader = threading.Thread(target=lambda: asyncio.run(load()))
    loader.start()
    try:
        with psycopg.connect(process_env["DATABASE_URL"], autocommit=True) as monitor:
            stalled_pid = stop_inside_a_copy(monitor, web_process, application_name, timeout=60)
            stopped_at = time.monotonic()
            loading.clear()
            try:
                # Another process's order entry for that user, and the worker's settlement of
                # a trade with that user, go on once the watchdog has ended the session.
                buyer = ApiClient(other_web)
                buyer.http.timeout = httpx.Timeout(30)
                crossing = buyer.place(**limit(symbol, "buy", "10.50", "1"))
                assert crossing.status_code in (201, 202), crossing.text
                seller.http.timeout = httpx.Timeout(30)
                after = seller.place(**limit(symbol, "buy", "10.00", "1", client_order_id="after"))
                assert after.status_code in (201, 202), after.text
                wait_until(
                    lambda: Trade.objects.filter(taker_order_id=crossing.json()["order_id"]),
                    timeout=30,
                )
                went_on_after = time.monotonic() - stopped_at
                assert stalled_pid not in [
                    p for p, _ in copy_sessions(monitor, application_name, waiting=False)
                ]
            finally:
                os.killpg(web_process.pid, signal.SIGCONT)
    finally:
        loading.clear()
        loader.join(180)
    # Within the limit and the watchdog's period (1 s), with room for a busy machine (~4.5 s
    # measured); without the watchdog they waited for as long as the process stayed stopped.
    assert went_on_after < LIMIT_MS / 1000 + 1 + 10, went_on_after

    # The stopped batch rolled back whole: its clients were told to retry, and every order of
    # the seller stored is one answered as stored, with its command and audit record.
    refused = [a for a in answers if isinstance(a, httpx.Response) and a.status_code == 503]
    assert refused, "no order of the stopped batch was refused"
    stored = {
        a.json()["order_id"]
        for a in answers
        if isinstance(a, httpx.Response) and a.status_code in (201, 202)
    }
    seller_orders = set(Order.objects.filter(user=seller.user).values_list("pk", flat=True))
    assert seller_orders == stored | {resting.json()["order_id"], after.json()["order_id"]}
    placed = set(
        Command.objects.filter(kind="place", order_id__in=seller_orders).values_list(
            "order_id", flat=True
        )
    )
    submitted = set(
        AuditRecord.objects.filter(
            event_type="order.submitted", order_id__in=seller_orders
        ).values_list("order_id", flat=True)
    )
    assert placed == submitted == seller_orders

    # What the watchdog ended is audited and logged.
    (ended,) = AuditRecord.objects.filter(
        event_type=AuditEvent.STALLED_SESSION_ENDED, payload__backend_pid=stalled_pid
    )
    assert ended.payload["session"] == application_name
    assert ended.payload["statement"].startswith("COPY ")
    assert "stalled database session ended" in (processes.log_dir / "celery-worker.log").read_text()


def test_only_this_deployments_sessions_stalled_mid_statement_past_the_limit_are_ended(
    process_env,
):
    # A statement that runs (here a sleep) is `active` too, and another application's COPY
    # waits on its client as ours do: neither is ended; ours (a web process's, a matching
    # worker's) are, once past the limit.
    from exchange.stalled_sessions import stalled_sessions_end
    from matching.lease import session_name

    stop = threading.Event()

    def session(application_name: str, statement: str) -> psycopg.Connection:
        conn = psycopg.connect(process_env["DATABASE_URL"], application_name=application_name)

        def run() -> None:
            with contextlib.suppress(psycopg.Error):
                if statement == "copy":
                    conn.execute("CREATE TEMP TABLE stalled (x int)")
                    with conn.cursor().copy("COPY stalled FROM STDIN") as copy:
                        copy.write_row([1])
                        stop.wait(30)  # the client stops sending mid-COPY
                else:
                    conn.execute(statement)

        threading.Thread(target=run, daemon=True).start()
        return conn

    web = session(f"exchange:{os.getpid() + 1}@elsewhere", "copy")
    worker = session(session_name(os.getpid() + 2), "copy")
    foreign = session("psql", "copy")
    busy = session(f"exchange:{os.getpid() + 3}@elsewhere", "SELECT pg_sleep(6)")
    sessions = (web, worker, foreign, busy)
    backends = [conn.info.backend_pid for conn in sessions]
    try:
        with psycopg.connect(process_env["DATABASE_URL"], autocommit=True) as monitor:

            def under_way() -> bool:
                return monitor.execute(
                    "SELECT count(*) = 4 FROM pg_stat_activity WHERE pid = ANY(%s)"
                    " AND state = 'active' AND wait_event IN ('ClientRead', 'PgSleep')",
                    [backends],
                ).fetchone()[0]

            wait_until(under_way, timeout=10)
            assert stalled_sessions_end(limit_ms=2000) == []  # not stalled that long yet
            assert stalled_sessions_end(limit_ms=0) == []  # the watchdog off
            ended: list[dict] = []

            def both_ended() -> bool:  # their COPYs began a moment apart: maybe one at a time
                ended.extend(stalled_sessions_end(limit_ms=2000))
                return len(ended) >= 2

            wait_until(both_ended, timeout=10)
            assert sorted(session["backend_pid"] for session in ended) == sorted(backends[:2])
            assert {session["statement"] for session in ended} == {"COPY stalled FROM STDIN"}
            alive = monitor.execute(
                "SELECT pid FROM pg_stat_activity WHERE pid = ANY(%s)", [backends]
            ).fetchall()
            assert sorted(pid for (pid,) in alive) == sorted(backends[2:])
    finally:
        stop.set()
        for conn in sessions:
            conn.close()

"""Crashes lose nothing and apply nothing twice: kill -9 under supervisord, standby takeover,
a failed commit, a command that fails twice, a Redis wipe mid-stream and Redis out of reach."""

import contextlib
import json
import os
import signal
import socket
import sys
import threading
import time
from decimal import Decimal
from urllib.parse import urlsplit, urlunsplit

import psutil
import pytest
from django.db import connection

from accounts.ledger import funds_deposit
from audit.models import AuditRecord
from conftest import BASE_DIR, RUN_PREFIX, wait_until
from exchange.embedded_servers import free_port
from exchange.models import Order
from exchange.services import order_amend
from exchange.tests.api_client import make_user
from matching.heartbeat import heartbeat_key
from matching.models import Command, ShardState
from matching.tests.order_flow import OrderFlow
from matching.tests.order_rows import instrument_create, order_row_place
from matching.tests.worker_checks import (
    all_commands_applied,
    exactly_once_invariants,
    matching_verify,
)
from matching.transport import book_snapshot_key

pytestmark = [pytest.mark.processes, pytest.mark.django_db(transaction=True)]


def holder_pid(redis_conn) -> int | None:
    value = redis_conn.get(heartbeat_key(0))
    return json.loads(value)["pid"] if value else None


def serving_pid(redis_conn, *, other_than: int | None = None) -> int:
    """The pid of the live lease holder once it has recovered and serves (not `other_than`)."""

    def serving():
        pid = holder_pid(redis_conn)
        if not pid or pid == other_than or not psutil.pid_exists(pid):
            return None
        state = ShardState.objects.filter(shard=0).first()
        return pid if state and state.holder.endswith(f":{pid}") else None

    return wait_until(serving, timeout=45, interval=0.1)


def holder_and_standby(processes, env, redis_conn):
    """Two shard-0 workers: the one serving (lease held), and a standby waiting for it."""
    holder = processes.manage("run_matching", "--shard", "0", env=env, name="holder")
    assert serving_pid(redis_conn) == holder.pid
    standby = processes.manage("run_matching", "--shard", "0", env=env, name="standby")
    wait_until(lambda: "waiting for lease" in standby.log_path.read_text(), timeout=30)
    return holder, standby


def final_checks(flow: OrderFlow, env) -> None:
    assert not flow.errors
    all_commands_applied(timeout=90)
    ids = flow.acked
    assert len(ids) == len(set(ids)) > 50
    stored = dict(Order.objects.filter(pk__in=ids).values_list("pk", "status"))
    assert set(stored) == set(ids), "every acknowledged order is stored"
    assert "pending_new" not in stored.values(), "every acknowledged order was applied"
    exactly_once_invariants()
    assert "OK" in matching_verify(env)


def supervisord_conf(tmp_path, env) -> str:
    command = f"{sys.executable} manage.py run_matching --shard 0"
    path = tmp_path / "supervisord.conf"
    path.write_text(
        "\n".join(
            [
                "[supervisord]",
                "nodaemon=true",
                f"logfile={tmp_path / 'supervisord.log'}",
                f"pidfile={tmp_path / 'supervisord.pid'}",
                "[unix_http_server]",
                f"file={tmp_path / 'supervisor.sock'}",
                "[rpcinterface:supervisor]",
                "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
                "[program:matching-0]",
                f"command={command}",
                f"directory={BASE_DIR}",
                "autostart=true",
                "autorestart=true",
                "startsecs=0",
                "startretries=100",
                "stopasgroup=true",
                "killasgroup=true",
                "redirect_stderr=true",
                f"stdout_logfile={tmp_path / 'matching.log'}",
                "",
            ]
        )
    )
    return str(path)


def test_kill_9_under_supervisord_loses_and_duplicates_nothing(
    processes, process_env, redis_conn, tmp_path
):
    instrument = instrument_create()
    users = [make_user() for _ in range(4)]
    processes.start(
        [sys.executable, "-m", "supervisor.supervisord", "-c", supervisord_conf(tmp_path, {})],
        env=process_env,
        name="supervisord",
    )
    pid = serving_pid(redis_conn)
    flow = OrderFlow(instrument=instrument, users=users)
    flow.start()
    killed = []
    try:
        for _ in range(3):
            time.sleep(1.5)
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            pid = serving_pid(redis_conn, other_than=pid)
        time.sleep(1.0)
    finally:
        flow.stop.set()
        flow.join()
    assert len(set(killed)) == 3
    final_checks(flow, process_env)
    assert ShardState.objects.get(shard=0).lease_epoch >= 4


def test_standby_takes_over_with_orders_flowing(processes, process_env, redis_conn):
    holder, standby = holder_and_standby(processes, process_env, redis_conn)
    flow = OrderFlow(instrument=instrument_create(), users=[make_user() for _ in range(3)], seed=11)
    flow.start()
    try:
        time.sleep(1.5)
        os.killpg(holder.pid, signal.SIGKILL)
        assert serving_pid(redis_conn, other_than=holder.pid) == standby.pid
        time.sleep(1.5)
    finally:
        flow.stop.set()
        flow.join()
    final_checks(flow, process_env)
    last = Order.objects.filter(pk=flow.acked[-1]).values_list("status", flat=True).get()
    assert last != "pending_new"


def test_a_standby_fences_a_hung_holder_and_the_woken_holder_writes_nothing(
    processes, process_env, redis_conn
):
    # A stopped holder (SIGSTOP: a frozen process or paused host) kept its database sessions,
    # so its lease lock and its batch's locks: the standby waited for ever, and so did order
    # entry for the users of the batch in flight.
    env = {**process_env, "MATCHING_LEASE_STALE_SECONDS": "3"}
    holder, standby = holder_and_standby(processes, env, redis_conn)
    flow = OrderFlow(instrument=instrument_create(), users=[make_user() for _ in range(3)], seed=5)
    flow.start()
    try:
        time.sleep(1.5)
        os.killpg(holder.pid, signal.SIGSTOP)
        assert serving_pid(redis_conn, other_than=holder.pid) == standby.pid
        time.sleep(1.0)
        os.killpg(holder.pid, signal.SIGCONT)
        # It wakes to find its sessions gone: it exits (lease lost, or its batch failed),
        # saying so (it had died of an uncaught AdminShutdown, with its traceback).
        assert holder.wait(timeout=30) in (1, 3)
        woke = holder.log_path.read_text().split("shard worker serving", 1)[-1]
        assert "Traceback" not in woke, woke[-3000:]
        time.sleep(1.0)
    finally:
        flow.stop.set()
        flow.join()
    final_checks(flow, process_env)
    takeover = AuditRecord.objects.filter(event_type="worker.shard_takeover").latest("seq")
    fenced = takeover.payload["fenced_holder"]
    assert fenced["session"].startswith(f"exchange-matching:{holder.pid}@")
    assert fenced["pid"] == holder.pid and fenced["backend_pid"] != holder.pid
    assert fenced["idle_seconds"] >= 3 and fenced["sessions_terminated"] >= 2
    # The fencing itself is recorded when it happens (whoever then wins the lease).
    fencing = AuditRecord.objects.get(event_type="worker.holder_fenced")
    assert fencing.payload["fenced_holder"] == fenced
    assert fencing.actor_label == f"worker:{takeover.payload['holder']}"


def test_workers_whose_sessions_are_ended_exit_to_rebuild_without_a_traceback(
    processes, process_env, redis_conn
):
    # An idle holder's next poll, and a standby's wait for the lease, met their ended sessions
    # (PostgreSQL restarted, or a standby fenced the holder): each died of an uncaught
    # AdminShutdown, traceback and all.
    holder, standby = holder_and_standby(processes, process_env, redis_conn)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT split_part(application_name, '@', 1), pg_terminate_backend(pid)"
            " FROM pg_stat_activity WHERE application_name LIKE %s OR application_name LIKE %s",
            [f"exchange-matching:{holder.pid}@%", f"exchange-matching:{standby.pid}@%"],
        )
        ended = [name for name, terminated in cursor.fetchall() if terminated]
    # The standby's waiting session among them: had it not been open yet, the standby would
    # take the lease the holder lets go of and serve instead of exiting.
    assert ended.count(f"exchange-matching:{standby.pid}") == 1, ended
    assert ended.count(f"exchange-matching:{holder.pid}") >= 2, ended
    # The holder meets it in its poll (3) or in its lease check (1), the standby in its wait.
    for worker, codes in ((holder, (1, 3)), (standby, (3,))):
        assert worker.wait(timeout=30) in codes
        log = worker.log_path.read_text()
        assert "Traceback" not in log, log[-3000:]
        assert "exiting" in log


def test_redis_wipe_mid_stream_loses_no_accepted_order(processes, process_env, redis_conn):
    instrument = instrument_create()
    users = [make_user() for _ in range(3)]
    processes.manage("run_matching", "--shard", "0", env=process_env, name="worker")
    serving_pid(redis_conn)
    flow = OrderFlow(instrument=instrument, users=users, seed=3)
    flow.start()
    try:
        for _ in range(3):
            time.sleep(0.8)
            # What FLUSHALL does to this run: every key gone, stream and consumer group too.
            # (Only this run's prefix, so concurrent test runs on the same Redis are unharmed.)
            keys = list(redis_conn.scan_iter(match=RUN_PREFIX + "*", count=1000))
            if keys:
                redis_conn.delete(*keys)
        time.sleep(0.8)
    finally:
        flow.stop.set()
        flow.join()
    final_checks(flow, process_env)


def test_a_redis_wipe_brings_the_book_snapshots_back_without_a_new_order(
    processes, process_env, redis_conn
):
    # The snapshots were written again only after the worker's next batch on each book: until
    # then GET /orderbook read an empty book at seq 0 (a quiet book stayed so indefinitely).
    instrument = instrument_create()
    processes.manage("run_matching", "--shard", "0", env=process_env, name="worker")
    serving_pid(redis_conn)
    order_row_place(
        user=make_user(), instrument=instrument, side="buy", quantity="3", price="10.00"
    )
    key = book_snapshot_key(instrument.symbol)

    def snapshot_bids():
        raw = redis_conn.get(key)
        return raw and json.loads(raw)["bids"]

    assert wait_until(snapshot_bids, timeout=15)[0][:2] == ["10.00", "3"]
    keys = list(redis_conn.scan_iter(match=RUN_PREFIX + "*", count=1000))
    redis_conn.delete(*keys)  # what FLUSHALL does to this run's keys
    assert redis_conn.get(key) is None
    assert wait_until(snapshot_bids, timeout=10)[0][:2] == ["10.00", "3"]


def test_a_book_whose_snapshot_redis_lost_while_its_worker_was_away_is_a_503_not_an_empty_book(
    processes, process_env, redis_conn, client
):
    # Redis wiped while the shard's worker was down (or still recovering): GET /orderbook,
    # its spread and the ticker said the book was empty at seq 0 (its seq going back from
    # where it was) for as long as the worker stayed away, and so did a new subscription's
    # snapshot on the socket. A book that never changed is empty.
    from websockets.sync.client import connect as ws_connect

    from conftest import start_web

    instrument, quiet = instrument_create(), instrument_create()
    worker = processes.manage("run_matching", "--shard", "0", env=process_env, name="w1")
    serving_pid(redis_conn)
    base_url = start_web(processes, env=process_env)
    order_row_place(
        user=make_user(), instrument=instrument, side="buy", quantity="3", price="10.00"
    )
    book_path = f"/api/v1/orderbook/{instrument.symbol}"

    def book_bids():
        response = client.get(book_path)
        return response.status_code == 200 and response.json()["bids"]

    assert wait_until(book_bids, timeout=15) == [{"price": "10.00", "quantity": "3", "orders": 1}]
    seq = client.get(book_path).json()["seq"]
    assert seq > 0
    worker.terminate()
    worker.wait(timeout=15)
    keys = list(redis_conn.scan_iter(match=RUN_PREFIX + "*", count=1000))
    redis_conn.delete(*keys)  # what FLUSHALL does to this run's keys

    for path in (book_path, f"{book_path}/spread", f"/api/v1/ticker/{instrument.symbol}"):
        response = client.get(path)
        assert response.status_code == 503, (path, response.content)
        assert response.json()["error"] == "ServiceUnavailable", path
        assert response.headers["Retry-After"] == "1", path
    never_changed = client.get(f"/api/v1/orderbook/{quiet.symbol}")
    assert never_changed.status_code == 200
    assert never_changed.json() == {"symbol": quiet.symbol, "seq": 0, "bids": [], "asks": []}

    book, quiet_book = f"book.{instrument.symbol}", f"book.{quiet.symbol}"
    with ws_connect(base_url.replace("http://", "ws://") + "/ws/v1") as ws:
        ws.send(json.dumps({"op": "subscribe", "channels": [book, quiet_book]}))
        refusal = next_frame(ws, lambda f: f.get("type") in ("error", "snapshot"), timeout=15)
        assert (refusal["type"], refusal.get("channel")) == ("error", book), refusal
        assert refusal["error"] == "ServiceUnavailable"
        empty = next_frame(ws, lambda f: f.get("type") == "snapshot", timeout=15)
        assert (empty["channel"], empty["seq"], empty["bids"]) == (quiet_book, 0, [])

        processes.manage("run_matching", "--shard", "0", env=process_env, name="w2")
        assert wait_until(book_bids, timeout=45) == [
            {"price": "10.00", "quantity": "3", "orders": 1}
        ]
        assert client.get(book_path).json()["seq"] == seq

        def subscribed_snapshot():  # as a client refused for the moment: subscribe again
            ws.send(json.dumps({"op": "subscribe", "channels": [book]}))
            frame = next_frame(ws, lambda f: f.get("type") in ("error", "snapshot"), timeout=15)
            return frame if frame["type"] == "snapshot" else None

        snapshot = wait_until(subscribed_snapshot, timeout=15, interval=0.5)
        assert (snapshot["channel"], snapshot["seq"], snapshot["bids"]) == (
            book,
            seq,
            [["10.00", "3"]],
        )


def next_frame(ws, predicate, timeout: float) -> dict:
    """The next frame of socket `ws` that satisfies `predicate`, skipping others; fails
    (TimeoutError) at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        frame = json.loads(ws.recv(timeout=max(deadline - time.monotonic(), 0.01)))
        if predicate(frame):
            return frame


class TcpProxy:
    """A TCP relay to Redis that can be cut (every connection closed, new ones refused) and
    restored on the same port: Redis out of reach for one process only."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self.sockets: list[socket.socket] = []
        self.listener: socket.socket | None = None
        self.lock = threading.Lock()
        self.restore()

    @classmethod
    def to_redis(cls, env: dict) -> "TcpProxy":
        """A relay to the Redis of `env`'s REDIS_URL."""
        url = urlsplit(env["REDIS_URL"])
        return cls((url.hostname, url.port or 6379))

    def redis_url(self, env: dict) -> str:
        """`env`'s REDIS_URL through this relay."""
        return urlunsplit(urlsplit(env["REDIS_URL"])._replace(netloc=f"127.0.0.1:{self.port}"))

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        with self.lock:
            for sock in [self.listener, *self.sockets]:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self.sockets.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            upstream = socket.create_connection(self.target)
            with self.lock:
                self.sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_RDWR)


def test_a_book_snapshot_lost_while_redis_was_out_of_reach_is_written_again(
    processes, process_env, redis_conn
):
    # A batch whose Redis writes failed (Redis out of reach for a moment, its keys kept) left
    # the book's snapshot behind until the book next changed: a quiet book's GET /orderbook,
    # and order entry's price band and market buy holds, read the book before that batch; and
    # so did the socket's copy of it, with nothing published since to show the gap.
    from websockets.sync.client import connect as ws_connect

    from conftest import start_web

    instrument = instrument_create()
    proxy = TcpProxy.to_redis(process_env)
    env = {
        **process_env,
        "REDIS_URL": proxy.redis_url(process_env),
        # The heartbeat outlives the outage, as it does when Redis is out of reach briefly.
        "MATCHING_HEARTBEAT_TTL_MS": "120000",
    }
    worker = processes.manage("run_matching", "--shard", "0", env=env, name="worker")
    serving_pid(redis_conn)
    base_url = start_web(processes, env=process_env)
    user = make_user()
    key = book_snapshot_key(instrument.symbol)
    channel = f"book.{instrument.symbol}"

    def best_bid():
        raw = redis_conn.get(key)
        return raw and json.loads(raw)["bids"] and json.loads(raw)["bids"][0][:2]

    with ws_connect(base_url.replace("http://", "ws://") + "/ws/v1") as ws:
        ws.send(json.dumps({"op": "subscribe", "channels": [channel]}))
        next_frame(ws, lambda f: f.get("type") == "snapshot", timeout=15)
        order_row_place(user=user, instrument=instrument, side="buy", quantity="3", price="10.00")
        next_frame(ws, lambda f: f.get("type") == "update", timeout=15)
        assert wait_until(lambda: best_bid() == ["10.00", "3"], timeout=15)
        proxy.cut()
        try:
            order = order_row_place(
                user=user, instrument=instrument, side="buy", quantity="2", price="11.00"
            )
            wait_until(lambda: Order.objects.get(pk=order.pk).status == "new", timeout=15)
            wait_until(lambda: "only in PostgreSQL" in worker.log_path.read_text(), timeout=15)
        finally:
            proxy.restore()
        assert wait_until(lambda: best_bid() == ["11.00", "2"], timeout=10)
        snapshot = next_frame(ws, lambda f: f.get("type") == "snapshot", timeout=10)
        assert snapshot["bids"][0][:2] == ["11.00", "2"]
    worker.terminate()  # through the proxy still: it clears its long-lived heartbeat
    worker.wait(timeout=15)
    proxy.cut()


def failing_commit_trigger(condition: str) -> None:
    """Make a batch fail at COMMIT (a deferred constraint trigger on the journal)."""
    with connection.cursor() as cursor:
        cursor.execute("CREATE SEQUENCE IF NOT EXISTS test_fail_seq")
        cursor.execute(
            f"""
            CREATE OR REPLACE FUNCTION test_fail_commit() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF {condition} THEN
                    RAISE EXCEPTION 'test: commit refused';
                END IF;
                RETURN NULL;
            END $$;
            CREATE CONSTRAINT TRIGGER test_fail_commit AFTER INSERT ON matching_journalentry
                DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION test_fail_commit();
            """
        )


def failing_commit_trigger_drop() -> None:
    with connection.cursor() as cursor:
        cursor.execute("DROP TRIGGER IF EXISTS test_fail_commit ON matching_journalentry")
        cursor.execute("DROP FUNCTION IF EXISTS test_fail_commit()")
        cursor.execute("DROP SEQUENCE IF EXISTS test_fail_seq")


def test_failed_commit_exits_and_the_restart_recovers(processes, process_env, redis_conn):
    instrument = instrument_create()
    user = make_user()
    first = processes.manage("run_matching", "--shard", "0", env=process_env, name="w1")
    serving_pid(redis_conn)
    resting = order_row_place(
        user=user, instrument=instrument, side="sell", quantity="5", price="10.00"
    )
    all_commands_applied()
    failing_commit_trigger("nextval('test_fail_seq') = 1")  # the next batch fails, once
    try:
        taker = order_row_place(
            user=make_user(), instrument=instrument, side="buy", quantity="2", price="10.00"
        )
        assert first.wait(timeout=30) == 3, "the worker exits when its batch does not commit"
        assert Order.objects.get(pk=taker.pk).status == "pending_new"
        processes.manage("run_matching", "--shard", "0", env=process_env, name="w2")
        all_commands_applied()
    finally:
        failing_commit_trigger_drop()
    assert Order.objects.get(pk=taker.pk).status == "filled"
    assert Order.objects.get(pk=resting.pk).status == "partially_filled"
    exactly_once_invariants()
    assert "OK" in matching_verify(process_env)


def restart_workers_until_all_applied(processes, process_env) -> None:
    """Start a new worker each time the last one exits on a failed batch (as the supervisor
    does), at most three times, until every command is applied."""
    for attempt in range(1, 4):
        wait_until(
            lambda: (
                not Command.objects.filter(applied_at__isnull=True).exists()
                or not any(p.poll() is None for p in processes.started)
            ),
            timeout=30,
        )
        if not Command.objects.filter(applied_at__isnull=True).exists():
            break
        processes.manage("run_matching", "--shard", "0", env=process_env, name=f"w{attempt}")
    all_commands_applied()


def test_command_failing_twice_is_rejected_and_the_rest_applied(processes, process_env, redis_conn):
    instrument = instrument_create()
    user = make_user()
    processes.manage("run_matching", "--shard", "0", env=process_env, name="w0")
    serving_pid(redis_conn)
    all_commands_applied()
    # The place at 20.00 (2000 ticks) can never commit; nothing else is affected.
    failing_commit_trigger("(NEW.command->>0)::int = 1 AND (NEW.command->>7)::bigint = 2000")
    try:
        poison = order_row_place(
            user=user, instrument=instrument, side="sell", quantity="1", price="20.00"
        )
        others = [
            order_row_place(
                user=user, instrument=instrument, side="sell", quantity="1", price="21.00"
            )
            for _ in range(3)
        ]
        restart_workers_until_all_applied(processes, process_env)
    finally:
        failing_commit_trigger_drop()
    poisoned = Order.objects.get(pk=poison.pk)
    assert (poisoned.status, poisoned.reason, poisoned.reject_code) == (
        "rejected",
        "invalid",
        "CommandFailed",
    )
    command = Command.objects.get(order_id=poison.pk)
    assert (command.attempts, command.reject_code, command.apply_seq) == (2, "CommandFailed", None)
    assert {o.status for o in Order.objects.filter(pk__in=[o.pk for o in others])} == {"new"}
    exactly_once_invariants()
    assert "OK" in matching_verify(process_env)


def test_an_amend_failing_twice_gives_back_what_it_held_more(processes, process_env, redis_conn):
    """The amend held 29.90 more at once; rejected as CommandFailed (never applied), that stayed
    held (and the order's held_amount raised) until the order ended."""
    instrument = instrument_create()
    user = make_user()
    processes.manage("run_matching", "--shard", "0", env=process_env, name="w0")
    serving_pid(redis_conn)
    buy = order_row_place(user=user, instrument=instrument, side="buy", quantity="2", price="10.00")
    all_commands_applied()
    held_before = Order.objects.get(pk=buy.pk).held_amount
    funds_deposit(user=user, asset="USD", amount=Decimal("100"), memo="test funds")
    failing_commit_trigger("(NEW.command->>0)::int = 3")  # every batch holding an amend fails
    try:
        order_amend(order=Order.objects.get(pk=buy.pk), quantity=Decimal("5"), actor=user)
        assert Order.objects.get(pk=buy.pk).held_amount > held_before, "held at once"
        restart_workers_until_all_applied(processes, process_env)
    finally:
        failing_commit_trigger_drop()
    amend = Command.objects.get(order_id=buy.pk, kind="amend")
    assert amend.reject_code == "CommandFailed"
    refused = AuditRecord.objects.get(order_id=buy.pk, event_type="order.amend_refused")
    assert refused.payload == {"command": "amend", "reason": "invalid", "code": "CommandFailed"}
    assert refused.user_id == buy.user_id  # the order's user, though the engine never saw it
    order = Order.objects.get(pk=buy.pk)
    assert (order.status, order.quantity) == ("new", Decimal("2"))
    # What it held more is back; so is what the test's order held above its rest's need (1 %
    # for fees): 2 x 10.00, the 0.20 % fee and a minor unit of reserve.
    assert held_before == Decimal("20.20")
    assert order.held_amount == order.hold_remaining == Decimal("20.05")
    exactly_once_invariants()  # the ledger's held USD matches the open orders' holds
    assert "OK" in matching_verify(process_env)


def test_a_takeover_on_a_quiet_shard_tells_book_subscribers_at_once(
    processes, process_env, redis_conn
):
    # A holder killed between its batch's commit and its publish (a halt's status frame) left
    # the hub none the wiser until the new holder's first batch, which on a quiet shard may
    # never come: the new holder now announces its feed once it serves (helper 58).
    from websockets.sync.client import connect as ws_connect

    from conftest import start_web

    instrument = instrument_create()
    holder, standby = holder_and_standby(processes, process_env, redis_conn)
    base_url = start_web(processes, env=process_env)
    channel = f"book.{instrument.symbol}"
    with ws_connect(base_url.replace("http://", "ws://") + "/ws/v1") as ws:
        ws.send(json.dumps({"op": "subscribe", "channels": [channel]}))
        next_frame(ws, lambda f: f.get("type") == "snapshot", timeout=15)
        # A batch the hub sees: it then follows the holder's feed.
        order_row_place(user=make_user(), instrument=instrument, side="buy", quantity="1",
                        price="10.00")  # fmt: skip
        next_frame(ws, lambda f: f.get("type") == "update", timeout=15)
        os.killpg(holder.pid, signal.SIGKILL)
        assert serving_pid(redis_conn, other_than=holder.pid) == standby.pid
        # No order, no batch: the notice comes from the standby's announcement alone.
        notice = next_frame(ws, lambda f: f.get("type") == "resync", timeout=15)
        assert notice == {"type": "resync", "reason": "feed_gap", "lost_channels": [channel]}


def test_a_takeover_gives_book_subscribers_the_batch_their_holder_never_published(
    processes, process_env, redis_conn
):
    # A holder that committed a batch and died before publishing it (here: Redis out of reach
    # for it, then kill -9) left each web process's copy of the book before that batch: the
    # socket's subscribers were told of a feed gap, but a book subscribed again got the same
    # old copy, and a quiet book stayed so until it next changed.
    from websockets.sync.client import connect as ws_connect

    from conftest import start_web

    instrument = instrument_create()
    proxy = TcpProxy.to_redis(process_env)
    through_proxy = {**process_env, "REDIS_URL": proxy.redis_url(process_env)}
    holder = processes.manage("run_matching", "--shard", "0", env=through_proxy, name="holder")
    assert serving_pid(redis_conn) == holder.pid
    standby = processes.manage("run_matching", "--shard", "0", env=process_env, name="standby")
    wait_until(lambda: "waiting for lease" in standby.log_path.read_text(), timeout=30)
    base_url = start_web(processes, env=process_env)
    channel = f"book.{instrument.symbol}"
    user = make_user()
    with ws_connect(base_url.replace("http://", "ws://") + "/ws/v1") as ws:
        ws.send(json.dumps({"op": "subscribe", "channels": [channel]}))
        next_frame(ws, lambda f: f.get("type") == "snapshot", timeout=15)
        order_row_place(user=user, instrument=instrument, side="buy", quantity="1", price="10.00")
        next_frame(ws, lambda f: f.get("type") == "update", timeout=15)
        proxy.cut()
        order = order_row_place(
            user=user, instrument=instrument, side="buy", quantity="2", price="11.00"
        )
        wait_until(lambda: Order.objects.get(pk=order.pk).status == "new", timeout=15)
        wait_until(lambda: "only in PostgreSQL" in holder.log_path.read_text(), timeout=15)
        os.killpg(holder.pid, signal.SIGKILL)
        assert serving_pid(redis_conn, other_than=holder.pid) == standby.pid
        snapshot = next_frame(ws, lambda f: f.get("type") == "snapshot", timeout=15)
        assert snapshot["bids"][0][:2] == ["11.00", "2"]
        # Subscribed again, as a client told of the gap may do: the same, current book.
        ws.send(json.dumps({"op": "unsubscribe", "channels": [channel]}))
        ws.send(json.dumps({"op": "subscribe", "channels": [channel]}))
        again = next_frame(ws, lambda f: f.get("type") == "snapshot", timeout=15)
        assert again["bids"][0][:2] == ["11.00", "2"]
    proxy.cut()


def test_a_worker_stopped_while_its_batch_waits_for_a_ledger_lock_lets_it_go(
    processes, process_env, redis_conn
):
    # A worker stopped (SIGSTOP, a paused host; no standby to fence it) while its batch waited
    # for a user's ledger lock got it while stopped and kept it: its session sat idle in the
    # transaction for good (a psycopg pipeline ends with a Flush after its Sync, which turns
    # PostgreSQL's idle-in-transaction timer off), and that user's order entry, deposits and
    # withdrawals failed until the process woke up. Woken, the worker exits to rebuild, and the
    # outage is not counted against the batch's commands.
    import psycopg

    from accounts.ledger import USERS_LOCK_SQL, users_lock_params

    env = {**process_env, "DB_LOCK_TIMEOUT_MS": "0", "DB_IDLE_IN_TRANSACTION_TIMEOUT_MS": "1000",
           "MATCHING_LEASE_STALE_SECONDS": "0"}  # fmt: skip
    worker = processes.manage("run_matching", "--shard", "0", env=env, name="w1")
    assert serving_pid(redis_conn) == worker.pid
    instrument = instrument_create()
    seller, buyer = make_user("seller"), make_user("buyer")
    order_row_place(user=seller, instrument=instrument, side="sell", quantity="1", price="10.00")
    all_commands_applied()

    def sessions(waiting: bool = False) -> list[int]:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name LIKE %s"
                + (" AND wait_event_type = 'Lock'" if waiting else ""),
                [f"exchange-matching:{worker.pid}@%"],
            )
            return [row[0] for row in cursor.fetchall()]

    with psycopg.connect(process_env["DATABASE_URL"]) as blocker:
        blocker.execute(USERS_LOCK_SQL, users_lock_params([seller.pk]))  # the seller's ledger
        buy = order_row_place(
            user=buyer, instrument=instrument, side="buy", quantity="1", price="10.00"
        )
        (writer,) = wait_until(lambda: sessions(waiting=True), timeout=15)
        os.killpg(worker.pid, signal.SIGSTOP)
        try:
            blocker.rollback()  # the stopped worker's batch now holds the seller's ledger lock
            wait_until(lambda: writer not in sessions(), timeout=15)  # ended: 1 s idle
            # The seller's ledger is free again (this waits DB_LOCK_TIMEOUT_MS at most).
            funds_deposit(user=seller, asset="USD", amount=Decimal("1"), memo="test funds")
        finally:
            os.killpg(worker.pid, signal.SIGCONT)
    assert worker.wait(timeout=30) == 3, "woken, it exits to rebuild from PostgreSQL"
    log = worker.log_path.read_text()
    assert "Traceback" not in log, log[-3000:]
    assert Command.objects.get(order_id=buy.pk).attempts == 0, "an outage is not its failure"
    processes.manage("run_matching", "--shard", "0", env=env, name="w2")  # as supervisord does
    all_commands_applied()
    assert Order.objects.get(pk=buy.pk).status == "filled"
    exactly_once_invariants()
    assert "OK" in matching_verify(process_env)

"""The web process killed with SIGKILL while REST and WebSocket clients place orders: every
order answered 201/202 is stored once, an order without an answer is stored whole or not at
all, and a retry with the same client_order_id after the restart answers with the stored order
(its own module: it starts and kills its own web process)."""

import asyncio
import datetime as dt
import json
import os
import random
import signal
import threading
import time
import uuid
from decimal import Decimal

import httpx
import pytest
import websockets

from accounts.models import LedgerEntry
from accounts.signing import ws_login_message
from audit.models import AuditRecord
from conftest import start_web
from exchange.models import Order
from exchange.tests.api_client import ApiKeyAuth, make_api_key, make_instrument, make_user
from matching.models import Command
from matching.tests.test_random_trading import random_order
from matching.tests.worker_checks import (
    all_commands_applied,
    exactly_once_invariants,
    matching_verify,
)

pytestmark = [pytest.mark.processes, pytest.mark.django_db(transaction=True)]

FUNDS = {"USD": Decimal("100000.00"), "TST": Decimal("1000")}
SECONDS_EACH_SIDE = 3.0  # of orders before the kill, and after the restart


def order_with_client_id(rng: random.Random, symbol: str) -> dict:
    """A random order with a client_order_id; some resting ones GTD, expiring within seconds
    (their retry comes after their expiry)."""
    body = {**random_order(rng, symbol), "client_order_id": uuid.uuid4().hex[:20]}
    if body.get("time_in_force") == "GTC" and body["order_type"] == "limit" and rng.random() < 0.4:
        expire_at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=rng.uniform(1, 3))
        body.update(time_in_force="GTD", expire_at=expire_at.isoformat().replace("+00:00", "Z"))
    return body


def place_over_rest(base: list[str], key, symbol: str, seed: int, sent: list, stop) -> None:
    """POST orders until `stop` to the web process at base[0]; each is recorded with its
    status and body, or None for a request that got no answer."""
    rng = random.Random(seed)
    client = httpx.Client(auth=ApiKeyAuth(key.api_key.key, key.secret), timeout=15)
    while not stop.is_set():
        body = order_with_client_id(rng, symbol)
        try:
            response = client.post(base[0] + "/api/v1/orders", json=body)
        except httpx.TransportError:
            sent.append((key, body, None, None))
            stop.wait(0.5)  # the web process is down: its restart takes seconds
            continue
        sent.append((key, body, response.status_code, response.json().get("order_id")))
        stop.wait(0.1)


def place_over_the_socket(base: list[str], key, symbol: str, seed: int, sent: list, stop) -> None:
    """`place_over_rest` through /ws/v1's order.place (reconnecting to base[0])."""
    rng = random.Random(seed)

    async def run() -> None:
        n = 0
        while not stop.is_set():
            try:
                url = base[0].replace("http://", "ws://") + "/ws/v1"
                async with websockets.connect(url, ping_interval=None) as ws:
                    login = ws_login_message(api_key=key.api_key.key, secret=key.secret,
                                             timestamp_ms=time.time_ns() // 10**6)  # fmt: skip
                    await ws.send(json.dumps(login))
                    while not stop.is_set():
                        n += 1
                        body = order_with_client_id(rng, symbol)
                        await ws.send(json.dumps({"op": "order.place", "id": n, **body}))
                        try:
                            while (frame := json.loads(await ws.recv())).get("id") != n:
                                if frame.get("type") == "ping":
                                    await ws.send(json.dumps({"op": "pong", "id": frame["id"]}))
                        except websockets.ConnectionClosed:
                            sent.append((key, body, None, None))
                            raise
                        data = frame.get("data") or {}
                        sent.append((key, body, frame.get("status"), data.get("order_id")))
                        await asyncio.sleep(0.1)
            except (websockets.ConnectionClosed, OSError):
                await asyncio.sleep(0.5)

    asyncio.run(run())


def test_web_process_killed_mid_stream_loses_and_duplicates_no_order(processes, process_env):
    processes.manage("run_matching", "--shard", "0", env=process_env, name="matching-0")
    base = [start_web(processes, env=process_env)]
    instrument = make_instrument(price_band_pct=Decimal("50"))
    keys = [make_api_key(make_user(funds=FUNDS)) for _ in range(3)]
    sent: list = []
    stop = threading.Event()
    symbol = instrument.symbol
    senders = [
        threading.Thread(target=place, args=(base, key, symbol, n, sent, stop))
        for n, (place, key) in enumerate(
            zip([place_over_rest, place_over_rest, place_over_the_socket], keys, strict=True)
        )
    ]
    for sender in senders:
        sender.start()
    time.sleep(SECONDS_EACH_SIDE)
    web = processes.started[-1]
    os.killpg(web.pid, signal.SIGKILL)
    web.wait()
    base[0] = start_web(processes, env=process_env, name="web-restarted")
    time.sleep(SECONDS_EACH_SIDE)
    stop.set()
    for sender in senders:
        sender.join(30)

    acked = [(key, body, order_id) for key, body, status, order_id in sent if status in (201, 202)]
    unanswered = [(key, body) for key, body, status, _ in sent if status is None]
    assert len(acked) > 20 and unanswered
    for key, body, order_id in acked:
        stored = Order.objects.filter(
            user=key.api_key.user, client_order_id=body["client_order_id"]
        )
        assert list(stored.values_list("pk", flat=True)) == [order_id], body
    for key, body in unanswered:  # stored whole (command, audit, hold) or not at all
        order = Order.objects.filter(
            user=key.api_key.user, client_order_id=body["client_order_id"]
        ).first()
        if order is not None:
            assert Command.objects.filter(order_id=order.pk, kind=Command.Kind.PLACE).exists()
            assert AuditRecord.objects.filter(order_id=order.pk).exists()
            assert LedgerEntry.objects.filter(order_id=order.pk).exists()
    # Each client retries what it sent, with the same client_order_id, after the restart.
    clients = {
        key.api_key.pk: httpx.Client(
            base_url=base[0], auth=ApiKeyAuth(key.api_key.key, key.secret), timeout=15
        )
        for key in keys
    }
    for key, body, order_id in [*acked, *((key, body, None) for key, body in unanswered)]:
        retry = clients[key.api_key.pk].post("/api/v1/orders", json=body)
        if order_id is not None:
            assert (retry.status_code, retry.json().get("order_id")) == (200, order_id), (
                body, retry.text,
            )  # fmt: skip
        else:
            assert retry.status_code in (200, 201, 202, 400), (body, retry.text)
        stored = Order.objects.filter(
            user=key.api_key.user, client_order_id=body["client_order_id"]
        )
        assert stored.count() <= 1, body
    all_commands_applied(timeout=90)
    exactly_once_invariants()
    assert "OK" in matching_verify(process_env)

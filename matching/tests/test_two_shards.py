"""Two matching shards end to end (MATCHING_SHARDS=2, as `make run` starts them): each shard's
worker owns its own symbols, one user trades on both, a mass cancel without a symbol reaches
both, and a shard whose worker is killed mid-stream loses nothing while the other one trades
on. Real web process, real workers, real PostgreSQL and Redis."""

import os
import signal
import uuid

import pytest

from conftest import start_web, wait_until
from exchange.models import Order
from exchange.tests.api_client import ApiClient, make_instrument
from matching.sharding import shard_for_symbol

pytestmark = [pytest.mark.processes, pytest.mark.django_db(transaction=True)]

SHARDS = 2


def symbol_on(shard: int) -> str:
    while True:
        symbol = f"S{uuid.uuid4().hex[:8].upper()}"
        if shard_for_symbol(symbol, SHARDS) == shard:
            return symbol


def limit(symbol, side, price, quantity, **extra):
    return {"symbol": symbol, "side": side, "order_type": "limit", "price": price,
            "quantity": quantity, **extra}  # fmt: skip


def start_worker(processes, env, shard: int, name: str):
    return processes.manage("run_matching", "--shard", str(shard), env=env, name=name)


def test_two_shards_trade_side_by_side_and_one_lost_worker_loses_nothing(
    processes, process_env, settings
):
    settings.MATCHING_SHARDS = SHARDS
    env = {**process_env, "MATCHING_SHARDS": str(SHARDS)}
    first, second = (make_instrument(symbol=symbol_on(shard)) for shard in range(SHARDS))
    assert (first.shard, second.shard) == (0, 1)
    workers = {shard: start_worker(processes, env, shard, f"m-{shard}") for shard in range(2)}
    base_url = start_web(processes, env=env)
    maker, taker = ApiClient(base_url), ApiClient(base_url)

    # A trade on each shard, the maker's rest on both, then one mass cancel for both books.
    for instrument in (first, second):
        assert maker.place(**limit(instrument.symbol, "sell", "10.00", "5")).status_code == 201
        bought = taker.place(**limit(instrument.symbol, "buy", "10.00", "2"))
        assert bought.status_code == 201, bought.text
        assert bought.json()["status"] == "filled"
        assert maker.place(**limit(instrument.symbol, "buy", "9.00", "1")).status_code == 201
    assert maker.delete("/api/v1/orders").status_code in (200, 202)

    def none_open():
        return not maker.get("/api/v1/orders", status="open").json()["results"]

    wait_until(none_open, timeout=20)
    fills = maker.get("/api/v1/fills").json()["results"]
    assert sorted(f["symbol"] for f in fills) == sorted([first.symbol, second.symbol])

    # Shard 1's worker dies (kill -9) while orders for both shards keep coming: shard 0 answers
    # them at once, shard 1's are stored (202 pending_new) and applied once a worker is back.
    os.kill(workers[1].pid, signal.SIGKILL)
    workers[1].wait()
    answers = {first.symbol: [], second.symbol: []}
    for n in range(6):
        for instrument in (first, second):
            placed = taker.place(**limit(instrument.symbol, "buy", "9.50", "1",
                                         client_order_id=f"{instrument.symbol}-{n}"))  # fmt: skip
            assert placed.status_code in (201, 202), placed.text
            answers[instrument.symbol].append(placed.json())
    assert {a["status"] for a in answers[first.symbol]} == {"new"}
    assert {a["status"] for a in answers[second.symbol]} == {"pending_new"}
    start_worker(processes, env, 1, "m-1-again")

    def second_shard_caught_up():
        ids = [a["order_id"] for a in answers[second.symbol]]
        return not Order.objects.filter(id__in=ids, status="pending_new").exists()

    wait_until(second_shard_caught_up, timeout=60, interval=0.2)
    open_orders = taker.get("/api/v1/orders", status="open", limit=50).json()["results"]
    assert sorted(o["client_order_id"] for o in open_orders) == sorted(
        f"{instrument.symbol}-{n}" for instrument in (first, second) for n in range(6)
    )
    book = taker.get(f"/api/v1/orderbook/{second.symbol}").json()
    assert book["bids"] == [{"price": "9.50", "quantity": "6", "orders": 6}]


def test_a_book_listed_before_the_shards_were_raised_is_resynced_after_its_shards_takeover(
    processes, process_env
):
    """Raising MATCHING_SHARDS keeps a listed instrument on its shard (README), but the web
    process's market-data hub placed each book by the hash under the new count: when the
    worker of the shard that holds it was replaced, its subscribers got no resync notice and
    the book was not read again (the gap was put down to another shard)."""
    import json

    from websockets.sync.client import connect as ws_connect

    from exchange.tests.api_client import make_user
    from matching.tests.order_rows import order_row_place
    from matching.tests.test_worker_crash import next_frame

    symbol = symbol_on(1)  # shard 1 under two shards, listed while one shard ran: shard 0
    instrument = make_instrument(symbol=symbol)
    assert instrument.shard == 0
    env = {**process_env, "MATCHING_SHARDS": str(SHARDS)}
    holder = start_worker(processes, env, 0, "holder")
    wait_until(lambda: "shard worker serving" in holder.log_path.read_text(), timeout=30)
    standby = start_worker(processes, env, 0, "standby")
    wait_until(lambda: "waiting for lease" in standby.log_path.read_text(), timeout=30)
    base_url = start_web(processes, env=env)

    channel = f"book.{symbol}"
    with ws_connect(base_url.replace("http://", "ws://") + "/ws/v1") as ws:
        ws.send(json.dumps({"op": "subscribe", "channels": [channel]}))
        next_frame(ws, lambda f: f.get("type") == "snapshot", timeout=15)
        order_row_place(user=make_user(), instrument=instrument, side="buy", quantity="1",
                        price="10.00")  # fmt: skip
        next_frame(ws, lambda f: f.get("type") == "update", timeout=15)
        os.killpg(holder.pid, signal.SIGKILL)
        wait_until(lambda: "shard worker serving" in standby.log_path.read_text(), timeout=45)
        notice = next_frame(ws, lambda f: f.get("type") == "resync", timeout=15)
        assert notice == {"type": "resync", "reason": "feed_gap", "lost_channels": [channel]}

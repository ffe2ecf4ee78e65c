"""`python -m bench ws [--smoke]`: WebSocket fan-out and order entry against the real stack.

Starts web + matching-0 under supervisord on a scratch database (bench/e2e.py's helpers), then:
1. fan-out: N subscribers (1,000; --smoke 20) follow one busy book (`book.` and `trades.`)
   while 8 REST clients keep placing orders on it. Reports delivered update frames/s (all
   subscribers together) and latencies to the client's receipt of each update frame: from the
   worker's commit of the batch (`committed_ns` of the frame, the goal's measure), from the
   trade's engine stamp (`ts_ns` of the trade: when the worker applied the command, before
   its commit), and from the hub's receipt (`ts_ns` of the update frame). A few of the
   subscribers are the reference client (exchange.wsclient), checking seqs and checksums;
   100 more check seq continuity and record latencies; the rest only count frames (one
   Python process hosts them all: its own CPU use and the machine's load are part of the
   figures).
2. order entry: a pool of connections placing limit orders over the socket (`order.place`),
   waiting for each answer, versus the same over REST (keep-alive HTTP) on the same machine.
"""

import argparse
import asyncio
import json
import os
import random
import sys
import time
import uuid
from contextlib import ExitStack
from urllib.parse import urlsplit, urlunsplit

import websockets

from accounts.signing import ws_login_message
from bench.e2e import BASE_DIR, BENCH_RATE_LIMITS, client_loop, prepare, run_level, start_stack

REFERENCE_CLIENTS = 3
COMPRESSION = ["deflate"]  # --no-compression: subscribers do not offer permessage-deflate


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))], 2)


PARSING_SUBSCRIBERS = 100  # the others only count frames, so the load generator stays light


class Subscriber:
    """A light subscriber: counts frames; the first PARSING_SUBSCRIBERS also check seq
    continuity and record latencies."""

    def __init__(self, stats: dict, *, parse: bool) -> None:
        self.stats = stats
        self.parse = parse
        self.seq: int | None = None

    async def run(self, url: str, symbol: str, ready: asyncio.Event, stop: asyncio.Event):
        async with websockets.connect(
            url, max_size=None, ping_interval=None, compression=COMPRESSION[0]
        ) as ws:
            await ws.send(
                json.dumps({"op": "subscribe", "channels": [f"book.{symbol}", f"trades.{symbol}"]})
            )

            async def close_on_stop() -> None:
                await stop.wait()
                await ws.close()

            # One plain receive loop (no futures per frame: the load generator stays light);
            # the stop event closes the socket, which ends the loop.
            closer = asyncio.ensure_future(close_on_stop())
            async for raw in ws:
                now = time.time_ns()
                if not self.parse and '"type":"update"' in raw:
                    if self.stats["measuring"]:
                        self.stats["updates"] += 1
                    continue
                frame = json.loads(raw)
                self.on_frame(frame, now, ready)
                if frame.get("type") == "ping":
                    await ws.send(json.dumps({"op": "pong", "id": frame["id"]}))
            closer.cancel()

    def on_frame(self, frame: dict, now: int, ready: asyncio.Event | None = None) -> None:
        kind = frame.get("type")
        stats = self.stats
        if kind == "snapshot":
            self.seq = frame["seq"]
            stats["snapshots"] += 1
            if ready is not None:
                stats["ready"] += 1
                if stats["ready"] >= stats["expected"]:
                    ready.set()
        elif kind == "update":
            if self.seq is not None and frame["prev_seq"] != self.seq:
                stats["gaps"] += 1
            self.seq = frame["seq"]
            if stats["measuring"]:
                stats["updates"] += 1
                stats["hub_ms"].append((now - frame["ts_ns"]) / 1e6)
                if frame.get("committed_ns"):
                    stats["commit_ms"].append((now - frame["committed_ns"]) / 1e6)
        elif kind == "trades" and stats["measuring"] and self.parse:
            for trade in frame["data"]:
                stats["trade_ms"].append((now - trade["ts_ns"]) / 1e6)
        elif kind == "resync":
            stats["resyncs"] += 1


async def fan_out(url, port, keys, symbol, subscribers: int, seconds: float) -> dict:
    from bench.e2e import HttpConnection
    from exchange.wsclient import BookClient

    stats = {
        "expected": subscribers,
        "ready": 0,
        "snapshots": 0,
        "updates": 0,
        "gaps": 0,
        "resyncs": 0,
        "measuring": False,
        "hub_ms": [],
        "commit_ms": [],
        "trade_ms": [],
    }
    ready, stop = asyncio.Event(), asyncio.Event()
    tasks = []
    light = subscribers - REFERENCE_CLIENTS
    for n in range(light):
        subscriber = Subscriber(stats, parse=n < PARSING_SUBSCRIBERS)
        tasks.append(asyncio.create_task(subscriber.run(url, symbol, ready, stop)))
        if n % 50 == 49:
            await asyncio.sleep(0.05)  # do not open a thousand sockets in one instant
    references = [BookClient(url, symbol) for _ in range(REFERENCE_CLIENTS)]
    stats["expected"] = light
    tasks += [asyncio.create_task(c.run(stop=stop)) for c in references]
    await asyncio.wait_for(ready.wait(), timeout=120)
    for client in references:
        await asyncio.wait_for(client.ready.wait(), timeout=60)

    conns = [HttpConnection("127.0.0.1", port, keys[i % len(keys)]) for i in range(8)]
    await asyncio.gather(*(c.open() for c in conns))
    latencies: list[float] = []
    outcomes: dict = {}
    stats["measuring"] = True
    started = time.monotonic()
    await asyncio.gather(
        *(
            client_loop(c, symbol, random.Random(n), started + seconds, latencies, outcomes)
            for n, c in enumerate(conns)
        )
    )
    elapsed = time.monotonic() - started
    await asyncio.sleep(1.0)  # let the last batches arrive
    stats["measuring"] = False
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    for c in conns:
        c.writer.close()
    return {
        "subscribers": subscribers,
        "seconds": round(elapsed, 1),
        "orders_placed_per_s": round(outcomes.get("placed", 0) / elapsed, 1),
        "updates_delivered": stats["updates"],
        "updates_delivered_per_s": round(stats["updates"] / elapsed, 1),
        "updates_per_subscriber_per_s": round(stats["updates"] / elapsed / max(1, light), 1),
        "commit_to_client_ms": {
            "p50": pct(stats["commit_ms"], 0.5),
            "p99": pct(stats["commit_ms"], 0.99),
        },
        "engine_to_client_ms": {
            "p50": pct(stats["trade_ms"], 0.5),
            "p99": pct(stats["trade_ms"], 0.99),
        },
        "hub_to_client_ms": {"p50": pct(stats["hub_ms"], 0.5), "p99": pct(stats["hub_ms"], 0.99)},
        "gaps": stats["gaps"],
        "slow_consumer_resyncs": stats["resyncs"],
        "reference_clients": [
            {"updates": c.updates, "gaps": c.gaps, "checksum_errors": c.checksum_errors}
            for c in references
        ],
    }


async def ws_order_loop(url, key, symbol, rng, deadline, latencies, outcomes) -> None:
    async with websockets.connect(url, ping_interval=None) as ws:
        api_key, secret = key
        login = ws_login_message(
            api_key=api_key, secret=secret, timestamp_ms=time.time_ns() // 1_000_000
        )
        await ws.send(json.dumps(login))
        while json.loads(await ws.recv()).get("type") != "login":
            pass
        n = 0
        while time.monotonic() < deadline:
            side = rng.choice(("buy", "sell"))
            offset = rng.randint(-3, 12)
            price = 100 - offset if side == "buy" else 100 + offset
            order = {
                "symbol": symbol,
                "side": side,
                "order_type": "limit",
                "price": f"{price}.00",
                "quantity": str(rng.randint(1, 5)),
            }
            n += 1
            frame = await request(ws, {"op": "order.place", "id": n, **order}, latencies)
            outcomes[frame["status"]] = outcomes.get(frame["status"], 0) + 1
            outcomes["placed"] = outcomes.get("placed", 0) + 1
            data = frame.get("data") or {}
            if data.get("status") in ("new", "pending_new") and rng.random() < 0.5:
                n += 1  # cancel about half of those that rest, as bench e2e does over REST
                cancel = {"op": "order.cancel", "id": n, "order_id": data["order_id"]}
                frame = await request(ws, cancel, latencies)
                outcomes[frame["status"]] = outcomes.get(frame["status"], 0) + 1


async def request(ws, message: dict, latencies: list[float]) -> dict:
    """Send one op and wait for its answer (answering pings meanwhile)."""
    started = time.perf_counter()
    await ws.send(json.dumps(message))
    while True:
        frame = json.loads(await ws.recv())
        if frame.get("type") == "ping":
            await ws.send(json.dumps({"op": "pong", "id": frame["id"]}))
        elif frame.get("type") == "response" and frame.get("id") == message["id"]:
            latencies.append(time.perf_counter() - started)
            return frame


async def ws_orders(url, keys, symbol, concurrency: int, seconds: float) -> dict:
    latencies: list[float] = []
    outcomes: dict = {}
    started = time.monotonic()
    await asyncio.gather(
        *(
            ws_order_loop(
                url,
                keys[n % len(keys)],
                symbol,
                random.Random(100 + n),
                started + seconds,
                latencies,
                outcomes,
            )
            for n in range(concurrency)
        )
    )
    elapsed = time.monotonic() - started
    ms = [x * 1000 for x in latencies]
    return {
        "concurrency": concurrency,
        "requests_per_s": round(len(latencies) / elapsed, 1),
        "orders_per_s": round(outcomes.pop("placed", 0) / elapsed, 1),
        "p50_ms": pct(ms, 0.5),
        "p99_ms": pct(ms, 0.99),
        "statuses": {str(k): v for k, v in sorted(outcomes.items())},
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench ws")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--order-connections", type=int, default=16)
    parser.add_argument(
        "--no-compression",
        action="store_true",
        help="subscribers do not offer permessage-deflate (what it costs the server per frame)",
    )
    args = parser.parse_args(argv)
    COMPRESSION[0] = None if args.no_compression else "deflate"
    subscribers = 20 if args.smoke else args.subscribers
    seconds = 2.0 if args.smoke else args.seconds
    concurrency = 2 if args.smoke else args.order_connections

    import psycopg

    from exchange.embedded_servers import free_port
    from exchange.launcher import with_database

    if not os.environ.get("DATABASE_URL") or not os.environ.get("REDIS_URL"):
        print("set DATABASE_URL and REDIS_URL (make run's servers, or the machine's)")
        return 2
    url = urlsplit(os.environ["DATABASE_URL"])
    dbname = f"bench_ws_{os.getpid()}"
    db_url = urlunsplit(url._replace(path=f"/{dbname}"))
    admin_url = with_database(os.environ["DATABASE_URL"], "postgres")
    var_dir = BASE_DIR / "var" / f"bench-ws-{os.getpid()}"
    var_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "REDIS_KEY_PREFIX": f"bench:{uuid.uuid4().hex[:8]}:",
        "DJANGO_SETTINGS_MODULE": "exchange.settings",
        "PYTHONUNBUFFERED": "1",
        **BENCH_RATE_LIMITS,
    }
    ws_url = f"ws://127.0.0.1:{port}/ws/v1"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{dbname}"')
    try:
        with ExitStack() as stack:
            symbol, keys = prepare(env, clients=max(concurrency, 8))
            start_stack(env, var_dir, port, stack)
            fan = asyncio.run(fan_out(ws_url, port, keys, symbol, subscribers, seconds))
            print(json.dumps({"phase": "fan_out", **fan}), flush=True)
            ws_entry = asyncio.run(ws_orders(ws_url, keys, symbol, concurrency, seconds))
            print(json.dumps({"phase": "ws_orders", **ws_entry}), flush=True)
            rest_entry = asyncio.run(
                run_level("127.0.0.1", port, keys, symbol, concurrency, seconds)
            )
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')

    print(f"fan-out: {fan['subscribers']} subscribers to one book for {fan['seconds']} s")
    print(f"{'metric':<40} {'value':>12}")
    rows = [
        ("orders placed on the book (REST) /s", fan["orders_placed_per_s"]),
        ("update frames delivered /s (all subs)", fan["updates_delivered_per_s"]),
        ("update frames /s per subscriber", fan["updates_per_subscriber_per_s"]),
        ("worker commit -> client p50 ms", fan["commit_to_client_ms"]["p50"]),
        ("worker commit -> client p99 ms", fan["commit_to_client_ms"]["p99"]),
        ("engine stamp -> client p50 ms", fan["engine_to_client_ms"]["p50"]),
        ("engine stamp -> client p99 ms", fan["engine_to_client_ms"]["p99"]),
        ("hub receipt -> client p50 ms", fan["hub_to_client_ms"]["p50"]),
        ("hub receipt -> client p99 ms", fan["hub_to_client_ms"]["p99"]),
        ("seq gaps seen by subscribers", fan["gaps"]),
        ("slow-consumer resyncs", fan["slow_consumer_resyncs"]),
    ]
    for name, value in rows:
        print(f"{name:<40} {value!s:>12}")
    print(f"\norder entry, {concurrency} connections, {seconds} s")
    print("(each places limit orders and cancels about half of those that rest)")
    print(f"{'transport':<10} {'orders/s':>9} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8}  statuses")
    for name, row in (("websocket", ws_entry), ("rest", rest_entry)):
        print(
            f"{name:<10} {row['orders_per_s']:>9} {row['requests_per_s']:>9} "
            f"{row['p50_ms']!s:>8} {row['p99_ms']!s:>8}  {row['statuses']}"
        )
    print(
        json.dumps(
            {
                "bench": "ws",
                "smoke": args.smoke,
                "compression": COMPRESSION[0],
                "fan_out": fan,
                "order_entry": {"websocket": ws_entry, "rest": rest_entry},
                "goal": {
                    "subscribers": 1000,
                    "commit_to_client_p99_ms": 50,
                    "ws_orders_per_s": 1000,
                },
            }
        )
    )
    ok = fan["gaps"] == 0 and all(
        c["checksum_errors"] == 0 and c["gaps"] == 0 for c in fan["reference_clients"]
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

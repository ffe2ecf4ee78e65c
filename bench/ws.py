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
import base64
import json
import os
import random
import sys
import time
import uuid
from contextlib import ExitStack
from functools import partial
from urllib.parse import urlsplit, urlunsplit

import websockets

from accounts.signing import ws_login_message
from bench._cpu import CpuMeter, process_groups
from bench.e2e import BASE_DIR, BENCH_RATE_LIMITS, client_loop, prepare, run_level, start_stack

# An answer to one order op (or a login) slower than this fails the run instead of hanging it.
ANSWER_TIMEOUT_S = 30.0
REFERENCE_CLIENTS = 3


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))], 2)


PARSING_SUBSCRIBERS = 100  # the others only count frames, so the load generator stays light


class Subscriber(asyncio.Protocol):
    """A light subscriber: counts update frames; the first PARSING_SUBSCRIBERS also check seq
    continuity and record latencies.

    A minimal RFC 6455 client on a raw asyncio protocol (the handshake, then frames cut from
    the byte stream in `data_received`, pings answered): a thousand of them share one Python
    process, where a full client library's reader task and future per frame made the load
    generator the slowest part of the measurement."""

    def __init__(self, stats: dict, *, parse: bool) -> None:
        self.stats = stats
        self.parse = parse
        self.seq: int | None = None
        self.buffer = bytearray()
        self.open = False
        self.ready: asyncio.Event | None = None
        self.closed = asyncio.Event()
        self.transport: asyncio.Transport | None = None
        self.subscribe = ""

    async def run(self, url: str, symbol: str, ready: asyncio.Event, stop: asyncio.Event):
        parts = urlsplit(url)
        self.ready = ready
        loop = asyncio.get_running_loop()
        await loop.create_connection(lambda: self, parts.hostname, parts.port)
        key = base64.b64encode(os.urandom(16)).decode()
        self.transport.write(
            (
                f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        self.subscribe = json.dumps(
            {"op": "subscribe", "channels": [f"book.{symbol}", f"trades.{symbol}"]}
        )
        await asyncio.wait(
            [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self.closed.wait())],
            return_when=asyncio.FIRST_COMPLETED,
        )
        if not self.closed.is_set():
            self._write_frame(0x8, (1000).to_bytes(2, "big"))
            self.transport.close()

    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        self.closed.set()

    def send(self, text: str) -> None:
        self._write_frame(0x1, text.encode())

    def _write_frame(self, opcode: int, payload: bytes) -> None:
        """A client frame: masked, as RFC 6455 requires of clients."""
        mask = os.urandom(4)
        length = len(payload)
        if length < 126:
            header = bytes((0x80 | opcode, 0x80 | length))
        else:
            header = bytes((0x80 | opcode, 0x80 | 126)) + length.to_bytes(2, "big")
        masked = bytes(byte ^ mask[i & 3] for i, byte in enumerate(payload))
        self.transport.write(header + mask + masked)

    def data_received(self, data: bytes) -> None:
        now = time.time_ns()
        buffer = self.buffer
        buffer += data
        if not self.open:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            if not buffer.startswith(b"HTTP/1.1 101"):
                raise RuntimeError(f"handshake refused: {bytes(buffer[:80])!r}")
            del buffer[: end + 4]
            self.open = True
            self.send(self.subscribe)  # a client sends nothing before the handshake's answer
        while len(buffer) >= 2:
            opcode, length, start = buffer[0] & 0x0F, buffer[1] & 0x7F, 2
            if length == 126:
                if len(buffer) < 4:
                    return
                length, start = int.from_bytes(buffer[2:4], "big"), 4
            elif length == 127:
                if len(buffer) < 10:
                    return
                length, start = int.from_bytes(buffer[2:10], "big"), 10
            if len(buffer) < start + length:
                return
            payload = bytes(buffer[start : start + length])
            del buffer[: start + length]
            if opcode == 0x1:
                self.on_text(payload, now)
            elif opcode == 0x9:  # the server's ping
                self._write_frame(0xA, payload)
            elif opcode == 0x8:
                self.transport.close()

    def on_text(self, raw: bytes, now: int) -> None:
        if not self.parse and b'"type":"update"' in raw:
            if self.stats["measuring"]:
                self.stats["updates"] += 1
            return
        frame = json.loads(raw)
        self.on_frame(frame, now, self.ready)
        if frame.get("type") == "ping":
            self.send(json.dumps({"op": "pong", "id": frame["id"]}))

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


async def fan_out(url, port, keys, symbol, subscribers: int, seconds: float, cpu_groups) -> dict:
    """`cpu_groups`: the process groups whose CPU the measured window reports (process_groups)."""
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
    meter = CpuMeter(cpu_groups)
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
    window = time.monotonic() - started
    cpu_cores = meter.per(1, scale=1 / window)
    web_us_per_frame = meter.per(max(1, stats["updates"]), scale=1_000_000)["web"]
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
        "cpu_cores": cpu_cores,
        "web_cpu_us_per_frame": web_us_per_frame,
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
        while True:
            frame = json.loads(await asyncio.wait_for(ws.recv(), ANSWER_TIMEOUT_S))
            if frame.get("type") == "login":
                break
            if frame.get("type") == "error":
                raise RuntimeError(f"socket login refused: {frame}")
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
    """Send one op and wait for its answer (answering pings meanwhile). A message the server
    refused unread (an error frame without an id: the per-connection message rate) counts as
    status 429; no answer within ANSWER_TIMEOUT_S fails the run rather than hanging it."""
    started = time.perf_counter()
    await ws.send(json.dumps(message))
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), ANSWER_TIMEOUT_S))
        if frame.get("type") == "ping":
            await ws.send(json.dumps({"op": "pong", "id": frame["id"]}))
        elif frame.get("type") == "response" and frame.get("id") == message["id"]:
            latencies.append(time.perf_counter() - started)
            return frame
        elif frame.get("type") == "error" and frame.get("id") in (None, message["id"]):
            return {"status": 429 if frame.get("error") == "TooManyRequests" else 400, **frame}


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
    args = parser.parse_args(argv)
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
        # Order entry over the socket is measured, never at the per-connection message limit
        # (200 a second by default: one connection answering in ~4 ms sends ~250); and a
        # thousand subscribers come from one address.
        "WS_MAX_MESSAGES_PER_SECOND": "1000000",
        "WS_MAX_CONNECTIONS_PER_IP": "0",
    }
    ws_url = f"ws://127.0.0.1:{port}/ws/v1"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{dbname}"')
    try:
        with ExitStack() as stack:
            symbol, keys = prepare(env, clients=max(concurrency, 8))
            supervisor_pid = start_stack(env, var_dir, port, stack)
            groups = partial(
                process_groups, supervisor_pid, {"web": "uvicorn", "worker": "run_matching"}, dbname
            )
            fan = asyncio.run(fan_out(ws_url, port, keys, symbol, subscribers, seconds, groups))
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
        ("web CPU µs per frame (all its work)", fan["web_cpu_us_per_frame"]),
        *((f"CPU cores used: {group}", cores) for group, cores in fan["cpu_cores"].items()),
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

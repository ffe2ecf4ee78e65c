"""`python -m bench e2e [--smoke]`: orders over HTTP against the processes `make run` starts.

Starts the web process and the shard worker under supervisord (as `make run` does) on a scratch
database, then concurrent clients place limit orders (about a third crossing) and cancel half
of them, over keep-alive HTTP/1.1 from a small asyncio load generator (raw sockets, so the
generator is not the bottleneck). Reports the throughput/latency curve per concurrency level.
Floor: 400 orders/s with p99 under 50 ms; aim: 1,000 orders/s.
"""

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from accounts.signing import sign
from bench._cpu import CpuMeter, process_groups

BASE_DIR = Path(__file__).resolve().parent.parent

# The benchmark measures the order path with the rate limiter in it, but never at a limit.
BENCH_RATE_LIMITS = {
    f"RATE_LIMIT_{bucket}_{scope}_PER_{window}": "1000000000"
    for bucket in ("ORDERS", "REQUESTS")
    for scope in ("KEY", "USER", "IP")
    for window in ("SECOND", "MINUTE")
}


class HttpConnection:
    """One keep-alive HTTP/1.1 connection with just enough parsing for JSON responses; every
    request is signed with an API key (`key`: the public key id and its secret)."""

    def __init__(self, host: str, port: int, key: tuple[str, str]) -> None:
        self.host, self.port = host, port
        self.api_key, self.secret = key
        self.reader = self.writer = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        payload = json.dumps(body).encode() if body is not None else b""
        timestamp = str(time.time_ns() // 1_000_000)
        bare_path, _, query = path.partition("?")
        signature = sign(
            secret=self.secret,
            timestamp=timestamp,
            method=method,
            path=bare_path,
            query=query,
            body=payload,
        )
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n"
            f"X-API-KEY: {self.api_key}\r\nX-API-TIMESTAMP: {timestamp}\r\n"
            f"X-API-SIGNATURE: {signature}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n"
        ).encode()
        self.writer.write(head + payload)
        status_line = await self.reader.readline()
        status = int(status_line.split()[1])
        length = 0
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        data = await self.reader.readexactly(length) if length else b""
        return status, (json.loads(data) if data else {})


async def client_loop(conn, symbol, rng, deadline, latencies, outcomes) -> None:
    """Place limit orders and cancel about half of those that rest, until the deadline."""
    while time.monotonic() < deadline:
        side = rng.choice(("buy", "sell"))
        offset = rng.randint(-3, 12)  # mostly passive; offsets <= 0 cross the spread
        price = 100 - offset if side == "buy" else 100 + offset
        started = time.perf_counter()
        status, body = await conn.request(
            "POST",
            "/api/v1/orders",
            {
                "symbol": symbol,
                "side": side,
                "order_type": "limit",
                "price": f"{price}.00",
                "quantity": str(rng.randint(1, 5)),
            },
        )
        latencies.append(time.perf_counter() - started)
        outcomes[status] = outcomes.get(status, 0) + 1
        outcomes["placed"] = outcomes.get("placed", 0) + 1
        resting = status in (201, 202) and body.get("status") in ("new", "pending_new")
        if resting and rng.random() < 0.5:
            started = time.perf_counter()
            status, _ = await conn.request("DELETE", f"/api/v1/orders/{body['order_id']}")
            latencies.append(time.perf_counter() - started)
            outcomes[status] = outcomes.get(status, 0) + 1


async def run_level(host, port, keys, symbol, concurrency, seconds) -> dict:
    conns = [HttpConnection(host, port, keys[i % len(keys)]) for i in range(concurrency)]
    await asyncio.gather(*(conn.open() for conn in conns))
    latencies: list[float] = []
    outcomes: dict = {}
    started = time.monotonic()
    deadline = started + seconds
    await asyncio.gather(
        *(
            client_loop(conn, symbol, random.Random(n), deadline, latencies, outcomes)
            for n, conn in enumerate(conns)
        )
    )
    elapsed = time.monotonic() - started
    for conn in conns:
        conn.writer.close()
    latencies.sort()

    def pct(q: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000, 2)

    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "requests_per_s": round(len(latencies) / elapsed, 1),
        "orders_per_s": round(outcomes.pop("placed", 0) / elapsed, 1),
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "max_ms": round(latencies[-1] * 1000, 2),
        "statuses": {str(k): v for k, v in sorted(outcomes.items(), key=str)},
    }


def scratch_database_url() -> str:
    url = urlsplit(os.environ["DATABASE_URL"])
    return urlunsplit(url._replace(path=f"/bench_e2e_{os.getpid()}"))


def prepare(env: dict[str, str], clients: int) -> tuple[str, list[tuple[str, str]]]:
    """Migrate the scratch database, create an instrument and funded users with API keys
    (read, trade); returns the symbol and each user's (key, secret)."""
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "-v0"], cwd=BASE_DIR, env=env, check=True
    )
    script = f"""
import json, uuid
from decimal import Decimal
from accounts.api_keys import api_key_create
from accounts.ledger import funds_deposit
from accounts.models import User
from exchange.models import Instrument
from exchange.services import instrument_list
symbol = "B" + uuid.uuid4().hex[:6].upper()
instrument = Instrument.objects.create(symbol=symbol, base_asset="BNC", quote_asset="USD",
    base_precision=0, quote_precision=2, tick_size=Decimal("0.01"), lot_size=Decimal("1"),
    min_quantity=Decimal("1"), min_notional=Decimal("1"), price_band_pct=Decimal("50"))
instrument_list(instrument=instrument)
keys = []
for n in range({clients}):
    name = "bench-" + uuid.uuid4().hex[:8]
    user = User.objects.create_user(username=name, email=name + "@bench.local")
    for asset in ("USD", "BNC"):  # orders are held against balances: fund every client
        funds_deposit(user=user, asset=asset, amount=Decimal("1000000000"), memo="bench")
    created = api_key_create(user=user, label="bench", permissions=["read", "trade"])
    keys.append([created.api_key.key, created.secret])
print(json.dumps({{"symbol": symbol, "keys": keys}}))
"""
    out = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", script],
        cwd=BASE_DIR,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    data = json.loads(out.strip().splitlines()[-1])
    return data["symbol"], [tuple(key) for key in data["keys"]]


def start_stack(env: dict[str, str], var_dir: Path, port: int, stack: ExitStack) -> int:
    """web + matching-0 under supervisord, as `make run` runs them; returns supervisord's pid."""
    import httpx

    from exchange.launcher import procfile_programs, supervisord_config

    programs = procfile_programs(BASE_DIR / "Procfile", shard_count=1, port=port)
    programs = {k: v for k, v in programs.items() if k in ("web", "matching-0")}
    config = var_dir / "supervisord.conf"
    config.write_text(supervisord_config(programs, var_dir=var_dir, logs_to_files=True))
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "supervisor.supervisord", "-c", str(config)],
        cwd=BASE_DIR,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def stop() -> None:
        supervisor.terminate()
        supervisor.wait(timeout=30)

    stack.callback(stop)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            # Celery is not started here: the scheduler is the one part allowed to be down.
            report = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).json()
            if set(report["failing"]) <= {"scheduler"}:
                return supervisor.pid
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.3)
    raise RuntimeError(f"the stack did not become healthy; logs in {var_dir}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench e2e")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--levels", default="4,8,16,32")
    args = parser.parse_args(argv)
    levels = [2] if args.smoke else [int(n) for n in args.levels.split(",")]
    seconds = 2.0 if args.smoke else args.seconds

    import psycopg

    from exchange.embedded_servers import free_port
    from exchange.launcher import with_database

    if not os.environ.get("DATABASE_URL") or not os.environ.get("REDIS_URL"):
        print("set DATABASE_URL and REDIS_URL (make run's servers, or the machine's)")
        return 2
    db_url = scratch_database_url()
    admin_url = with_database(os.environ["DATABASE_URL"], "postgres")
    dbname = urlsplit(db_url).path.lstrip("/")
    var_dir = BASE_DIR / "var" / f"bench-e2e-{os.getpid()}"
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
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{dbname}"')
    results = []
    try:
        with ExitStack() as stack:
            symbol, keys = prepare(env, clients=max(levels))
            supervisor_pid = start_stack(env, var_dir, port, stack)
            for concurrency in levels:
                meter = CpuMeter(
                    lambda: process_groups(
                        supervisor_pid, {"web": "uvicorn", "worker": "run_matching"}, dbname
                    )
                )
                row = asyncio.run(run_level("127.0.0.1", port, keys, symbol, concurrency, seconds))
                row["cpu_ms_per_request"] = meter.ms_per(row["requests"])
                results.append(row)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')

    print(
        f"{'clients':>8} {'orders/s':>9} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}"
        "  statuses"
    )
    for row in results:
        print(
            f"{row['concurrency']:>8} {row['orders_per_s']:>9,.1f} {row['requests_per_s']:>9,.1f} "
            f"{row['p50_ms']:>8} "
            f"{row['p99_ms']:>8} {row['max_ms']:>8}  {row['statuses']}"
        )
    print("CPU per request, ms (whole processes, all threads; less sensitive to other load):")
    for row in results:
        cpu = "  ".join(f"{group} {ms}" for group, ms in row["cpu_ms_per_request"].items())
        print(f"{row['concurrency']:>8}  {cpu}")
    best = max(
        (r for r in results if r["p99_ms"] < 50), key=lambda r: r["orders_per_s"], default=None
    )
    print(
        json.dumps(
            {
                "bench": "e2e",
                "smoke": args.smoke,
                "goals": {"floor_orders_per_s": 400, "p99_ms": 50, "aim_orders_per_s": 1000},
                "levels": results,
                "best_under_p99_50ms": best,
            }
        )
    )
    return 0

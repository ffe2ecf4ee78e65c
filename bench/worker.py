"""`python -m bench worker [--smoke] [--n N]`: one shard worker draining preloaded commands.

Setup (not timed): a scratch database `bench_worker_<pid>` (migrated), one instrument, 100
users, N commands (about 80% limit places around the mid, some crossing; 20% cancels of
earlier orders) with their pending_new Order rows, all inserted with COPY. Timed: the worker's
batch loop (poll, stamp, engine, one durable transaction per batch with orders, trades,
journal, commands, books, shard counters and audit rows, then the Redis publishes) until no
command is left. Goal: at least 30,000 commands/s per shard. Prints a table, then JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from collections import defaultdict
from decimal import Decimal

from bench._cpu import CpuMeter, postgres_backends
from bench._scratch_db import scratch_django

SYMBOL = "BENCH-W"
MID = 10_000  # ticks of 0.01


def _preload(n: int, seed: int) -> int:
    """Insert the instrument, users, N commands and their orders; returns the command count."""
    from django.contrib.auth import get_user_model
    from django.db import connection, transaction

    from accounts.ledger import funds_deposit, funds_hold
    from exchange.models import Instrument, Order
    from matching.instruments import engine_instrument_spec

    instrument = Instrument.objects.create(
        symbol=SYMBOL,
        base_asset="BW",
        quote_asset="USD",
        base_precision=0,
        quote_precision=2,
        tick_size="0.01",
        lot_size="1",
        min_quantity="1",
        min_notional="0",
        price_band_pct="50.00",
    )
    user_model = get_user_model()
    users = user_model.objects.bulk_create(
        [user_model(username=f"bench{i}", email=f"bench{i}@bench.local") for i in range(100)]
    )
    user_ids = [u.pk for u in users]
    rnd = random.Random(seed)
    order_fields = [f.column for f in Order._meta.concrete_fields]
    # Columns this benchmark does not set take the model's default.
    defaults = {f.column: f.get_default() for f in Order._meta.concrete_fields}
    orders, commands = [], []
    holds: dict[tuple[int, str], Decimal] = defaultdict(Decimal)
    now = "now"
    commands.append(
        (1, 0, "add_instrument", json.dumps(engine_instrument_spec(instrument)), None, None)
    )
    placed: list[tuple[int, int]] = []
    next_order = 1
    for cid in range(2, n + 1):
        if placed and rnd.random() < 0.2:
            oid, uid = placed.pop(rnd.randrange(len(placed)))
            commands.append((cid, 0, "cancel", json.dumps({"order_id": oid}), oid, uid))
            continue
        oid, uid = next_order, rnd.choice(user_ids)
        next_order += 1
        is_buy = rnd.random() < 0.5
        # Mostly passive, about 1 in 12 crossing the spread by a tick or two.
        offset = rnd.randint(1, 60) if rnd.random() > 0.08 else -rnd.randint(0, 2)
        price = MID - offset if is_buy else MID + offset
        qty = rnd.randint(1, 10)
        max_quote = price * qty * 102 // 100 + 10 if is_buy else 0
        values = {
            "id": oid,
            "user_id": uid,
            "instrument_id": instrument.pk,
            "client_order_id": None,
            "request_digest": "",
            "side": "buy" if is_buy else "sell",
            "order_type": "limit",
            "time_in_force": "GTC",
            "price": f"{price / 100:.2f}",
            "stop_price": None,
            "quantity": str(qty),
            "quote_quantity": None,
            "display_quantity": None,
            "post_only": False,
            "post_only_adjust": False,
            "stp_mode": "",
            "expire_at": None,
            "maker_fee_ppm": 1000,
            "taker_fee_ppm": 2000,
            "held_amount": f"{max_quote / 100:.2f}" if is_buy else str(qty),
            "hold_remaining": f"{max_quote / 100:.2f}" if is_buy else str(qty),
            "status": "pending_new",
            "reason": "",
            "reject_code": "",
            "filled_quantity": "0",
            "remaining_quantity": str(qty),
            "reserve_quantity": "0",
            "cumulative_quote": "0",
            "fees": "0",
            "quote_spent": "0",
            "priority_seq": None,
            "engine_max_quote": None,
            "created_at": now,
            "updated_at": now,
        }
        orders.append(tuple(values.get(c, defaults.get(c)) for c in order_fields))
        asset = "USD" if is_buy else "BW"
        holds[(uid, asset)] += Decimal(max_quote).scaleb(-2) if is_buy else qty
        payload = {
            "symbol": SYMBOL,
            "order_id": oid,
            "user_id": uid,
            "is_buy": is_buy,
            "order_type": 0,
            "price": price,
            "qty": qty,
            "tif": 0,
            "expire_at": 0,
            "flags": 0,
            "display_qty": 0,
            "stop_price": 0,
            "max_quote": max_quote,
            "maker_fee_ppm": 1000,
            "taker_fee_ppm": 2000,
            "stp": 0,
        }
        commands.append((cid, 0, "place", json.dumps(payload), oid, uid))
        placed.append((oid, uid))
    raw = connection.connection
    with raw.cursor() as cursor:
        with cursor.copy(f"COPY exchange_order ({', '.join(order_fields)}) FROM STDIN") as copy:
            for row in orders:
                copy.write_row(row)
        with cursor.copy(
            "COPY matching_command (id, shard, kind, payload, order_id, user_id, created_at, "
            "attempts, reject_code) FROM STDIN"
        ) as copy:
            for row in commands:
                copy.write_row((*row, "now", 0, ""))
        cursor.execute("SELECT setval('exchange_order_id_seq', %s)", [next_order])
        cursor.execute("SELECT setval('matching_command_id_seq', %s)", [n + 1])
        cursor.execute("ANALYZE exchange_order")
        cursor.execute("ANALYZE matching_command")
    raw.commit() if not raw.autocommit else None
    # Each user is funded with what their orders hold, and the holds are taken, as order_place
    # would have done order by order.
    users = {user.pk: user for user in users}
    with transaction.atomic():
        for (uid, asset), amount in holds.items():
            funds_deposit(user=users[uid], asset=asset, amount=amount, memo="bench funds")
            funds_hold(user=users[uid], asset=asset, amount=amount, order_id=None)
    return len(commands)


def _drain(batch_limit: int, dbname: str) -> dict:
    """Run the shard's batch loop until no command is left; returns timings and CPU."""
    from exchange.redis_connection import redis_client
    from matching.batch_loop import ShardLoop
    from matching.lease import ShardLease
    from matching.publish import Publisher

    lease = ShardLease(shard=0)
    lease.acquire(wait=False)
    loop = ShardLoop(
        shard=0,
        epoch=lease.epoch,
        actor_label="bench",
        publisher=Publisher(client=redis_client(), shard=0, consumer="bench"),
        batch_limit=batch_limit,
    )
    loop.recover()
    batches = 0
    batch_seconds: list[float] = []
    meter = CpuMeter(lambda: {"worker": [os.getpid()], "postgres": postgres_backends(dbname)})
    started = time.perf_counter()
    while True:
        rows = loop.poll()
        if not rows:
            break
        t0 = time.perf_counter()
        loop.batch_apply(rows)
        batch_seconds.append(time.perf_counter() - t0)
        batches += 1
    elapsed = time.perf_counter() - started
    cpu_us = meter.per(loop.applied_total, scale=1_000_000)
    lease.release()
    batch_seconds.sort()
    return {
        "applied": loop.applied_total,
        "seconds": elapsed,
        "batches": batches,
        "batch_p50_ms": 1000 * batch_seconds[len(batch_seconds) // 2] if batch_seconds else 0,
        "batch_max_ms": 1000 * batch_seconds[-1] if batch_seconds else 0,
        "cpu_us_per_command": cpu_us,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench worker")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--n", type=int, default=None, help="commands (default 200000)")
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    n = args.n or (5_000 if args.smoke else 200_000)
    dbname = f"bench_worker_{os.getpid()}"
    with scratch_django(dbname):
        from django.db import connection

        t0 = time.perf_counter()
        total = _preload(n, args.seed)
        preload_s = time.perf_counter() - t0
        result = _drain(args.batch, dbname)
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM exchange_trade")
            trades = cursor.fetchone()[0]
            cursor.execute("SELECT count(*) FROM matching_command WHERE applied_at IS NULL")
            left = cursor.fetchone()[0]
            cursor.execute("SHOW synchronous_commit")
            sync = cursor.fetchone()[0]
    rate = result["applied"] / result["seconds"] if result["seconds"] else 0.0
    rows = [
        ("commands preloaded", f"{total:,}", f"{preload_s:.1f} s setup (not timed)"),
        ("commands applied", f"{result['applied']:,}", f"{left} left"),
        ("trades", f"{trades:,}", ""),
        ("batches", f"{result['batches']:,}", f"limit {args.batch}"),
        ("batch p50 / max", f"{result['batch_p50_ms']:.1f} ms", f"{result['batch_max_ms']:.1f} ms"),
        ("drain time", f"{result['seconds']:.2f} s", f"synchronous_commit={sync}"),
        ("throughput", f"{rate:,.0f} commands/s", "goal >= 30,000"),
        (
            "CPU per command",
            f"{result['cpu_us_per_command']['total']} µs",
            ", ".join(f"{k} {v}" for k, v in result["cpu_us_per_command"].items() if k != "total"),
        ),
    ]
    for name, value, note in rows:
        print(f"{name:<20} {value:>22}  {note}")
    print(
        json.dumps(
            {
                "benchmark": "worker",
                "smoke": args.smoke,
                "commands": result["applied"],
                "trades": trades,
                "seconds": round(result["seconds"], 3),
                "commands_per_s": round(rate),
                "batches": result["batches"],
                "batch_p50_ms": round(result["batch_p50_ms"], 2),
                "cpu_us_per_command": result["cpu_us_per_command"],
                "synchronous_commit": sync,
                "goal_commands_per_s": 30_000,
            }
        )
    )
    return 0 if left == 0 else 1

"""`python -m bench recovery [--smoke] [--n N]`: rebuild a shard holding N resting orders.

Setup (not timed): a scratch database `bench_recovery_<pid>` (migrated) with one instrument
(its BookState and ShardState rows as the worker leaves them) and N resting limit orders
(half bids below the mid, half asks above, a few hundred levels, each with its priority seq),
generated in SQL. Timed: `matching.recovery.engine_recover` as the worker runs it on lease
acquisition: the database read (server-side cursor, conversions in SQL) and `Engine.bulk_load`
(no matching, gc off), reported separately. Goal: 1,000,000 orders in under 15 s in total.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from bench._scratch_db import scratch_django

SYMBOL = "BENCH-R"
MID = 100_000  # ticks of 0.01
LEVELS = 500  # per side


def _preload(n: int) -> None:
    """The instrument, its book and shard state, and N resting orders (set-based)."""
    from django.contrib.auth import get_user_model
    from django.db import connection

    from exchange.models import Instrument
    from matching.instruments import engine_instrument
    from matching.models import BookState, ShardState

    instrument = Instrument.objects.create(
        symbol=SYMBOL,
        base_asset="BR",
        quote_asset="USD",
        base_precision=0,
        quote_precision=2,
        tick_size="0.01",
        lot_size="1",
        min_quantity="1",
        min_notional="0",
    )
    user_model = get_user_model()
    users = user_model.objects.bulk_create(
        [user_model(username=f"rec{i}", email=f"rec{i}@bench.local") for i in range(1000)]
    )
    spec = engine_instrument(instrument)
    BookState.objects.create(
        symbol=SYMBOL, shard=0, book_seq=n, position=0, spec=list(spec.as_tuple())
    )
    ShardState.objects.create(shard=0, event_seq=2 * n, trade_seq=0, apply_seq=n)
    first_user = users[0].pk
    from exchange.models import Order

    # Order i: bid when odd, ask when even; price levels spread by i % LEVELS.
    exprs = {
        "id": "i",
        "user_id": "%(u0)s + i %% 1000",
        "instrument_id": "%(inst)s",
        "side": "CASE WHEN i %% 2 = 1 THEN 'buy' ELSE 'sell' END",
        "order_type": "'limit'",
        "time_in_force": "'GTC'",
        "price": "(CASE WHEN i %% 2 = 1 THEN %(mid)s - 1 - i %% %(levels)s "
        "ELSE %(mid)s + i %% %(levels)s END) * 0.01",
        "quantity": "1 + i %% 9",
        "remaining_quantity": "1 + i %% 9",
        "status": "'new'",
        "maker_fee_ppm": "1000",
        "taker_fee_ppm": "2000",
        "priority_seq": "i",
        "engine_max_quote": "CASE WHEN i %% 2 = 1 THEN 10000000000 ELSE 0 END",
        "created_at": "now()",
        "updated_at": "now()",
    }
    params = {"u0": first_user, "inst": instrument.pk, "mid": MID, "levels": LEVELS, "n": n}
    # Every other column takes the model's default (the schema grows; this keeps up).
    for field in Order._meta.concrete_fields:
        if field.column not in exprs:
            exprs[field.column] = f"%(d_{field.column})s"
            params[f"d_{field.column}"] = field.get_default()
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO exchange_order ({', '.join(exprs)}) "
            f"SELECT {', '.join(exprs.values())} FROM generate_series(1, %(n)s) AS i",
            params,
        )
        cursor.execute("ANALYZE exchange_order")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench recovery")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--n", type=int, default=None, help="resting orders (default 1000000)")
    args = parser.parse_args(argv)
    n = args.n or (20_000 if args.smoke else 1_000_000)
    with scratch_django(f"bench_recovery_{os.getpid()}"):
        from matching.recovery import engine_recover

        t0 = time.perf_counter()
        _preload(n)
        preload_s = time.perf_counter() - t0
        started = time.perf_counter()
        recovered = engine_recover(0)
        total_s = time.perf_counter() - started
        engine = recovered.engine
        bids, asks = engine.depth(SYMBOL, 1)
        loaded = len(engine.orders)
    ok = loaded == n and bids and asks and bids[0][0] < asks[0][0]
    rows = [
        ("resting orders", f"{n:,}", f"{preload_s:.1f} s setup (not timed)"),
        ("orders in engine", f"{loaded:,}", "ok" if ok else "MISMATCH"),
        ("database read", f"{recovered.read_seconds:.2f} s", "server-side cursor"),
        ("bulk load", f"{recovered.load_seconds:.2f} s", "gc off, no matching"),
        ("total recovery", f"{total_s:.2f} s", "goal < 15 s for 1,000,000"),
        ("orders/s", f"{n / total_s:,.0f}", ""),
    ]
    for name, value, note in rows:
        print(f"{name:<18} {value:>14}  {note}")
    print(
        json.dumps(
            {
                "benchmark": "recovery",
                "smoke": args.smoke,
                "orders": n,
                "read_s": round(recovered.read_seconds, 3),
                "load_s": round(recovered.load_seconds, 3),
                "total_s": round(total_s, 3),
                "goal_total_s": 15.0,
                "ok": bool(ok),
            }
        )
    )
    return 0 if ok else 1

"""Audit trail benchmark: `python -m bench audit [--smoke]`.

Works in a scratch database (`<db>_audit_bench`, created, migrated and dropped again unless
--keep) next to the one DATABASE_URL names. Measures:
- records/s written by concurrent writer processes: one record per transaction (the order
  path) and batches of records per transaction (the matching worker), with a sealer process
  running alongside, and the sealer's lag when the writers stop;
- the sealer's throughput on a backlog (goal: at least 20,000 records/s);
- audit_verify's throughput on the sealed chain.
Prints a table, then one JSON line with the figures.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from urllib.parse import urlsplit, urlunsplit

SEALER_GOAL = 20_000


def _scratch_url(url: str) -> tuple[str, str, str]:
    parts = urlsplit(url)
    name = (parts.path.lstrip("/") or "exchange") + "_audit_bench"
    admin_url = urlunsplit(parts._replace(path="/postgres"))
    return urlunsplit(parts._replace(path="/" + name)), admin_url, name


def _admin_sql(admin_url: str, sql: str) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql)


def _setup_django(db_url: str) -> None:
    os.environ["DATABASE_URL"] = db_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "exchange.settings")
    import django
    from django.apps import apps

    if not apps.ready:
        django.setup()
        import logging

        logging.getLogger("audit").setLevel(logging.WARNING)
    else:  # already configured by the caller: point the default connection at the scratch DB
        from django.conf import settings
        from django.db import connections

        name = urlsplit(db_url).path.lstrip("/")
        connections.close_all()
        settings.DATABASES["default"]["NAME"] = name
        connections["default"].settings_dict["NAME"] = name


def _entries(n: int, writer: int, start: int):
    from audit.events import AuditEvent
    from audit.services import AuditEntry

    return [
        AuditEntry(
            event_type=AuditEvent.TRADE_EXECUTED,
            actor_label=f"bench-{writer}",
            user_id=writer,
            order_id=start + i,
            trade_id=start + i,
            symbol="BTC-USD",
            shard=0,
            payload={
                "price": "65000.10",
                "quantity": "0.0150",
                "maker_side": "buy",
                "buy_fee": "1.23",
                "sell_fee": "0.98",
                "n": start + i,
            },
        )
        for i in range(n)
    ]


def _writer(db_url: str, writer: int, per_tx: int, seconds: float, ready, go, out) -> None:
    _setup_django(db_url)
    from django.db import connection, transaction

    from audit.services import audit_record_many

    connection.ensure_connection()
    ready.put(writer)
    go.wait()
    written = transactions = 0
    started = time.monotonic()
    deadline = started + seconds
    while time.monotonic() < deadline:
        entries = _entries(per_tx, writer, written)
        with transaction.atomic():
            audit_record_many(records=entries)
        written += per_tx
        transactions += 1
    out.put((written, transactions, time.monotonic() - started))


def _sealer(db_url: str, stop, out) -> None:
    _setup_django(db_url)
    from audit.sealer import audit_seal

    sealed = 0
    while not stop.is_set():
        sealed += audit_seal().sealed
        time.sleep(0.01)
    out.put(sealed)


def _write_phase(db_url: str, *, writers: int, per_tx: int, seconds: float) -> dict:
    from django.db import connections

    from audit.selectors import audit_seal_lag

    connections.close_all()
    ctx = mp.get_context("spawn")
    out, ready, sealer_out = ctx.Queue(), ctx.Queue(), ctx.Queue()
    stop, go = ctx.Event(), ctx.Event()
    sealer = ctx.Process(target=_sealer, args=(db_url, stop, sealer_out))
    sealer.start()
    procs = [
        ctx.Process(target=_writer, args=(db_url, w, per_tx, seconds, ready, go, out))
        for w in range(writers)
    ]
    for proc in procs:
        proc.start()
    for _ in procs:
        ready.get()
    go.set()
    results = [out.get() for _ in procs]
    elapsed = max(r[2] for r in results)
    for proc in procs:
        proc.join()
    lag = audit_seal_lag()
    stop.set()
    sealed = sealer_out.get()
    sealer.join()
    written = sum(r[0] for r in results)
    return {
        "writers": writers,
        "records_per_tx": per_tx,
        "records": written,
        "transactions": sum(r[1] for r in results),
        "records_per_s": round(written / elapsed),
        "sealed_meanwhile": sealed,
        "unsealed_at_end": lag.unsealed,
        "oldest_unsealed_s": round(lag.oldest_unsealed_age_s or 0.0, 3),
    }


def _seal_backlog(backlog: int) -> dict:
    from django.db import transaction

    from audit.sealer import audit_seal_all
    from audit.services import audit_record_many

    audit_seal_all()
    for start in range(0, backlog, 5_000):
        with transaction.atomic():
            audit_record_many(records=_entries(min(5_000, backlog - start), 99, start))
    started = time.monotonic()
    sealed = audit_seal_all(timeout=600)
    elapsed = time.monotonic() - started
    return {
        "records": sealed,
        "seconds": round(elapsed, 3),
        "records_per_s": round(sealed / elapsed),
    }


def _verify() -> dict:
    from audit.verify import audit_chain_verify

    started = time.monotonic()
    result = audit_chain_verify()
    elapsed = time.monotonic() - started
    return {
        "ok": result.ok,
        "records": result.checked,
        "records_per_s": round(result.checked / elapsed),
    }


def main(argv: list[str]) -> int:
    """Run the benchmark; returns 0 when the sealer meets its goal (always 0 with --smoke)."""
    parser = argparse.ArgumentParser(prog="python -m bench audit", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="a tiny run, seconds long")
    parser.add_argument("--writers", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--backlog", type=int, default=200_000)
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    args = parser.parse_args(argv)
    if args.smoke:
        args.writers, args.seconds, args.backlog = 2, 1.0, 5_000

    base_url = os.environ.get("DATABASE_URL")
    if not base_url:
        print("DATABASE_URL is not set (e.g. postgres://postgres@127.0.0.1:5432/exchange)")
        return 2
    db_url, admin_url, name = _scratch_url(base_url)
    _admin_sql(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    _admin_sql(admin_url, f'CREATE DATABASE "{name}"')
    try:
        _setup_django(db_url)
        from django.core.management import call_command

        call_command("migrate", "audit", verbosity=0)
        single = _write_phase(db_url, writers=args.writers, per_tx=1, seconds=args.seconds)
        batched = _write_phase(db_url, writers=args.writers, per_tx=500, seconds=args.seconds)
        backlog = _seal_backlog(args.backlog)
        verify = _verify()
    finally:
        from django.db import connections

        connections.close_all()
        if not args.keep:
            _admin_sql(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    rows = [
        (
            "write, 1 record/tx",
            f"{single['records_per_s']:,} rec/s",
            f"{single['writers']} writers, lag at end {single['unsealed_at_end']} rec / "
            f"{single['oldest_unsealed_s']} s",
        ),
        (
            "write, 500 records/tx",
            f"{batched['records_per_s']:,} rec/s",
            f"{batched['writers']} writers, lag at end {batched['unsealed_at_end']} rec / "
            f"{batched['oldest_unsealed_s']} s",
        ),
        (
            "sealer, backlog",
            f"{backlog['records_per_s']:,} rec/s",
            f"{backlog['records']:,} records in {backlog['seconds']} s (goal {SEALER_GOAL:,})",
        ),
        (
            "audit_verify",
            f"{verify['records_per_s']:,} rec/s",
            f"{verify['records']:,} records, ok={verify['ok']}",
        ),
    ]
    print(f"{'measure':<24}{'throughput':>18}  detail")
    for label, figure, detail in rows:
        print(f"{label:<24}{figure:>18}  {detail}")
    meets_goal = backlog["records_per_s"] >= SEALER_GOAL
    print(
        json.dumps(
            {
                "bench": "audit",
                "smoke": args.smoke,
                "write_single": single,
                "write_batched": batched,
                "seal_backlog": backlog,
                "verify": verify,
                "sealer_goal_records_per_s": SEALER_GOAL,
                "sealer_meets_goal": meets_goal,
            }
        )
    )
    return 0 if (meets_goal or args.smoke) and verify["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

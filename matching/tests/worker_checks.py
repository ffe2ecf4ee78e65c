"""Shared waits and invariants for the worker tests (what must hold after any run)."""

import subprocess
import sys

from django.db import connection

from accounts.selectors import ledger_discrepancies
from conftest import BASE_DIR, wait_until
from matching.models import Command


def all_commands_applied(timeout: float = 60) -> None:
    """Wait until no command of any shard is waiting."""
    wait_until(
        lambda: not Command.objects.filter(applied_at__isnull=True).exists(), timeout=timeout
    )


def exactly_once_invariants() -> None:
    """Every command applied once, journal contiguous, trades unique, fills = sum of trades."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM matching_command WHERE applied_at IS NULL")
        assert cursor.fetchone()[0] == 0
        cursor.execute("SELECT count(apply_seq), count(DISTINCT apply_seq) FROM matching_command")
        total, distinct = cursor.fetchone()
        assert total == distinct
        cursor.execute(
            "SELECT count(*), coalesce(min(apply_seq), 1), coalesce(max(apply_seq), 0) "
            "FROM matching_journalentry WHERE shard = 0"
        )
        entries, first, last = cursor.fetchone()
        assert (first, last) == (1, entries), "journal positions are contiguous from 1"
        assert entries == total, "one journal row per journaled command"
        cursor.execute("SELECT apply_seq FROM matching_shardstate WHERE shard = 0")
        assert cursor.fetchone()[0] == last
        cursor.execute(
            "SELECT count(*), count(DISTINCT (instrument_id, engine_trade_seq)) FROM exchange_trade"
        )
        trades, distinct_trades = cursor.fetchone()
        assert trades == distinct_trades
        cursor.execute(
            """
            SELECT count(*) FROM exchange_order o
             WHERE o.filled_quantity <> coalesce((
                   SELECT sum(t.quantity) FROM exchange_trade t
                    WHERE t.maker_order_id = o.id OR t.taker_order_id = o.id), 0)
            """
        )
        assert cursor.fetchone()[0] == 0, "each order's fill equals the sum of its trades"
        cursor.execute("SELECT count(*) FROM exchange_order WHERE status = 'pending_new'")
        assert cursor.fetchone()[0] == 0
    assert ledger_discrepancies() == {}, "the ledger balances and matches the open orders"


def matching_verify_run(
    env: dict[str, str], arguments: tuple[str, ...] = ("--shard", "0")
) -> subprocess.CompletedProcess:
    """Run `manage.py matching_verify` with `arguments` as the operator would; its exit status
    and output."""
    return subprocess.run(
        [sys.executable, "manage.py", "matching_verify", *arguments],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def matching_verify(env: dict[str, str]) -> str:
    """Run `manage.py matching_verify --shard 0` as the operator would; fail on a mismatch."""
    result = matching_verify_run(env)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout

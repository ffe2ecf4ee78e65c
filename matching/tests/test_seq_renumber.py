"""A database numbered by an engine before state version 2 (priority and book seqs counters of
their own) is renumbered by migration matching 0006 to what a replay of its journal gives."""

import pytest
from django.db import connection

from conftest import wait_until
from exchange.models import Order
from exchange.tests.api_client import make_user
from matching.seq_renumber import journaled_shards, shard_seqs_renumber
from matching.tests.order_rows import instrument_create, order_row_place
from matching.tests.worker_checks import (
    all_commands_applied,
    matching_verify,
    matching_verify_run,
)

pytestmark = [pytest.mark.processes, pytest.mark.django_db(transaction=True)]

OPEN = ("new", "partially_filled", "untriggered")


def test_seqs_numbered_by_the_old_counters_are_renumbered_and_verify_again(processes, process_env):
    instrument = instrument_create()
    users = [make_user(f"renumber-{n}") for n in range(3)]
    worker = processes.manage("run_matching", "--shard", "0", env=process_env, name="worker")
    wait_until(lambda: "shard worker serving" in worker.log_path.read_text(), timeout=30)
    for n in range(12):
        order_row_place(
            user=users[n % 3], instrument=instrument, side="buy" if n % 2 else "sell",
            quantity="2", price=f"{100 + (n % 4) * (1 if n % 2 else -1) + (0 if n % 2 else 4)}.00",
        )  # fmt: skip
    all_commands_applied()
    worker.terminate()
    worker.wait(timeout=30)
    assert "OK" in matching_verify(process_env)
    # As an older worker left them: open orders counted 1, 2, 3... in priority order, and a
    # book's seq one a change.
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE exchange_order o SET priority_seq = r.n FROM (SELECT id, row_number() OVER"
            " (ORDER BY priority_seq) AS n FROM exchange_order WHERE status = ANY(%s)) r"
            " WHERE o.id = r.id",
            [list(OPEN)],
        )
        assert cursor.rowcount >= 6
        cursor.execute(
            "UPDATE matching_bookstate SET book_seq = 3 WHERE symbol = %s", [instrument.symbol]
        )
    failed = matching_verify_run(process_env)
    assert failed.returncode != 0 and "MISMATCH" in failed.stdout + failed.stderr, failed.stdout
    assert journaled_shards() == [0]
    orders, books = shard_seqs_renumber(0)
    assert orders >= 6 and books == 1
    assert "OK" in matching_verify(process_env)
    seqs = list(
        Order.objects.filter(status__in=OPEN).order_by("pk").values_list("priority_seq", flat=True)
    )
    assert len(set(seqs)) == len(seqs) and seqs == sorted(seqs)  # unique, in placement order
    assert shard_seqs_renumber(0) == (0, 0)  # a second run changes nothing

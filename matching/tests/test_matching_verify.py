"""`manage.py matching_verify` as an operator runs it on a corrupted database: exit 1, naming
what differs, never a traceback."""

import subprocess
import sys
from urllib.parse import urlsplit, urlunsplit

import pytest
from django.db import connection
from django.db.migrations.loader import MigrationLoader

from conftest import BASE_DIR, wait_until
from exchange.models import Instrument, Order
from exchange.tests.api_client import make_user
from matching.models import BookState, JournalEntry
from matching.tests.order_rows import instrument_create, order_row_place
from matching.tests.worker_checks import (
    all_commands_applied,
    matching_verify,
    matching_verify_run,
)

pytestmark = [pytest.mark.processes, pytest.mark.django_db(transaction=True)]

LAST_MATCHING_MIGRATION = max(
    name
    for app, name in MigrationLoader(None, ignore_no_migrations=True).disk_migrations
    if app == "matching"
)


def verify_failing(env) -> str:
    """Run matching_verify; it must exit 1 without a traceback; its stderr."""
    result = matching_verify_run(env)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert "MISMATCH" in result.stderr
    return result.stderr


def test_matching_verify_names_a_journal_entry_missing_or_unreadable_and_a_book_without_instrument(
    processes, process_env
):
    """A journal row that could not be decoded ended the check with a traceback, a journal
    position missing was only seen as a cascade of differing orders, and a book row naming a
    symbol no instrument has was a KeyError traceback."""
    instrument = instrument_create()
    worker = processes.manage("run_matching", "--shard", "0", env=process_env, name="worker")
    wait_until(lambda: "shard worker serving" in worker.log_path.read_text(), timeout=30)
    user = make_user()
    for price in ("9.00", "9.10", "9.20"):
        order_row_place(user=user, instrument=instrument, side="buy", quantity="2", price=price)
    all_commands_applied(timeout=30)
    assert not Order.objects.filter(instrument=instrument, status="pending_new").exists()
    assert "OK" in matching_verify(process_env)
    worker.terminate()
    worker.wait(timeout=30)

    entries = list(JournalEntry.objects.filter(shard=0).order_by("apply_seq"))
    middle = entries[-2]
    original = middle.command
    JournalEntry.objects.filter(pk=middle.pk).update(command="garbage")
    stderr = verify_failing(process_env)
    assert f"journal entry {middle.apply_seq} (command {middle.command_id}) cannot be replayed" in (
        stderr
    )

    JournalEntry.objects.filter(pk=middle.pk).update(command=original)
    assert "OK" in matching_verify(process_env)
    JournalEntry.objects.filter(pk=middle.pk).delete()
    stderr = verify_failing(process_env)
    assert f"journal entry {middle.apply_seq} missing" in stderr

    JournalEntry.objects.create(
        **{f.attname: getattr(middle, f.attname) for f in middle._meta.fields}
    )
    assert "OK" in matching_verify(process_env)
    book = BookState.objects.get(symbol=instrument.symbol)
    Instrument.objects.filter(pk=instrument.pk).update(symbol=instrument.symbol + "X")
    try:
        stderr = verify_failing(process_env)
        assert f"books without an instrument row: {book.symbol}" in stderr
    finally:
        Instrument.objects.filter(pk=instrument.pk).update(symbol=instrument.symbol)


@pytest.mark.parametrize(
    "command",
    [
        ["run_matching", "--shard", "0"],
        ["matching_verify", "--shard", "0"],
        ["ledger_verify"],
        ["audit_verify"],
    ],
)
def test_a_database_not_migrated_is_refused_naming_the_migration_missing(process_env, command):
    """Against a database without a table the code needs, the worker logged "database
    connection lost while waiting for the lease" and exited to be restarted (again and
    again), and the verify commands ended with a traceback."""
    with connection.cursor() as cursor:
        cursor.execute(
            "DELETE FROM django_migrations WHERE app = 'matching' AND name = %s RETURNING id",
            [LAST_MATCHING_MIGRATION],
        )
        assert cursor.fetchone(), "the migration was recorded as applied"
    try:
        result = subprocess.run(
            [sys.executable, "manage.py", *command],
            cwd=BASE_DIR,
            env=process_env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        with connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO django_migrations (app, name, applied) VALUES ('matching', %s, now())",
                [LAST_MATCHING_MIGRATION],
            )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert "is not migrated" in result.stderr
    assert f"matching.{LAST_MATCHING_MIGRATION}" in result.stderr
    assert "manage.py migrate" in result.stderr


@pytest.mark.parametrize("command", [["matching_verify", "--shard", "0"], ["ledger_verify"]])
def test_a_database_out_of_reach_is_said_without_a_traceback(process_env, command):
    """The migration check added to these commands met a database out of reach with a
    traceback (the worker had said "database connection lost" and exited)."""
    from exchange.embedded_servers import free_port

    url = urlsplit(process_env["DATABASE_URL"])
    closed = urlunsplit(url._replace(netloc=f"{url.username}@127.0.0.1:{free_port()}"))
    result = subprocess.run(
        [sys.executable, "manage.py", *command],
        cwd=BASE_DIR,
        env={**process_env, "DATABASE_URL": closed},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "is out of reach" in result.stderr


def test_matching_verify_without_a_shard_checks_every_shard(processes, process_env, settings):
    """It had checked shard 0 alone: with two shards, a broken shard 1 read OK."""
    from matching.tests.test_two_shards import symbol_on

    settings.MATCHING_SHARDS = 2
    env = {**process_env, "MATCHING_SHARDS": "2"}
    instrument = instrument_create(symbol=symbol_on(1))
    assert instrument.shard == 1
    worker = processes.manage("run_matching", "--shard", "1", env=env, name="worker-1")
    wait_until(lambda: "shard worker serving" in worker.log_path.read_text(), timeout=30)
    user = make_user()
    for price in ("9.00", "9.10", "9.20"):
        order_row_place(user=user, instrument=instrument, side="buy", quantity="2", price=price)
    all_commands_applied(timeout=30)
    worker.terminate()
    worker.wait(timeout=30)

    passed = matching_verify_run(env, arguments=())  # no --shard: every shard
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "shard 0: no state yet" in passed.stdout
    assert "shard 1: " in passed.stdout and passed.stdout.rstrip().endswith("OK")

    entry = JournalEntry.objects.filter(shard=1).order_by("apply_seq")[1]
    JournalEntry.objects.filter(pk=entry.pk).delete()
    failed = matching_verify_run(env, arguments=())
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "Traceback" not in failed.stderr, failed.stderr
    assert f"journal entry {entry.apply_seq} missing" in failed.stderr
    assert "MISMATCH (shard 1)" in failed.stderr

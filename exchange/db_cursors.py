"""Cursors with server-side binding on Django's connection.

Django's psycopg cursors bind parameters client-side: every array parameter is quoted into the
SQL text in Python, and PostgreSQL parses and plans each statement anew. The order path's
set-based statements (arrays of a batch's values) run through `bound_cursor` instead: psycopg
sends the parameters in binary, and a pooled connection prepares a statement it has run five
times (settings: `prepare_threshold`). Errors are Django's (IntegrityError, ...), as through
`connection.cursor()`, and the cursor works inside the caller's transaction.
"""

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from django.db import connection


@contextmanager
def bound_cursor() -> Iterator[psycopg.Cursor]:
    connection.ensure_connection()
    with connection.wrap_database_errors, psycopg.Cursor(connection.connection) as cursor:
        yield cursor


@contextmanager
def transaction_pipeline() -> Iterator[psycopg.Pipeline]:
    """Pipeline mode on Django's connection for statements inside a transaction, sent ending
    with a Sync alone (synced at the end of the block, one more round trip on leaving it).

    psycopg ends a pipeline with a Sync followed by a Flush request: PostgreSQL arms its
    idle-in-transaction timer (DB_IDLE_IN_TRANSACTION_TIMEOUT_MS) at the Sync, disarms it at
    the Flush, and arms it again only at the next Sync or query. A process (web or matching
    worker) stopped while such a pipeline waited for a lock (the command-order lock, a user's
    ledger lock) held that lock once granted, idle in its transaction for good, and order entry
    failed behind it. (Between leaving the block and the next statement the timer is still off:
    a stop in those microseconds is not covered. A stop in the middle of the pipeline, or of a
    COPY, leaves the session `active` waiting for its client, which no timer covers: Celery's
    watchdog ends it, exchange/stalled_sessions.py.)"""
    connection.ensure_connection()
    with connection.wrap_database_errors, connection.connection.pipeline() as pipeline:
        yield pipeline
        pipeline.sync()

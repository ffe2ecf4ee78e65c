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

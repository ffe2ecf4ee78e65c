"""Cursors for the set-based statements on the order path.

Django's PostgreSQL backend binds parameters on the client (it quotes every value into the SQL
text, in Python), which for the order entry batch's column arrays cost more CPU than anything
else it did. `bound_cursor()` is a cursor on the same connection and transaction that sends
the parameters separately (server-side binding, arrays dumped by psycopg's C adapters), and
lets psycopg prepare a statement the connection runs often. Errors come out as Django's
(`IntegrityError`, ...), as from `connection.cursor()`.
"""

from contextlib import contextmanager

import psycopg
from django.db import connection


@contextmanager
def bound_cursor():
    """A server-side-binding cursor in the current Django connection's transaction."""
    connection.ensure_connection()
    with connection.wrap_database_errors, psycopg.Cursor(connection.connection) as cursor:
        yield cursor

"""The watchdog of sessions stopped mid-statement (run by Celery beat, exchange.tasks).

PostgreSQL's idle_in_transaction_session_timeout (DB_IDLE_IN_TRANSACTION_TIMEOUT_MS) ends a
session idle inside its transaction, but not one whose statement waits for its client: a
process stopped (SIGSTOP, a paused host) in the middle of a `COPY ... FROM STDIN` (the order
entry batch's order and audit rows, the matching worker's journal and ledger) or of a pipeline
leaves its session `active`, waiting on `ClientRead`, for as long as it stays stopped: no
timeout this deployment sets ends it. It keeps the locks its transaction took
(its users' ledger locks, the command-order lock): the worker's settlement of those users and
every process's order entry waited behind it. This ends such sessions of this deployment
(named by the settings' `fallback_application_name`, or `exchange-matching:` by the worker)
once their statement has waited that long, which rolls their transaction back whole.

A session merely busy is never ended: a statement that runs (or waits for a lock, for I/O) is
`active` on another wait event. The one pattern a healthy process shows, a COPY streamed for
longer than the limit, does not occur here: the largest batch's COPY takes well under a second.
"""

import logging

from django.conf import settings
from django.db import connection, transaction

from audit.events import AuditEvent
from audit.services import audit_record
from matching.lease import WORKER_SESSION_PREFIX

logger = logging.getLogger(__name__)

# Ends (and lists) this database's sessions named as ours that have waited for their client in
# the middle of a statement of an open transaction for longer than the limit. One scan of
# pg_stat_activity; nothing else is read or locked.
STALLED_SESSIONS_END_SQL = """
SELECT a.pid, a.application_name, host(a.client_addr), a.client_port,
       EXTRACT(EPOCH FROM clock_timestamp() - a.query_start)::float8,
       EXTRACT(EPOCH FROM clock_timestamp() - a.xact_start)::float8,
       left(a.query, 80), pg_terminate_backend(a.pid)
  FROM pg_stat_activity a
 WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()
   AND a.backend_type = 'client backend'
   AND a.state = 'active' AND a.wait_event_type = 'Client' AND a.wait_event = 'ClientRead'
   AND a.xact_start IS NOT NULL
   AND a.query_start < clock_timestamp() - make_interval(secs => %s)
   AND (starts_with(a.application_name, %s) OR starts_with(a.application_name, %s))
"""


def stalled_sessions_end(*, limit_ms: int | None = None) -> list[dict]:
    """End the deployment's sessions stalled mid-statement past `limit_ms` (the settings'
    DB_IDLE_IN_TRANSACTION_TIMEOUT_MS; 0: none), each logged and audited; what was ended."""
    limit_ms = settings.DB_IDLE_IN_TRANSACTION_TIMEOUT_MS if limit_ms is None else limit_ms
    if not limit_ms:
        return []
    with connection.cursor() as cursor:
        cursor.execute(
            STALLED_SESSIONS_END_SQL,
            [limit_ms / 1000, settings.DATABASE_SESSION_PREFIX, WORKER_SESSION_PREFIX],
        )
        rows = cursor.fetchall()
    ended = [
        {
            "backend_pid": pid,
            "session": name,
            "client": f"{addr}:{port}" if addr else "local socket",
            "waited_seconds": round(waited, 1),
            "transaction_seconds": round(in_transaction, 1),
            "statement": statement,
        }
        for pid, name, addr, port, waited, in_transaction, statement, terminated in rows
        if terminated
    ]
    for session in ended:
        logger.warning(
            "stalled database session ended: its client stopped mid-statement", extra=session
        )
    if ended:
        with transaction.atomic():
            for session in ended:
                audit_record(event_type=AuditEvent.STALLED_SESSION_ENDED, payload=session)
    return ended

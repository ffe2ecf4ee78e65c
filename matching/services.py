"""Writes of the matching side that the web processes call: enqueueing commands for a shard."""

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import redis
from django.db import DatabaseError, transaction

from exchange.db_cursors import bound_cursor, transaction_pipeline
from exchange.redis_connection import redis_client
from matching.command_codec import ns_to_datetime
from matching.models import Command
from matching.selectors import shards_with_orders_due
from matching.transport import command_stream_key

logger = logging.getLogger(__name__)

# The stream is a signal, trimmed approximately to this many entries.
STREAM_MAXLEN = 100_000


def command_enqueue(
    *,
    shard: int,
    kind: str,
    payload: dict,
    order_id: int | None = None,
    user_id: int | None = None,
) -> Command:
    """Insert a command row in the caller's transaction and signal the shard once committed.

    Must run inside the transaction that makes the change the command carries out: the row is
    the record (the worker polls for unapplied rows), the stream entry only wakes the worker.
    """
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("command_enqueue must run inside the caller's transaction")
    row = CommandRow(shard=shard, kind=kind, payload=payload, order_id=order_id, user_id=user_id)
    (command_id,) = commands_enqueue_many(commands=[row])
    return row.stored(command_id)


@dataclass(frozen=True, slots=True)
class CommandRow:
    """One command for `commands_enqueue_many`."""

    shard: int
    kind: str
    payload: dict
    order_id: int | None = None
    user_id: int | None = None

    def stored(self, command_id: int) -> Command:
        """The Command this row became once inserted with `command_id`."""
        command = Command(
            pk=command_id,
            shard=self.shard,
            kind=self.kind,
            payload=self.payload,
            order_id=self.order_id,
            user_id=self.user_id,
        )
        command._state.adding = False
        return command


# Command ids in commit order. A shard's worker polls for unapplied commands above the highest
# id it has applied (a full poll from the start runs only once a second), so a transaction
# that drew smaller ids but committed after a later one would wait for that full poll: with
# more than one writer (web processes, the demo market maker, Celery's expiries) that was up to
# a second of delay. Every transaction that enqueues commands therefore takes this lock just
# before drawing their ids and keeps it to its commit (a transaction-level advisory lock, one
# for all shards so two transactions never take two such locks in opposite orders): ids are
# drawn in the order the transactions commit. It is held only from the commands' INSERT to the
# COMMIT (the audit rows and the commit's WAL flush). Its holder still takes row locks at
# COMMIT: the deferred foreign key checks of its new rows lock the referenced instrument and
# user rows FOR KEY SHARE. So a transaction must not hold one of those rows FOR UPDATE when it
# asks for this lock (a plain UPDATE, FOR NO KEY UPDATE, does not conflict): that deadlocks.
COMMAND_ORDER_LOCK_KEY = 0x636D_6473  # "cmds"

COMMAND_ORDER_LOCK_SQL = f"SELECT pg_advisory_xact_lock({COMMAND_ORDER_LOCK_KEY})"
# The JSON column goes in binary (%b): a text-format array escapes each of its quotes in Python
# (a regex substitution per quote: ~50 µs a payload).
COMMANDS_INSERT_SQL = """
INSERT INTO matching_command (shard, kind, payload, order_id, user_id, created_at)
SELECT c.shard, c.kind, c.payload, c.order_id, c.user_id, now()
  FROM unnest(%s::smallint[], %s::text[], %b::jsonb[], %s::bigint[], %s::bigint[])
       WITH ORDINALITY AS c(shard, kind, payload, order_id, user_id, n)
 ORDER BY c.n
RETURNING id
"""


def commands_enqueue_many(*, commands: Sequence[CommandRow]) -> list[int]:
    """`command_enqueue` for many commands at once (one INSERT); returns their ids in order.

    The ids follow the given order (the insert draws them in that order), so a shard applies
    the commands in the order given, and the order in which transactions commit (see
    COMMAND_ORDER_LOCK_KEY); the shards are signalled once the transaction commits.
    """
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("commands_enqueue_many must run inside the caller's transaction")
    if not commands:
        return []
    # The lock and the INSERT in one round trip (a pipeline).
    with bound_cursor() as lock, bound_cursor() as cursor:
        with transaction_pipeline():
            lock.execute(COMMAND_ORDER_LOCK_SQL)
            cursor.execute(
                COMMANDS_INSERT_SQL,
                [
                    [c.shard for c in commands],
                    [c.kind for c in commands],
                    [json.dumps(c.payload) for c in commands],
                    [c.order_id for c in commands],
                    [c.user_id for c in commands],
                ],
            )
        ids = sorted(row[0] for row in cursor.fetchall())
    signals = [(c.shard, command_id) for c, command_id in zip(commands, ids, strict=True)]
    transaction.on_commit(lambda: commands_signal(signals=signals))
    return ids


def commands_signal(*, signals: Sequence[tuple[int, int]]) -> None:
    """`command_signal` for many (shard, command id) pairs in one Redis round trip."""
    try:
        pipe = redis_client().pipeline(transaction=False)
        for shard, command_id in signals:
            pipe.xadd(
                command_stream_key(shard),
                {"id": command_id},
                maxlen=STREAM_MAXLEN,
                approximate=True,
            )
        pipe.execute()
    except redis.RedisError as exc:
        logger.warning(
            "command signals not sent; the worker's poll will find them",
            extra={"commands": len(signals), "why": str(exc)},
        )


def command_signal(*, shard: int, command_id: int) -> None:
    """Wake the shard's worker. Losing the signal (Redis down) only delays the command."""
    try:
        redis_client().xadd(
            command_stream_key(shard),
            {"id": command_id},
            maxlen=STREAM_MAXLEN,
            approximate=True,
        )
    except redis.RedisError as exc:
        logger.warning(
            "command signal not sent; the worker's poll will find it",
            extra={"shard": shard, "command_id": command_id, "why": str(exc)},
        )


def shard_expire_due_enqueue(*, shard: int, now_ns: int) -> Command | None:
    """Queue `expire_due(now=now_ns)` for a shard, unless one is still waiting to be applied
    (the waiting one expires everything due by the time it is applied... up to its own `now`,
    and the next tick follows within a second)."""
    with transaction.atomic():
        if Command.objects.filter(
            shard=shard, kind=Command.Kind.EXPIRE_DUE, applied_at__isnull=True
        ).exists():
            return None
        return command_enqueue(shard=shard, kind=Command.Kind.EXPIRE_DUE, payload={"now": now_ns})


def shards_expire_due_enqueue(*, now_ns: int, shard_count: int) -> list[Command]:
    """`shard_expire_due_enqueue` for each shard below `shard_count` that holds an open GTD/DAY
    order due by `now_ns`; the commands queued.

    A shard with nothing due gets no command: an `expire_due` there would change nothing (the
    worker does not even journal it), and beat's tick wrote one row per shard every second,
    never pruned. When the database cannot say which shards have orders due (an error reading
    it), every shard gets one, as every tick did before."""
    try:
        with transaction.atomic():
            due = shards_with_orders_due(now=ns_to_datetime(now_ns))
    except DatabaseError as exc:
        logger.warning(
            "shards with orders due not read; expire_due queued for every shard",
            extra={"why": str(exc)},
        )
        due = set(range(shard_count))
    queued = []
    for shard in sorted(s for s in due if s < shard_count):
        command = shard_expire_due_enqueue(shard=shard, now_ns=now_ns)
        if command is not None:
            queued.append(command)
    return queued

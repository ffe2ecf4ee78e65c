"""Writes of the matching side that the web processes call: enqueueing commands for a shard."""

import logging

import redis
from django.db import transaction

from exchange.redis_connection import redis_client
from matching.models import Command
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
    command = Command.objects.create(
        shard=shard, kind=kind, payload=payload, order_id=order_id, user_id=user_id
    )
    transaction.on_commit(lambda: command_signal(shard=shard, command_id=command.pk))
    return command


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

"""The shard's batch loop: recover, then poll commands, stamp, apply, commit, publish.

Exactly once: a command's effects (orders, trades, journal row, book and shard counters) and
its `applied_at` commit in ONE transaction that also checks the lease epoch under a row lock,
so a command is either wholly applied or not at all, and only by the lease holder. The poll
selects `applied_at IS NULL` rows by id (not "id > last seen"), so a row committed late with
a smaller id is still found, and a lost stream signal only delays a command.

Overlap: batch N commits on a writer thread (its own connection) while the main thread polls
and applies batch N+1 in the engine. At most one batch is in flight, and the engine is never
observed ahead of PostgreSQL: everything a batch writes and publishes is taken from the engine
right after that batch (before the next one is applied), its Redis side effects go out only
once its commit returned, the poll skips the in-flight ids (a full poll names them, the hot
path polls above them), an empty poll first waits for the commit, and batch N+1 is not sent
before N committed. If a commit fails
(the engine is then ahead of PostgreSQL) the process exits and the next holder rebuilds.
"""

import contextlib
import gc
import json
import logging
import sys
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson
import psycopg
from django.db import InterfaceError, OperationalError, connection, connections, transaction
from django.db.models import F

from audit.events import AuditEvent
from audit.services import audit_record
from matching.batch_writer import Applied, BatchWriter, LeaseFenced, PreparedBatch
from matching.command_codec import InvalidPayload, closed_before, engine_command, halt_note
from matching.engine import protocol as p
from matching.models import Command
from matching.publish import Publisher
from matching.recovery import engine_recover, instruments_enqueue

logger = logging.getLogger(__name__)

BATCH_LIMIT = 2000
SIGNAL_BLOCK_MS = 10
# Applied rows leave dead entries in the partial index until vacuum, and a poll from the
# start of the index walks them all. The hot path polls above the highest id applied so far;
# a full poll every FULL_POLL_SECONDS picks up rows committed late with a smaller id.
# `shard <= s AND (shard, id) > (s, after)` is `shard = s AND id > after` written so that only
# the partial index command_unapplied (shard, id) WHERE applied_at IS NULL can serve it (a
# row comparison on its columns, in its order): with statistics taken while most commands
# were unapplied, the plain form walked the primary key through every applied row instead,
# 30-140 ms per full poll behind a 200,000-command backlog (1-4 ms this way).
POLL_SQL = """
SELECT id, kind, payload, order_id, attempts FROM matching_command
 WHERE shard <= %(shard)s AND (shard, id) > (%(shard)s::smallint, %(after)s::bigint)
   AND applied_at IS NULL
 ORDER BY shard, id LIMIT %(limit)s
"""
# The full poll while a batch is in flight: that batch's ids look unapplied until it commits.
POLL_EXCLUDING_SQL = """
SELECT id, kind, payload, order_id, attempts FROM matching_command
 WHERE shard <= %(shard)s AND (shard, id) > (%(shard)s::smallint, %(after)s::bigint)
   AND applied_at IS NULL AND id <> ALL(%(exclude)s::bigint[])
 ORDER BY shard, id LIMIT %(limit)s
"""
FULL_POLL_SECONDS = 1.0
# A batch's transaction is some 20 round trips on the writer thread, each waiting for the GIL
# once its reply arrives: 0.2 ms rather than 1 ms measured ~5 % more commands/s.
WRITER_SWITCH_INTERVAL_S = 0.0002
# The default collector runs a young collection every 700 net allocations and a full one
# every few hundred thousand, each full one walking the whole engine (every resting order):
# a batch allocates tens of thousands of short-lived, acyclic objects that reference
# counting frees anyway. Fewer, larger young collections (1.4 s -> 0.26 s of 200,000
# commands in `bench worker`); the book loaded at recovery is frozen out of the collector.
GC_THRESHOLDS = (20_000, 20, 20)
_CONNECTION_ERRORS = (OperationalError, InterfaceError, psycopg.OperationalError)
FAILED_TWICE = "CommandFailed"
INVALID_COMMAND = "InvalidCommand"
MARKET_CLOSED = "MarketClosed"
MARKET_CLOSED_MESSAGE = "the trading session had closed when the matching engine received it"


class BatchFailed(Exception):
    """A batch could not be applied or committed; the engine may be ahead of PostgreSQL."""


@dataclass(slots=True)
class CommandRow:
    """An unapplied command as polled."""

    id: int
    kind: str
    payload: Any
    order_id: int | None
    attempts: int


_FLAT_JSON_TYPES = frozenset((int, str, bool, type(None)))


def payload_parse(text: str) -> Any:
    """A command payload from its JSON text: orjson (4x faster) for the usual flat object of
    integers, strings, booleans and nulls; anything else (floats, which orjson also makes of
    integers beyond 64 bits, nested values, what orjson refuses) as the standard parser
    reads it."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)
    if type(value) is dict and _FLAT_JSON_TYPES.issuperset(map(type, value.values())):
        return value
    return json.loads(text)


def commands_poll(
    *, shard: int, limit: int, after_id: int = 0, exclude: Sequence[int] = ()
) -> list[CommandRow]:
    """Unapplied commands of the shard with an id above `after_id` and not in `exclude`,
    oldest id first."""
    connection.ensure_connection()
    # Server-side binding and psycopg's own jsonb parsing (Django's cursor quotes client-side).
    with psycopg.Cursor(connection.connection) as cursor:
        params = {"shard": shard, "after": after_id, "limit": limit}
        if exclude:
            cursor.execute(POLL_EXCLUDING_SQL, {**params, "exclude": list(exclude)})
        else:
            cursor.execute(POLL_SQL, params)
        rows = cursor.fetchall()
    return [
        CommandRow(
            cid,
            kind,
            payload_parse(payload) if isinstance(payload, str) else payload,
            order_id,
            attempts,
        )
        for cid, kind, payload, order_id, attempts in rows
    ]


def attempts_record(command_ids: list[int]) -> None:
    """Count a failed batch against its commands (a command failing twice is then rejected)."""
    try:
        Command.objects.filter(id__in=command_ids, applied_at__isnull=True).update(
            attempts=F("attempts") + 1
        )
    except Exception as exc:  # exiting anyway; the count is a hint
        logger.warning("failed batch not counted", extra={"why": str(exc)})


class ShardLoop:
    """Owns the shard's engine while the lease is held."""

    def __init__(
        self,
        *,
        shard: int,
        epoch: int,
        actor_label: str,
        publisher: Publisher,
        batch_limit: int = BATCH_LIMIT,
        block_ms: int = SIGNAL_BLOCK_MS,
    ) -> None:
        self.shard = shard
        self.epoch = epoch
        self.actor_label = actor_label
        self.publisher = publisher
        self.batch_limit = batch_limit
        self.block_ms = block_ms
        self.engine = None
        self.apply_seq = 0
        self.last_stamp = 0
        self.writer: BatchWriter | None = None
        self.applied_total = 0
        self.next_full_poll = 0.0
        self.max_applied_id = 0
        # The batch being committed on the writer thread: (future, batch, publish payload).
        self.in_flight: tuple[Future, PreparedBatch, dict] | None = None
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"shard{shard}-db")
        self.writer_closed = False
        # The writer thread mostly waits on PostgreSQL; when a reply arrives it must get the
        # GIL back from the engine thread promptly, not after the default 5 ms slice.
        sys.setswitchinterval(WRITER_SWITCH_INTERVAL_S)
        gc.set_threshold(*GC_THRESHOLDS)

    def recover(self) -> None:
        """Rebuild the engine from PostgreSQL; queue instruments it does not know yet."""
        recovered = engine_recover(self.shard)
        self.engine = recovered.engine
        gc.freeze()  # the recovered book is long-lived: full collections need not walk it
        self.apply_seq = recovered.apply_seq
        self.last_stamp = recovered.last_stamp_ns
        self.writer = BatchWriter(
            shard=self.shard,
            epoch=self.epoch,
            actor_label=self.actor_label,
            instrument_ids=recovered.instrument_ids,
        )
        # Connect the writer thread now: a database problem shows at startup, and the first
        # batch does not wait for a connection.
        self.executor.submit(self.writer.session_prepare).result()
        queued = instruments_enqueue(shard=self.shard, engine=self.engine)
        with transaction.atomic():
            audit_record(
                event_type=AuditEvent.WORKER_RECOVERY,
                actor=self.actor_label,
                shard=self.shard,
                payload={
                    "epoch": self.epoch,
                    "apply_seq": self.apply_seq,
                    "orders": recovered.orders,
                    "stops": recovered.stops,
                    "read_s": round(recovered.read_seconds, 3),
                    "load_s": round(recovered.load_seconds, 3),
                    "instruments_queued": queued,
                },
            )
        try:
            self.publisher.group_ensure()
            self.publisher.consumers_prune()
        except Exception as exc:  # Redis is best effort
            logger.warning("consumer group not set up", extra={"why": str(exc)})
        self.publisher.snapshots_write(engine=self.engine, ts_ns=time.time_ns())
        self.publisher.announce()

    def step(self) -> int:
        """Apply one batch if commands are waiting, else wait briefly for a signal; returns
        the number of commands applied."""
        rows = self.poll()
        if not rows:
            self.publisher.signal_wait(block_ms=self.block_ms, count=self.batch_limit)
            return 0
        return self.batch_apply(rows)

    def poll(self) -> list[CommandRow]:
        """The next batch of unapplied commands: above the highest id applied so far on the
        hot path; from the start of the shard's queue once every FULL_POLL_SECONDS. Empty only
        when no batch is in flight either (everything polled before is committed)."""
        now = time.monotonic()
        if now < self.next_full_poll:
            # Above every id of the batch in flight, which is not committed yet.
            rows = commands_poll(
                shard=self.shard, limit=self.batch_limit, after_id=self.max_applied_id
            )
            if rows or self.in_flight is None:
                return rows
        elif self.in_flight is not None:
            # A full poll while a batch commits names that batch's commands (they look
            # unapplied until it commits) instead of waiting for the commit: the engine keeps
            # applying while the writer thread commits.
            self.next_full_poll = now + FULL_POLL_SECONDS
            rows = commands_poll(
                shard=self.shard,
                limit=self.batch_limit,
                exclude=self.in_flight[1].outcome.command_ids,
            )
            if rows:
                return rows
        self.flush()  # nothing new: an empty poll means everything polled before is committed
        self.next_full_poll = time.monotonic() + FULL_POLL_SECONDS
        return commands_poll(shard=self.shard, limit=self.batch_limit)

    def redis_restore(self) -> None:
        """Redis lost what the worker keeps there (wiped, or restarted without its data, or
        out of reach when a batch wrote its snapshots): write every book's snapshot again, once
        the batch in flight has committed (Redis never shows the engine ahead of PostgreSQL),
        and the command stream's consumer group."""
        self.flush()
        lost = self.publisher.snapshots_lost
        logger.warning("redis lost the shard's keys: book snapshots written again")
        try:
            self.publisher.group_ensure()
        except Exception as exc:  # Redis is best effort
            logger.warning("consumer group not created", extra={"why": str(exc)})
        self.publisher.snapshots_write(engine=self.engine, ts_ns=time.time_ns(), unless_newer=True)
        if lost and not self.publisher.snapshots_lost:
            # The hubs' copies of a book quiet since the lost batch are behind too.
            self.publisher.announce_new_feed()

    def flush(self) -> None:
        """Wait for the batch in flight to commit, then publish it (raises BatchFailed or
        LeaseFenced if it did not commit)."""
        publish = self._committed()
        if publish is not None:
            self.publisher.send(publish)

    def _committed(self) -> dict | None:
        """Wait for the batch in flight (if any) to commit; returns what to publish for it
        (raises BatchFailed or LeaseFenced if it did not commit)."""
        if self.in_flight is None:
            return None
        future, batch, publish = self.in_flight
        self.in_flight = None
        try:
            future.result()
        except LeaseFenced:
            raise
        except _CONNECTION_ERRORS as exc:
            raise BatchFailed(f"database unavailable: {exc}") from exc
        except Exception as exc:
            attempts_record(batch.outcome.command_ids)
            raise BatchFailed(f"batch commit failed: {exc!r}") from exc
        self.applied_total += len(batch.applied)
        return publish

    def close(self) -> None:
        """Commit and publish the batch in flight, then stop the writer thread."""
        try:
            self.flush()
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        """Stop the writer thread (after the batch in flight, without publishing it) and close
        its database connection."""
        self.in_flight = None
        if self.writer_closed:
            return
        self.writer_closed = True
        self.executor.submit(connections.close_all)
        self.executor.shutdown(wait=True)

    def _execute(self, batch: PreparedBatch) -> None:
        """Runs on the writer thread (Django gives it its own connection)."""
        self.writer.execute(batch)

    def _stamp(self) -> int:
        """Monotonic engine time in ns: wall clock, but never at or behind the previous one."""
        now = time.time_ns()
        self.last_stamp = now if now > self.last_stamp else self.last_stamp + 1
        return self.last_stamp

    def batch_apply(self, rows: list[CommandRow]) -> int:
        """Apply and commit one batch (commands that failed before are retried alone)."""
        first = rows[0]
        if first.attempts >= 2:
            stamp = self._stamp()
            applied = [
                Applied(first.id, first.kind, stamp, None, [], None, FAILED_TWICE, first.order_id)
            ]
            if first.kind == Command.Kind.AMEND and isinstance(first.payload, dict):
                # The order's hold goes back to what it was, as after an engine refusal.
                with contextlib.suppress(TypeError, ArithmeticError):
                    applied[0].hold_delta = Decimal(first.payload.get("hold_delta"))
            logger.error(
                "command failed twice: rejected", extra={"shard": self.shard, "command": first.id}
            )
            return self._commit(applied)
        if first.attempts == 1:
            rows = [first]
        else:
            for i, row in enumerate(rows):
                if row.attempts:
                    rows = rows[:i]
                    break
        engine = self.engine
        priority_of = engine.priority_seq
        applied = []
        seq = self.apply_seq
        for row in rows:
            stamp = self._stamp()
            if closed_before(row.payload, stamp):
                # Accepted in its session but reaching the engine after the close (behind a
                # stopped worker, or in flight at the close): refused without the engine, as
                # order entry would refuse it now, so that nothing trades outside the session.
                refused = Applied(
                    row.id, row.kind, stamp, None, [], None, MARKET_CLOSED, row.order_id,
                    reject_message=MARKET_CLOSED_MESSAGE,
                )  # fmt: skip
                if row.kind == Command.Kind.AMEND and row.payload.get("hold_delta"):
                    refused.hold_delta = Decimal(row.payload["hold_delta"])
                applied.append(refused)
                continue
            try:
                cmd = engine_command(row.kind, row.payload, stamp)
            except InvalidPayload as exc:
                logger.error("invalid command", extra={"command": row.id, "why": str(exc)})
                applied.append(
                    Applied(row.id, row.kind, stamp, None, [], None, INVALID_COMMAND, row.order_id)
                )
                continue
            try:
                events = engine.apply(cmd)
            except Exception as exc:
                self.flush()  # the batch before this one is not at fault
                attempts_record([r.id for r in rows])
                raise BatchFailed(f"engine failed on command {row.id}: {exc!r}") from exc
            # The priority of an order left resting, kept even if the batch later closes it
            # (so the stored row does not depend on how commands fell into batches).
            op = cmd[0]
            if op == p.OP_PLACE or op == p.OP_AMEND:
                rested = priority_of(cmd[3] if op == p.OP_PLACE else cmd[2])
            else:
                rested = None
            # A no-op expiry changes no engine state (no event, no counter): not journaled.
            if events or row.kind != Command.Kind.EXPIRE_DUE:
                seq += 1
                applied.append(
                    Applied(row.id, row.kind, stamp, cmd, events, seq, priority_seq=rested)
                )
                if op == p.OP_AMEND and row.payload.get("hold_delta"):
                    applied[-1].hold_delta = Decimal(row.payload["hold_delta"])
                elif op == p.OP_CANCEL:
                    applied[-1].cancel_reason = row.payload.get("reason")
                elif op == p.OP_HALT:
                    applied[-1].halt_note = halt_note(row.payload)
            else:
                applied.append(Applied(row.id, row.kind, stamp, cmd, events, None))
        count = self._commit(applied)
        self.apply_seq = seq
        return count

    def _commit(self, applied: list[Applied]) -> int:
        """Prepare the batch from the engine now, wait for the previous batch to commit (and
        publish it), then hand this one to the writer thread; returns its size."""
        try:
            batch = self.writer.prepare(engine=self.engine, applied=applied)
            publish = self.publisher.prepare(
                engine=self.engine, outcome=batch.outcome, ts_ns=max(a.stamp_ns for a in applied)
            )
        except Exception as exc:
            self.flush()  # the batch before this one is not at fault
            attempts_record([a.command_id for a in applied])
            raise BatchFailed(f"batch not prepared: {exc!r}") from exc
        committed = self._committed()
        # The writer thread starts on this batch before the previous one's Redis side effects
        # go out (they follow its commit all the same, and precede this batch's).
        self.in_flight = (self.executor.submit(self._execute, batch), batch, publish)
        self.max_applied_id = max(self.max_applied_id, *batch.outcome.command_ids)
        if committed is not None:
            self.publisher.send(committed)
        return len(applied)

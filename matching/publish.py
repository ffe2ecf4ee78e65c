"""After-commit Redis side effects of a batch: XACK, replies, book snapshots, market data.

All best effort: Redis is transport, PostgreSQL already holds the batch. A failure is logged
and the worker carries on (a web request then answers 202 and re-reads later).
"""

import logging
import time
import uuid
from typing import Any

import redis

from matching.batch_writer import BatchOutcome
from matching.command_codec import json_text
from matching.engine import Engine, Instrument
from matching.transport import (
    book_snapshot_key,
    command_stream_key,
    market_data_channel,
    replies_channel,
)

logger = logging.getLogger(__name__)

SNAPSHOT_DEPTH = 50
CONSUMER_GROUP = "matching"

# A batch's book snapshot replaces the stored one unless a later lease epoch wrote that: a
# holder that was fenced while it hung (between its commit and this write) and then woke up
# had put its older book over its successor's, and the order book API read it until the book
# next changed. (Recovery writes unconditionally: a rebuilt database starts its epochs over.)
_SNAPSHOT_SET_UNLESS_NEWER_EPOCH = """
local stored = redis.call('GET', KEYS[1])
if stored then
  local ok, doc = pcall(cjson.decode, stored)
  if ok and type(doc) == 'table' and tonumber(doc['epoch']) and
     tonumber(doc['epoch']) > tonumber(ARGV[2]) then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1])
return 1
"""


def _dumps(value: Any) -> str:
    return json_text(value)


def book_snapshot(engine: Engine, symbol: str, *, ts_ns: int) -> dict[str, Any]:
    """The book's top levels and seq as the snapshot key holds them (decimal strings)."""
    inst = next(i for i in engine.instruments() if i.symbol == symbol)
    bids, asks = engine.depth(symbol, SNAPSHOT_DEPTH)
    last = engine.last_price(symbol)

    def levels(rows):
        return [[inst.price_text(price), inst.qty_text(qty), count] for price, qty, count in rows]

    return {
        "symbol": symbol,
        "seq": engine.book_seq(symbol),
        "bids": levels(bids),
        "asks": levels(asks),
        "last_price": None if last is None else inst.price_text(last),
        "ts_ns": ts_ns,
    }


class Publisher:
    """Redis side of one shard worker."""

    def __init__(self, *, client: redis.Redis, shard: int, consumer: str, epoch: int = 0) -> None:
        self.client = client
        self.shard = shard
        self.epoch = epoch  # the lease epoch, written into every book snapshot
        self.consumer = consumer
        self.stream = command_stream_key(shard)
        self.pending_acks: list[bytes] = []
        # Each book's seq as of the last market-data message sent (or attempted: a message
        # that Redis lost still moves it, so the next one's prev_seq shows subscribers a gap).
        self.sent_seq: dict[str, int] = {}
        # The market-data messages of this publisher, numbered from 1 (every one attempted
        # counts, like sent_seq): a hub that sees a number skipped, or another publisher on the
        # shard (a worker took over: the last batch of its predecessor may never have been
        # published), tells the clients of trades and order events that some were lost.
        self.feed_id = uuid.uuid4().hex[:16]
        self.feed_seq = 0
        # A batch's book snapshots did not get through (Redis out of reach while it kept its
        # keys): the stored ones are behind the engine until every book's is written again.
        self.snapshots_lost = False
        # The command stream was out of reach at the last wait: said once, not at every wait
        # (one every SIGNAL_BLOCK_MS, 100 log lines a second for as long as Redis was away).
        self.stream_unavailable = False

    # ---- the wake-up signal ----------------------------------------------------------------
    def group_ensure(self) -> None:
        """Create the consumer group (and the stream) if missing, e.g. after a FLUSHALL."""
        try:
            self.client.xgroup_create(self.stream, CONSUMER_GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def consumers_prune(self) -> int:
        """Delete the stream's other consumers (the earlier holders of the shard: each worker
        reads as `host:pid`); returns how many. Only the lease holder reads the stream, and
        every worker that ever held the shard had stayed in the group for good, with the
        signals it read and had not acknowledged when it died still pending under its name."""
        removed = 0
        for consumer in self.client.xinfo_consumers(self.stream, CONSUMER_GROUP):
            name = consumer["name"]
            name = name.decode() if isinstance(name, bytes) else name
            if name != self.consumer:
                self.client.xgroup_delconsumer(self.stream, CONSUMER_GROUP, name)
                removed += 1
        return removed

    def signal_wait(self, *, block_ms: int, count: int) -> int:
        """Wait up to `block_ms` for command signals; returns how many arrived. The ids they
        carry are not used: the database poll that follows finds every unapplied command."""
        group_lost = False
        try:
            try:
                reply = self.client.xreadgroup(
                    CONSUMER_GROUP, self.consumer, {self.stream: ">"}, count=count, block=block_ms
                )
            except redis.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                self.group_ensure()
                group_lost = True
        except redis.RedisError as exc:
            if not self.stream_unavailable:
                self.stream_unavailable = True
                logger.warning(
                    "command stream unavailable: polling PostgreSQL alone",
                    extra={"shard": self.shard, "why": str(exc)},
                )
            time.sleep(block_ms / 1000)
            return 0
        if self.stream_unavailable:
            self.stream_unavailable = False
            logger.info("command stream available again", extra={"shard": self.shard})
        if group_lost:
            return 1  # poll now: signals may have been lost with the group
        received = 0
        for _stream, entries in reply or ():
            for entry_id, _fields in entries:
                self.pending_acks.append(entry_id)
                received += 1
        return received

    # ---- after commit ----------------------------------------------------------------------
    def prepare(self, *, engine: Engine, outcome: BatchOutcome, ts_ns: int) -> dict[str, Any]:
        """What `send` will publish for a batch, taken from the engine right after it (the
        engine may apply the next batch before this one commits; Redis must never show it)."""
        changes = engine.drain_level_changes()
        specs = {inst.symbol: inst for inst in engine.instruments()}
        snapshots = []
        books = {}
        for symbol in sorted((outcome.symbols | set(changes)) & set(specs)):
            snapshots.append((symbol, self._snapshot_text(engine, symbol, ts_ns)))
            if symbol in changes:
                books[symbol] = self._book_changes(specs[symbol], changes[symbol])
        return {"outcome": outcome, "snapshots": snapshots, "books": books}

    def send(self, prepared: dict[str, Any]) -> None:
        """XACK, replies, snapshots of changed books, one market-data message: a prepared
        batch, sent only once it has committed."""
        outcome: BatchOutcome = prepared["outcome"]
        books = prepared["books"]
        try:
            pipe = self.client.pipeline(transaction=False)
            if self.pending_acks:
                pipe.xack(self.stream, CONSUMER_GROUP, *self.pending_acks)
            pipe.publish(replies_channel(), _dumps(outcome.command_ids))
            for symbol, snapshot in prepared["snapshots"]:
                pipe.eval(
                    _SNAPSHOT_SET_UNLESS_NEWER_EPOCH,
                    1,
                    book_snapshot_key(symbol),
                    snapshot,
                    self.epoch,
                )
            for symbol, book in books.items():
                # A consumer that sees prev_seq != its last seq knows it missed a message.
                book["prev_seq"] = self.sent_seq.get(symbol, 0)
            if books or outcome.trades or outcome.orders or outcome.balances or outcome.statuses:
                pipe.publish(
                    market_data_channel(self.shard),
                    self._feed_message(
                        books=books,
                        trades=outcome.trades,
                        orders=outcome.orders,
                        balances=outcome.balances,
                        statuses=outcome.statuses,
                    ),
                )
            pipe.execute()
            self.pending_acks.clear()
        except redis.RedisError as exc:
            if prepared["snapshots"]:
                self.snapshots_lost = True
            logger.warning(
                "batch published only in PostgreSQL (Redis unavailable)",
                extra={"shard": self.shard, "why": str(exc)},
            )
        finally:
            # Whether or not it got through: had a lost message's seq not counted, the next
            # one's prev_seq would have matched what subscribers had, and their books would
            # have silently missed its changes (the checksum comes from the same mirror).
            for symbol, book in books.items():
                self.sent_seq[symbol] = book["seq"]

    def announce(self) -> None:
        """Publish an empty market-data message, this worker's first: hubs see its feed at
        once and tell their clients that its predecessor's last batch may never have gone out
        (else they heard of it with this worker's first batch, and a quiet shard may not have
        one for long: a halt's status frame lost so went unannounced)."""
        try:
            self.client.publish(market_data_channel(self.shard), self._feed_message())
        except redis.RedisError as exc:
            logger.warning("feed not announced", extra={"shard": self.shard, "why": str(exc)})

    def announce_new_feed(self) -> None:
        """Announce this worker as a new feed: hubs take it as a gap and read the shard's books
        again. After every snapshot was written again because a batch's did not get through:
        a hub that saw the gap its lost message left had read them before that."""
        self.feed_id = uuid.uuid4().hex[:16]
        self.feed_seq = 0
        self.announce()

    def _feed_message(self, *, books=None, trades=(), orders=(), balances=(), statuses=()) -> str:
        """The next numbered market-data message of this publisher (sent only after what it
        says committed: `committed_ns` is when it became durable)."""
        self.feed_seq += 1
        return _dumps(
            {
                "shard": self.shard,
                "feed": {"id": self.feed_id, "seq": self.feed_seq},
                "books": books or {},
                "trades": trades,  # a tuple is a JSON array too
                "orders": orders,
                "balances": balances,
                "statuses": statuses,
                "committed_ns": time.time_ns(),
            }
        )

    def snapshots_write(self, *, engine: Engine, ts_ns: int, unless_newer: bool = False) -> None:
        """Every book's snapshot (after recovery: Redis may have lost them). `unless_newer`
        (a holder repairing Redis while it serves): not over one a later lease epoch wrote, as
        a batch's (fenced between its check of the lease and this write, it had put its book
        over its successor's)."""
        engine.drain_level_changes()
        try:
            pipe = self.client.pipeline(transaction=False)
            for inst in engine.instruments():
                self.sent_seq[inst.symbol] = engine.book_seq(inst.symbol)
                key = book_snapshot_key(inst.symbol)
                snapshot = self._snapshot_text(engine, inst.symbol, ts_ns)
                if unless_newer:
                    pipe.eval(_SNAPSHOT_SET_UNLESS_NEWER_EPOCH, 1, key, snapshot, self.epoch)
                else:
                    pipe.set(key, snapshot)
            pipe.execute()
            self.snapshots_lost = False
        except redis.RedisError as exc:
            self.snapshots_lost = True
            logger.warning("book snapshots not written", extra={"why": str(exc)})

    def _snapshot_text(self, engine: Engine, symbol: str, ts_ns: int) -> str:
        """A book's snapshot as stored, with this publisher's lease epoch (see
        _SNAPSHOT_SET_UNLESS_NEWER_EPOCH)."""
        return _dumps({**book_snapshot(engine, symbol, ts_ns=ts_ns), "epoch": self.epoch})

    @staticmethod
    def _book_changes(inst: Instrument, drained: tuple) -> dict[str, Any]:
        seq, levels = drained
        bids, asks = [], []
        for is_buy, price, qty, count in levels:
            row = [inst.price_text(price), inst.qty_text(qty), count]
            (bids if is_buy else asks).append(row)
        return {"seq": seq, "prev_seq": None, "changes": {"bids": bids, "asks": asks}}

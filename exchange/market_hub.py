"""The process's one market-data hub: shard pub/sub in, per-connection bounded queues out.

ARCHITECTURE "Live fan-out": each ASGI process runs ONE asyncio task (started lazily by the
first WebSocket subscription) subscribed to every shard's market-data channel. It parses each
batch message once, keeps a mirror of each book somebody watches (from the Redis top-50
snapshot, then the batch updates), serializes each outgoing frame once and hands the same string
to every local subscriber's bounded queue. A subscriber whose queue is full is not buffered
further: its queue is replaced by a `resync` notice and fresh snapshots (never silently missing
updates). Private order events are filtered here by user id (each process sees the same batch
message, so routing through channel-layer groups would duplicate them per process). Trade and
order frames lost before they reached the hub (a message Redis dropped, a new worker on a
shard, the hub's own subscription lost) cannot be replayed either: their subscribers get a
`resync` notice with reason `feed_gap` (each worker numbers its messages).

Everything that touches the mirrors and the queues runs on the event loop without awaiting in
between, which makes each snapshot/update handoff exact: a snapshot taken at seq N is followed
in the same queue by the update whose prev_seq is N.
"""

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import redis
import redis.asyncio as aioredis
from django.conf import settings

from exchange.book_checksum import CHECKSUM_LEVELS, book_checksum
from exchange.ws_direct import DirectSocket, text_frame
from matching.sharding import shard_for_symbol
from matching.transport import book_snapshot_key, market_data_channel, private_events_channel

logger = logging.getLogger(__name__)

RELOAD_RETRY_SECONDS = 0.5  # between attempts to reload a book from Redis
# How often a book loaded without a snapshot in Redis (wiped, or not yet written again by the
# worker) looks for one, until one appears.
SNAPSHOT_RECHECK_SECONDS = 1.0
# How often the hub looks whether the trading sessions of the instruments it mirrors opened or
# closed (their status frames then say `trading` or `closed`).
SESSION_CHECK_SECONDS = 1.0

SNAPSHOT_DEPTH = 50  # what the worker writes to Redis
ORDER_EVENTS = {
    "new": "accepted",
    "partially_filled": "partial_fill",
    "filled": "fill",
    "cancelled": "cancelled",
    "expired": "expired",
    "triggered": "triggered",
    "untriggered": "accepted",
    "rejected": "rejected",
}


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


# How a queued status frame and resync notice show (`dumps` writes no spaces): what a slow
# consumer's resync looks for among the frames it drops.
_STATUS_MARK = '"type":"status"'
_RESYNC_MARK = '"type":"resync"'
# How the answers to a connection's own ops begin (the consumer writes `type` first): a slow
# consumer's resync keeps them.
_ANSWER_STARTS = tuple(
    '{"type":"' + kind + '"'
    for kind in ("response", "error", "subscribed", "unsubscribed", "login", "pong")
)


def hub_client_name() -> str:
    """The name of a hub's Redis subscription connection."""
    return f"market-hub-{os.getpid()}"


def channel_symbol(channel: str) -> tuple[str, str | None]:
    """("book", "AAPL") for "book.AAPL"; ("orders", None) for "orders"."""
    kind, _, symbol = channel.partition(".")
    return kind, (symbol or None)


Level = tuple[str, str]  # (price, quantity) as the worker's exact decimal strings


class Side:
    """One side of a mirrored book: price -> (price string, quantity string).

    The Redis snapshot holds the best 50 levels, so a side loaded with 50 may have more behind
    them: such a side is `complete=False` and keeps only levels up to its `boundary` (the 50th
    price), where it knows every level. Views are taken from those, so they are always an exact
    prefix of the real book; the hub re-reads the snapshot when fewer than 50 are left.
    """

    def __init__(self, *, descending: bool) -> None:
        self.levels: dict[Decimal, Level] = {}
        self.descending = descending
        self.complete = True
        self.boundary: Decimal | None = None
        self._top: list[Level] | None = None

    def load(self, rows: list[list]) -> None:
        self.levels = {Decimal(r[0]): (r[0], r[1]) for r in rows}
        self.complete = len(rows) < SNAPSHOT_DEPTH
        self.boundary = None if self.complete else Decimal(rows[-1][0])
        self._top = None

    def _within(self, price: Decimal) -> bool:
        if self.complete:
            return True
        return price >= self.boundary if self.descending else price <= self.boundary

    def apply(self, rows: list[list]) -> None:
        for row in rows:
            price = Decimal(row[0])
            if not self._within(price):
                continue  # behind the known range: a later snapshot brings it when it matters
            if Decimal(row[1]) == 0:
                self.levels.pop(price, None)
            else:
                self.levels[price] = (row[0], row[1])
        self._top = None

    def needs_refresh(self) -> bool:
        return not self.complete and len(self.levels) < SNAPSHOT_DEPTH

    def top(self, depth: int) -> list[Level]:
        if self._top is None:
            keys = sorted(self.levels, reverse=self.descending)[:SNAPSHOT_DEPTH]
            self._top = [self.levels[k] for k in keys]
        return self._top[:depth]


def view_changes(before: list[Level], after: list[Level]) -> list[list[str]]:
    """The level changes that turn view `before` into view `after` (quantity "0": gone)."""
    old = {Decimal(p): q for p, q in before}
    new = {Decimal(p): (p, q) for p, q in after}
    changes = [[p, q] for k, (p, q) in new.items() if old.get(k) != q]
    changes += [[p, "0"] for p, _q in before if Decimal(p) not in new]
    return changes


class BookSnapshotLost(redis.RedisError):
    """Redis no longer holds the snapshot of a book this hub had mirrored (a wipe, a restart
    without its data): handled as Redis out of reach until the worker writes it again (its next
    heartbeat, or once it is back and has recovered)."""


class BookMirror:
    """A book as the hub knows it: loaded from the Redis snapshot, kept by batch updates.

    Subscribers see it through a view of their depth (10-50 levels per side); each update
    frame carries the changes of that view (levels that enter it included, levels that leave
    it as quantity "0"), so a client's book is always exactly the view."""

    def __init__(self, symbol: str) -> None:
        self.symbol = symbol
        self.seq: int | None = None  # None while loading
        self.busy = False  # re-reading the snapshot in the middle of an update
        self.bids = Side(descending=True)
        self.asks = Side(descending=False)
        self.last_price: str | None = None
        self.pending: list[dict] = []  # updates that arrived while the snapshot was loading
        # Loaded as an empty book because Redis held no snapshot: not known to be the book.
        self.without_snapshot = False
        # It has held the book past seq 0: a snapshot missing from Redis since was lost.
        self.held_book = False
        self.views: dict[int, tuple[list[Level], list[Level]]] = {}  # depth -> last view sent
        self._snapshots: dict[int, tuple[int, str]] = {}  # depth -> (seq, frame)
        # The last status frame's data this hub fanned out for the symbol since it began to
        # mirror it (None: none seen, or one may have been lost in a gap).
        self.status: dict | None = None
        self.session_open: bool | None = None  # its trading session, as last looked at

    @property
    def loaded(self) -> bool:
        return self.seq is not None

    def load(self, snapshot: dict | None) -> None:
        self.without_snapshot = snapshot is None
        snapshot = snapshot or {"seq": 0, "bids": [], "asks": [], "last_price": None}
        self.seq = snapshot["seq"]
        self.held_book = self.held_book or self.seq > 0
        self.bids.load(snapshot["bids"])
        self.asks.load(snapshot["asks"])
        self.last_price = snapshot.get("last_price")
        self.views.clear()
        self._snapshots.clear()

    def drop_cached_snapshots(self) -> None:
        self._snapshots.clear()

    def apply(self, update: dict) -> None:
        self.bids.apply(update["changes"]["bids"])
        self.asks.apply(update["changes"]["asks"])
        self.seq = update["seq"]
        self.held_book = True

    def view(self, depth: int) -> tuple[list[Level], list[Level]]:
        return self.bids.top(depth), self.asks.top(depth)

    def checksum(self) -> int:
        return book_checksum(self.bids.top(CHECKSUM_LEVELS), self.asks.top(CHECKSUM_LEVELS))

    def snapshot_frame(self, depth: int) -> str:
        """The `snapshot` frame at this depth, serialized once per (seq, depth)."""
        cached = self._snapshots.get(depth)
        if cached is not None and cached[0] == self.seq:
            return cached[1]
        bids, asks = self.views[depth] = self.view(depth)
        frame = dumps(
            {
                "channel": f"book.{self.symbol}",
                "type": "snapshot",
                "seq": self.seq,
                "depth": depth,
                "bids": [list(level) for level in bids],
                "asks": [list(level) for level in asks],
                "checksum": self.checksum(),
            }
        )
        self._snapshots[depth] = (self.seq, frame)
        return frame

    def update_frames(
        self, prev_seq: int, ts_ns: int, committed_ns: int | None = None
    ) -> dict[int, str]:
        """One `update` frame per depth somebody watches, each serialized once (`ts_ns`: when
        this hub received the batch; `committed_ns`: when the worker's batch committed)."""
        checksum = self.checksum()
        frames = {}
        for depth, (old_bids, old_asks) in self.views.items():
            bids, asks = self.views[depth] = self.view(depth)
            frames[depth] = dumps(
                {
                    "channel": f"book.{self.symbol}",
                    "type": "update",
                    "seq": self.seq,
                    "prev_seq": prev_seq,
                    "bids": view_changes(old_bids, bids),
                    "asks": view_changes(old_asks, asks),
                    "checksum": checksum,
                    "ts_ns": ts_ns,
                    "committed_ns": committed_ns,
                }
            )
        return frames

    def ticker(self) -> dict:
        bid = self.bids.top(1)
        ask = self.asks.top(1)
        return {
            "symbol": self.symbol,
            "seq": self.seq,
            "best_bid": bid[0][0] if bid else None,
            "best_bid_size": bid[0][1] if bid else None,
            "best_ask": ask[0][0] if ask else None,
            "best_ask_size": ask[0][1] if ask else None,
            "last_price": self.last_price,
        }


def _shown(ticker: dict) -> dict:
    """A ticker without its seq: what a ticker frame shows the client."""
    return {key: value for key, value in ticker.items() if key != "seq"}


class FrameQueue(asyncio.Queue):
    """A connection's queue of frames, full at `maxsize` frames or once the frames it holds
    reach `max_bytes` (frames are ASCII JSON: a character is a byte). An answer repeats what
    the op sent (an `id` of 60 KB), so a bound in frames alone let a client that reads nothing
    hold 2,000 such answers, 120 MB of the web process's memory."""

    def __init__(self, *, maxsize: int, max_bytes: int | None = None) -> None:
        super().__init__(maxsize=maxsize)
        self.max_bytes = max_bytes
        self.queued_bytes = 0

    def _put(self, item: str) -> None:
        self.queued_bytes += len(item)
        super()._put(item)

    def _get(self) -> str:
        item = super()._get()
        self.queued_bytes -= len(item)
        return item

    def full(self) -> bool:
        return super().full() or (
            self.max_bytes is not None and self.queued_bytes >= self.max_bytes
        )

    def leaves_room(self, frames: list[str]) -> bool:
        """Whether this queue, emptied, would take `frames` and one more."""
        return len(frames) < self.maxsize and (
            self.max_bytes is None or sum(map(len, frames)) < self.max_bytes
        )


class Subscriber:
    """One connection as the hub sees it: its subscriptions and its bounded frame queue."""

    # A slow consumer resyncing more than this many times within the window is given up on
    # (closed 4008); one that falls behind now and then, over days, is not.
    RESYNC_LIMIT = 50
    RESYNC_WINDOW_SECONDS = 600.0

    def __init__(
        self,
        *,
        maxsize: int,
        max_bytes: int | None = None,
        on_give_up: Callable[[], None] | None = None,
    ) -> None:
        self.queue = FrameQueue(maxsize=maxsize, max_bytes=max_bytes)
        self.user_id: int | None = None
        self.channels: set[str] = set()
        self.depths: dict[str, int] = {}  # symbol -> book depth
        self.book_seq: dict[str, int] = {}  # symbol -> seq of the last book frame queued
        self.resyncs = 0  # within the window that began at resyncs_since (monotonic seconds)
        self.resyncs_since = 0.0
        self.on_give_up = on_give_up
        # Set when the connection can be written to directly (ws_direct): a frame then skips
        # the queue whenever nothing is queued ahead of it and the transport takes data.
        self.direct: DirectSocket | None = None
        self.holding = False  # the connection's writer took a frame and has not written it


class MarketHub:
    def __init__(self) -> None:
        self.channels: dict[str, set[Subscriber]] = {}
        self.users: dict[int, set[Subscriber]] = {}
        # (user id, asset) -> version of the last balance event sent, for users with an
        # `orders` subscriber: an older event arriving after it is dropped (balance_events).
        self.balance_versions: dict[tuple[int, str], int] = {}
        self.books: dict[str, BookMirror] = {}
        self._task: asyncio.Task | None = None
        self._sessions_task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listening = asyncio.Event()
        self._client: aioredis.Redis | None = None
        # symbol -> the shard holding its book, as stored on the instrument when it was listed
        # (the hash under today's MATCHING_SHARDS may name another shard once it was raised).
        self._known_symbols: dict[str, int] = {}
        # While a batch message is fanned out: the frames each directly written connection
        # gets from it, sent in one write at the end (one system call per connection, not one
        # per frame). Nothing awaits while it is set, so no other frame can come in between.
        self._writes: dict[Subscriber, list[bytes]] | None = None
        self.messages = 0
        # shard -> (feed id, number) of the last market-data message seen from its worker.
        self.feeds: dict[int, tuple[str, int]] = {}

    # ---- lifecycle ---------------------------------------------------------------------------
    async def ensure_started(self) -> None:
        """Start the feed and the sessions watch in this event loop unless they run; does not
        wait for the feed to listen (`listening`): a socket opened while Redis is out of reach
        can still log in and trade (it had waited 10 s, then failed its handshake with a 500)."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._task is None or self._task.done():
            if self._loop is not loop:  # a new event loop (tests): start over
                self.__init__()
            self._loop = loop
            self._client = aioredis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2)
            self._task = loop.create_task(self._run(), name="market-hub")
        if self._sessions_task is None or self._sessions_task.done():
            self._sessions_task = loop.create_task(self._sessions_watch(), name="market-sessions")

    async def listening(self, timeout: float) -> bool:
        """Whether the feed listens, waiting up to `timeout` for it to: a subscription made
        before it first does would miss what is published meanwhile."""
        if self._listening.is_set():
            return True
        try:
            await asyncio.wait_for(self._listening.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def _run(self) -> None:
        channels = [market_data_channel(shard) for shard in range(settings.MATCHING_SHARDS)]
        channels.append(private_events_channel())
        while True:
            client = aioredis.Redis.from_url(
                settings.REDIS_URL,
                socket_connect_timeout=2,
                health_check_interval=15,
                client_name=hub_client_name(),  # CLIENT LIST tells which process it serves
            )
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(*channels)
                if not self._listening.is_set():
                    self._listening.set()
                else:  # reconnected: anything may have been missed, resync every book
                    for mirror in list(self.books.values()):
                        self._reload(mirror)
                    self.feeds.clear()
                    self._feed_lost(shard=None)
                while True:
                    message = await pubsub.get_message(timeout=5.0)
                    if message is not None:
                        await self.on_message(message["data"])
            except asyncio.CancelledError:
                raise
            except (redis.RedisError, OSError) as exc:
                logger.warning("market hub reconnecting", extra={"why": str(exc)})
                await asyncio.sleep(0.5)
            except Exception:  # a bug must not kill the process's only feed
                logger.exception("market hub error")
                await asyncio.sleep(0.1)
            finally:
                await pubsub.aclose()
                await client.aclose()

    # ---- subscriptions -----------------------------------------------------------------------
    async def symbol_exists(self, symbol: str, lookup: Callable) -> bool:
        """Whether `symbol` is listed; `lookup` gives its instrument's shard (None: unknown)."""
        if symbol in self._known_symbols:
            return True
        shard = await lookup(symbol)
        if shard is not None:
            self._known_symbols[symbol] = shard
            return True
        return False

    def shard_of(self, symbol: str) -> int:
        """The shard whose worker publishes `symbol`'s book (its instrument's stored shard)."""
        shard = self._known_symbols.get(symbol)
        return shard_for_symbol(symbol, settings.MATCHING_SHARDS) if shard is None else shard

    async def mirror(self, symbol: str) -> BookMirror:
        """The loaded mirror of `symbol` (loading it from Redis on first use); raises
        redis.RedisError or OSError when Redis is out of reach."""
        mirror = self.books.get(symbol)
        if mirror is None:
            mirror = self.books[symbol] = BookMirror(symbol)
            try:
                await self._load(mirror)
            except BaseException:
                # Not loaded: forget it, so the next subscription loads it again rather than
                # waiting for it forever.
                if self.books.get(symbol) is mirror:
                    del self.books[symbol]
                raise
        while not mirror.loaded or mirror.busy:
            if self.books.get(symbol) is not mirror:  # its first load failed meanwhile
                return await self.mirror(symbol)
            await asyncio.sleep(0.005)
        return mirror

    async def _load(self, mirror: BookMirror) -> None:
        """Snapshot handoff: already subscribed to the stream (updates meanwhile are kept in
        `pending`), read the snapshot, drop updates with seq <= its seq, and read it again if
        the first newer update does not continue it."""
        for _attempt in range(20):
            raw = await self._client.get(book_snapshot_key(mirror.symbol))
            if raw is None and mirror.held_book:
                # Its subscribers keep the book they have (it was right) rather than get an
                # empty one at seq 0 (a reload after a Redis restart that lost the snapshots
                # had sent them that, for as long as the shard's worker was away).
                raise BookSnapshotLost(f"the snapshot of {mirror.symbol} is gone from Redis")
            snapshot = json.loads(raw) if raw else None
            pending, mirror.pending = mirror.pending, []
            seq = snapshot["seq"] if snapshot else 0
            newer = [u for u in pending if u["seq"] > seq]
            if newer and newer[0]["prev_seq"] != seq:
                mirror.pending = newer  # the snapshot is older than the stream: read again
                await asyncio.sleep(0.01)
                continue
            mirror.load(snapshot)
            for update in newer:
                mirror.apply(update)
                if update.get("last_price") is not None:
                    mirror.last_price = update["last_price"]
            break
        else:
            mirror.load(snapshot)  # give up on continuity; subscribers get this as a snapshot
        if mirror.without_snapshot:
            asyncio.get_running_loop().create_task(self._snapshot_awaited(mirror))

    async def _snapshot_awaited(self, mirror: BookMirror) -> None:
        """A book loaded without a snapshot (a Redis wipe the worker has not repaired yet) is
        read again every second until one appears; one ahead of the mirror reloads it and its
        subscribers get it. Before, they kept an empty book until the book next changed."""
        while self.books.get(mirror.symbol) is mirror and mirror.without_snapshot:
            await asyncio.sleep(SNAPSHOT_RECHECK_SECONDS)
            if self.books.get(mirror.symbol) is not mirror or not mirror.loaded:
                return  # forgotten, or being reloaded (which watches again if it must)
            try:
                raw = await self._client.get(book_snapshot_key(mirror.symbol))
            except (redis.RedisError, OSError):
                continue
            if raw is None:
                continue
            if mirror.without_snapshot and json.loads(raw)["seq"] > mirror.seq:
                self._reload(mirror)
            mirror.without_snapshot = False

    def _reload(self, mirror: BookMirror) -> None:
        """A gap in the stream: reload the mirror, then send its subscribers fresh snapshots."""
        mirror.seq = None
        mirror.pending = []
        mirror.status = None  # a status frame may have been lost too

        async def reload() -> None:
            # Until it loads (Redis may be coming back: a reconnect reloads every book) or
            # nobody watches the book any more; meanwhile its subscribers get nothing. Logged
            # at the first failure and when it loads, not at every retry (two lines a second a
            # book, for as long as Redis or the book's snapshot was away).
            failures = 0
            while True:
                if self.books.get(mirror.symbol) is not mirror:
                    return
                try:
                    await self._load(mirror)
                    break
                except (redis.RedisError, OSError) as exc:
                    if not failures:
                        logger.warning(
                            "book reload failed, retrying",
                            extra={"symbol": mirror.symbol, "why": str(exc)},
                        )
                    failures += 1
                    await asyncio.sleep(RELOAD_RETRY_SECONDS)
            if failures:
                logger.info(
                    "book reloaded", extra={"symbol": mirror.symbol, "failed_attempts": failures}
                )
            for sub in list(self.channels.get(f"book.{mirror.symbol}", ())):
                self._push_snapshot(sub, mirror)
            for sub in list(self.channels.get(f"ticker.{mirror.symbol}", ())):
                self.push(sub, self._ticker_frame(mirror))

        asyncio.get_running_loop().create_task(reload())

    def add(self, sub: Subscriber, channel: str) -> None:
        """Register `sub` (synchronously: the caller has the mirror loaded) and queue the
        channel's initial frame (book snapshot, ticker) right behind."""
        self.channels.setdefault(channel, set()).add(sub)
        sub.channels.add(channel)
        kind, symbol = channel_symbol(channel)
        if kind == "orders" and sub.user_id is not None:
            self.users.setdefault(sub.user_id, set()).add(sub)
        elif kind == "book":
            self._push_snapshot(sub, self.books[symbol])
        elif kind == "ticker":
            self.push(sub, self._ticker_frame(self.books[symbol]))

    def status_tell(self, sub: Subscriber, channel: str, listed: tuple[str, str, bool]) -> None:
        """Right behind a new book or ticker subscription's first frame: a `status` frame when
        its instrument is not trading. The status is the last status frame this hub fanned out
        for it, else `listed`: (status, reason, session open) as staff last set them, read from
        PostgreSQL before the subscription was added, so a frame fanned out meanwhile wins."""
        _, symbol = channel_symbol(channel)
        mirror = self.books.get(symbol)
        if mirror is None:
            return
        status, reason, session_open = listed
        if mirror.session_open is None:
            mirror.session_open = session_open
        change = mirror.status
        if change is None:
            if status == "trading" and not session_open:
                status = "closed"
            change = {"symbol": symbol, "status": status}
            if reason and status in ("halted", "delisted"):
                change["reason"] = reason
        if change["status"] != "trading":
            self.push(sub, dumps({"channel": channel, "type": "status", "data": change}))

    async def _sessions_watch(self) -> None:
        """Every SESSION_CHECK_SECONDS, the trading state of the instruments this hub mirrors
        (`session_seen`): a session that opened or closed (or hours staff changed) is told on
        their book and ticker channels."""
        from exchange.selectors import instruments_trading_state
        from exchange.view_threads import database_sync_to_async

        read = database_sync_to_async(instruments_trading_state, thread_sensitive=False)
        while True:
            await asyncio.sleep(SESSION_CHECK_SECONDS)
            symbols = list(self.books)
            if not symbols:
                continue
            try:
                states = await read(symbols)
            except Exception as exc:  # the database or Redis away: look again next time
                logger.warning("trading sessions not read", extra={"why": str(exc)})
                continue
            now_ns = time.time_ns()
            for symbol, listed in states.items():
                mirror = self.books.get(symbol)
                if mirror is not None:
                    self.session_seen(mirror, listed, now_ns)

    def session_seen(self, mirror: BookMirror, listed: tuple[str, str, bool], now_ns: int) -> None:
        """`listed` (status, reason, session open) of a mirrored instrument: when its session
        opened or closed since the last look, and it is neither halted nor delisted, its book
        and ticker subscribers get a status frame saying `trading` or `closed`."""
        status, _reason, session_open = listed
        previous, mirror.session_open = mirror.session_open, session_open
        if previous is None or previous == session_open:
            return
        current = mirror.status["status"] if mirror.status is not None else status
        if current not in ("trading", "closed"):
            return  # halted or delisted: its frames say so, whatever the clock
        change = {
            "symbol": mirror.symbol,
            "status": "trading" if session_open else "closed",
            "ts_ns": now_ns,
        }
        mirror.status = change
        for channel in (f"book.{mirror.symbol}", f"ticker.{mirror.symbol}"):
            self._fan_out(channel, dumps({"channel": channel, "type": "status", "data": change}))

    def remove(self, sub: Subscriber, channel: str) -> None:
        subs = self.channels.get(channel)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self.channels[channel]
        sub.channels.discard(channel)
        kind, symbol = channel_symbol(channel)
        if kind == "orders" and sub.user_id is not None:
            users = self.users.get(sub.user_id, set())
            users.discard(sub)
            if not users:
                self.users.pop(sub.user_id, None)
                for key in [key for key in self.balance_versions if key[0] == sub.user_id]:
                    del self.balance_versions[key]
        if kind == "book":
            sub.book_seq.pop(symbol, None)
            sub.depths.pop(symbol, None)
        if symbol and not any(f"{k}.{symbol}" in self.channels for k in ("book", "ticker")):
            self.books.pop(symbol, None)  # nobody watches it: stop mirroring

    def remove_all(self, sub: Subscriber) -> None:
        for channel in list(sub.channels):
            self.remove(sub, channel)

    # ---- fan-out -----------------------------------------------------------------------------
    def push(self, sub: Subscriber, frame: str, wire: bytes | None = None) -> None:
        """Send a frame to `sub`: written at once when nothing is queued ahead of it and the
        connection takes data (`wire`: the frame as `text_frame` bytes, when the caller built
        them once for many subscribers), else queued; a full queue drops it to fresh
        snapshots."""
        writes = self._writes
        direct = sub.direct
        if (writes is not None and sub in writes) or (
            direct is not None and not sub.holding and sub.queue.empty() and direct.ready()
        ):
            wire = wire if wire is not None else text_frame(frame.encode())
            if writes is None:
                direct.write(wire)
            else:
                writes.setdefault(sub, []).append(wire)
            return
        try:
            sub.queue.put_nowait(frame)
        except asyncio.QueueFull:
            self._resync(sub, overflowing=frame)

    def snapshot_again(self, sub: Subscriber, symbol: str) -> None:
        """Queue a fresh snapshot of a book `sub` watches (at its depth now)."""
        self._push_snapshot(sub, self.books[symbol])

    def _push_snapshot(self, sub: Subscriber, mirror: BookMirror) -> None:
        if not mirror.loaded or mirror.busy:
            sub.book_seq[mirror.symbol] = -1  # the update being processed sends it
            return
        sub.book_seq[mirror.symbol] = mirror.seq
        self.push(sub, mirror.snapshot_frame(sub.depths.get(mirror.symbol, SNAPSHOT_DEPTH)))

    def _resync(self, sub: Subscriber, overflowing: str | None = None) -> None:
        """A slow consumer: drop what it has queued (and the frame that did not fit) but the
        answers to its ops, then a notice and fresh snapshots."""
        now = time.monotonic()
        if now - sub.resyncs_since > Subscriber.RESYNC_WINDOW_SECONDS:
            sub.resyncs, sub.resyncs_since = 0, now
        sub.resyncs += 1
        if sub.resyncs > Subscriber.RESYNC_LIMIT and sub.on_give_up is not None:
            sub.on_give_up()
            return
        dropped = [sub.queue.get_nowait() for _ in range(sub.queue.qsize())]
        if overflowing is not None:
            dropped.append(overflowing)
        # The answers to its ops stay, in order: nothing else would tell the client that an
        # op was answered (an order.place's order id, say). Only when they leave no room for
        # the notice is the connection given up on (it sends ops and reads nothing).
        answers = [frame for frame in dropped if frame.startswith(_ANSWER_STARTS)]
        if not sub.queue.leaves_room(answers):
            if sub.on_give_up is not None:
                sub.on_give_up()
                return
            while not sub.queue.leaves_room(answers):
                answers.pop(0)
        for frame in answers:
            sub.queue.put_nowait(frame)
        # Trade and order frames cannot be replayed; nor can a book's or ticker's status frame
        # (a halt, a resume): those channels are named only when one was dropped. A notice
        # still queued (an earlier resync, a feed gap) is dropped too: what it named is named
        # again, else a queue overflowing twice before the client reads lost the news.
        lost = {c for c in sub.channels if channel_symbol(c)[0] in ("trades", "orders")}
        for frame in dropped:
            if _STATUS_MARK in frame:
                lost.add(json.loads(frame)["channel"])
            elif _RESYNC_MARK in frame:
                lost.update(json.loads(frame)["lost_channels"])
        sub.queue.put_nowait(
            dumps({"type": "resync", "reason": "slow_consumer", "lost_channels": sorted(lost)})
        )
        for channel in sorted(sub.channels):
            kind, symbol = channel_symbol(channel)
            mirror = self.books.get(symbol) if symbol else None
            if mirror is None or not mirror.loaded or sub.queue.full():
                continue
            if kind == "book":
                if mirror.busy:
                    sub.book_seq[symbol] = -1  # the update being processed sends it
                    continue
                sub.book_seq[symbol] = mirror.seq
                depth = sub.depths.get(symbol, SNAPSHOT_DEPTH)
                sub.queue.put_nowait(mirror.snapshot_frame(depth))
            elif kind == "ticker":
                sub.queue.put_nowait(self._ticker_frame(mirror))

    def _feed_seen(self, message: dict) -> None:
        """Follow the numbering of the shard worker's messages; tell the clients of the
        channels a gap touches (a number skipped, or another worker's first message) that
        frames were lost."""
        shard, feed = message.get("shard"), message.get("feed")
        if not isinstance(feed, dict) or not isinstance(shard, int):
            return
        last = self.feeds.get(shard)
        current = (feed.get("id"), feed.get("seq"))
        self.feeds[shard] = current
        if last is not None and (current[0] != last[0] or current[1] != last[1] + 1):
            logger.warning(
                "market data feed gap",
                extra={"shard": shard, "last": list(last), "now": list(current)},
            )
            self._feed_lost(shard=shard)
            # A lost message's book changes never come: a book quiet since (and every new
            # subscriber's snapshot of it) had stayed as before them until it next changed.
            # Its snapshot in Redis has them (a new holder writes every book's before it
            # announces itself), so the shard's books are read again, as after a reconnect.
            for mirror in list(self.books.values()):
                if mirror.loaded and self.shard_of(mirror.symbol) == shard:
                    self._reload(mirror)

    def _feed_lost(self, *, shard: int | None) -> None:
        """Tell each subscriber of order events, or of the trades, book or ticker of the
        shard's symbols (of every symbol when `shard` is None: the hub's own subscription was
        lost), that some of those frames were lost and cannot be replayed: trades, order
        events, and a book's or ticker's status frames (a book's levels come back with the
        fresh snapshot its reload sends)."""

        def touched(channel: str) -> bool:
            kind, symbol = channel_symbol(channel)
            if kind == "orders":
                return True
            return kind in ("trades", "book", "ticker") and (
                shard is None or self.shard_of(symbol) == shard
            )

        subs = {sub for channel, subs in self.channels.items() if touched(channel) for sub in subs}
        for sub in subs:
            lost = sorted(c for c in sub.channels if touched(c))
            self.push(sub, dumps({"type": "resync", "reason": "feed_gap", "lost_channels": lost}))

    def _ticker_frame(self, mirror: BookMirror) -> str:
        return dumps(
            {"channel": f"ticker.{mirror.symbol}", "type": "ticker", "data": mirror.ticker()}
        )

    async def _refresh(self, mirror: BookMirror) -> None:
        """Levels behind the known range may have come into view: re-read the snapshot, and
        use it if it is at this very seq (if the worker is already further, the views stay an
        exact but shorter prefix until the next update tries again)."""
        mirror.busy = True
        try:
            raw = await self._client.get(book_snapshot_key(mirror.symbol))
        except (redis.RedisError, OSError):
            return
        finally:
            mirror.busy = False
        snapshot = json.loads(raw) if raw else None
        if snapshot is not None and snapshot["seq"] == mirror.seq:
            mirror.bids.load(snapshot["bids"])
            mirror.asks.load(snapshot["asks"])
            mirror.drop_cached_snapshots()

    async def on_message(self, raw: bytes | str) -> None:
        """One batch message of a shard: books, trades, order events."""
        self._writes = {}
        try:
            await self._on_message(raw)
        finally:
            self._flush_writes()

    def _flush_writes(self) -> None:
        writes, self._writes = self._writes, None
        for sub, wires in (writes or {}).items():
            sub.direct.write(b"".join(wires))

    async def _on_message(self, raw: bytes | str) -> None:
        self.messages += 1
        message = json.loads(raw)
        received_ns = time.time_ns()
        self._feed_seen(message)
        last_prices: dict[str, str] = {}
        trades_by_symbol: dict[str, list[dict]] = {}
        for trade in message.get("trades", ()):
            last_prices[trade["symbol"]] = trade["price"]
            trades_by_symbol.setdefault(trade["symbol"], []).append(trade)

        for symbol, update in message.get("books", {}).items():
            mirror = self.books.get(symbol)
            if mirror is None:
                continue
            if not mirror.loaded:
                # With its trades' last price: applied after a snapshot older than it, the
                # update is all that says the price (the ticker had kept the snapshot's).
                mirror.pending.append({**update, "last_price": last_prices.get(symbol)})
                continue
            if update["seq"] <= mirror.seq:
                continue  # already in the snapshot the mirror was loaded from
            if update["prev_seq"] != mirror.seq:
                logger.warning(
                    "market data gap, reloading the book",
                    extra={"symbol": symbol, "seq": mirror.seq, "prev_seq": update["prev_seq"]},
                )
                self._reload(mirror)
                continue
            before = mirror.ticker()
            mirror.apply(update)
            if symbol in last_prices:
                mirror.last_price = last_prices[symbol]
            if mirror.bids.needs_refresh() or mirror.asks.needs_refresh():
                self._flush_writes()  # other tasks may push while this awaits
                await self._refresh(mirror)
                self._writes = {}
                if self.books.get(symbol) is not mirror or not mirror.loaded:
                    continue  # unwatched or reloading meanwhile
            frames = mirror.update_frames(
                update["prev_seq"], received_ns, message.get("committed_ns")
            )
            wires = {depth: text_frame(frame.encode()) for depth, frame in frames.items()}
            for sub in list(self.channels.get(f"book.{symbol}", ())):
                last = sub.book_seq.get(symbol, -1)
                if last < 0:
                    self._push_snapshot(sub, mirror)
                elif update["seq"] > last:
                    sub.book_seq[symbol] = update["seq"]
                    depth = sub.depths.get(symbol, SNAPSHOT_DEPTH)
                    self.push(sub, frames[depth], wires[depth])
            # Sent when what it shows changed, not for a change deeper in the book (its seq
            # moves with every update).
            if _shown(mirror.ticker()) != _shown(before):
                self._fan_out(f"ticker.{symbol}", self._ticker_frame(mirror))

        for symbol, trades in trades_by_symbol.items():
            mirror = self.books.get(symbol)
            if mirror is not None and mirror.loaded and symbol not in message.get("books", {}):
                before = mirror.last_price
                mirror.last_price = last_prices[symbol]
                if before != mirror.last_price:
                    self._fan_out(f"ticker.{symbol}", self._ticker_frame(mirror))
            channel = f"trades.{symbol}"
            if channel in self.channels:
                data = [
                    {
                        "trade_id": t["trade_id"],
                        "price": t["price"],
                        "quantity": t["quantity"],
                        "taker_side": t["taker_side"],
                        "ts_ns": t["ts_ns"],
                    }
                    for t in trades
                ]
                self._fan_out(channel, dumps({"channel": channel, "type": "trades", "data": data}))

        for change in message.get("statuses", ()):
            # A halt, resume or delisting, on the symbol's book and ticker channels (a market
            # maker following only the book hears of it as one following the ticker does).
            symbol = change["symbol"]
            mirror = self.books.get(symbol)
            if mirror is not None:
                if change["status"] == "trading" and mirror.session_open is False:
                    # Resumed outside its trading session: it is closed until the session
                    # opens (then `session_seen` says `trading`).
                    change = {**change, "status": "closed"}
                mirror.status = change
            for channel in (f"book.{symbol}", f"ticker.{symbol}"):
                self._fan_out(
                    channel, dumps({"channel": channel, "type": "status", "data": change})
                )

        for event in message.get("orders", ()):
            subs = self.users.get(event.get("user_id"))
            if not subs:
                continue
            data = {k: v for k, v in event.items() if k != "user_id"}
            if "event" not in data:  # the worker names it when the status does not say it
                data["event"] = ORDER_EVENTS.get(event["status"], event["status"])
            frame = dumps({"channel": "orders", "type": "order", "data": data})
            for sub in list(subs):
                self.push(sub, frame)

        for event in message.get("balances", ()):
            subs = self.users.get(event["user_id"])
            if not subs:
                continue
            key, version = (event["user_id"], event["asset"]), event.get("version", 0)
            if version < self.balance_versions.get(key, 0):
                continue  # an older balance than the one sent: it lost a race to Redis
            self.balance_versions[key] = version
            data = {k: v for k, v in event.items() if k != "user_id"}
            frame = dumps({"channel": "orders", "type": "balance", "data": data})
            for sub in list(subs):
                self.push(sub, frame)

    def _fan_out(self, channel: str, frame: str) -> None:
        subs = self.channels.get(channel)
        if not subs:
            return
        wire = text_frame(frame.encode())
        for sub in list(subs):
            self.push(sub, frame, wire)


hub = MarketHub()

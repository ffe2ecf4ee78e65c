"""The market hub's book logic without processes: checksum, views, slow consumers, and
loading books when Redis is out of reach (a real client of a closed port)."""

import asyncio
import json
import uuid

import pytest
import redis
import redis.asyncio as aioredis
from django.conf import settings

from exchange.book_checksum import book_checksum
from exchange.embedded_servers import free_port
from exchange.market_hub import (
    RELOAD_RETRY_SECONDS,
    BookMirror,
    MarketHub,
    Subscriber,
    hub_client_name,
    view_changes,
)


def test_checksum_matches_the_documented_example():
    bids = [("150.45", "10"), ("150.44", "3")]
    asks = [("150.47", "5")]
    assert book_checksum(bids, asks) == 497610601  # crc32("150.45:10:150.47:5:150.44:3")


def test_view_changes_carry_levels_entering_and_leaving_the_view():
    before = [("10.00", "1"), ("9.00", "2")]
    after = [("9.00", "5"), ("8.00", "1")]
    assert sorted(view_changes(before, after)) == [["10.00", "0"], ["8.00", "1"], ["9.00", "5"]]


def test_a_side_past_the_snapshot_depth_keeps_only_the_levels_it_knows():
    mirror = BookMirror("X")
    bids = [[f"{100 - i}.00", "1", 1] for i in range(50)]  # a full snapshot: maybe more behind
    mirror.load({"seq": 1, "bids": bids, "asks": [], "last_price": None})
    mirror.apply({"seq": 2, "changes": {"bids": [["10.00", "4", 1]], "asks": []}})
    assert "10.00" not in [p for p, _ in mirror.bids.top(50)]  # behind the known range
    mirror.apply({"seq": 3, "changes": {"bids": [["100.00", "0", 0]], "asks": []}})
    assert mirror.bids.needs_refresh()


def update(seq: int, price: str, qty: str) -> str:
    book = {"seq": seq, "prev_seq": seq - 1, "changes": {"bids": [[price, qty, 1]], "asks": []}}
    return json.dumps({"shard": 0, "books": {"X": book}, "trades": [], "orders": []})


def hub_with_book() -> tuple[MarketHub, BookMirror]:
    """A hub mirroring an empty book "X" at seq 10."""
    hub = MarketHub()
    hub.books["X"] = mirror = BookMirror("X")
    mirror.load({"seq": 10, "bids": [], "asks": [], "last_price": None})
    return hub, mirror


def drained(sub: Subscriber) -> list[dict]:
    """Every frame queued for `sub`, decoded (the queue is left empty)."""
    return [json.loads(sub.queue.get_nowait()) for _ in range(sub.queue.qsize())]


def assert_resynced_without_gap(frames: list[dict], last_seq: int) -> None:
    """`frames` hold a resync, then a fresh snapshot, then updates continuing it to last_seq."""
    kinds = [f["type"] for f in frames]
    assert "resync" in kinds
    after = frames[kinds.index("resync") + 1 :]
    assert after[0]["type"] == "snapshot"
    # From the fresh snapshot on, nothing is missing: each update continues the last seq.
    seq = after[0]["seq"]
    for frame in after[1:]:
        assert frame["prev_seq"] == seq
        seq = frame["seq"]
    assert seq == last_seq


def test_a_consumer_that_falls_behind_gets_a_resync_and_a_fresh_snapshot():
    async def scenario():
        hub, mirror = hub_with_book()
        slow = Subscriber(maxsize=4)
        hub.add(slow, "book.X")
        for seq in range(11, 20):  # nobody reads the queue
            await hub.on_message(update(seq, f"{seq}.00", "1"))
        assert_resynced_without_gap(drained(slow), 19)
        assert mirror.bids.top(1) == [("19.00", "1")]

    asyncio.run(scenario())


def test_a_consumer_whose_answers_alone_fill_its_queue_is_given_up_on():
    # A resync keeps the answers to the connection's ops: one sending ops and reading nothing
    # is closed (4008) rather than losing one of them.
    async def scenario():
        hub, _ = hub_with_book()
        gave_up = []
        slow = Subscriber(maxsize=4, on_give_up=lambda: gave_up.append(True))
        hub.add(slow, "book.X")
        await hub.on_message(update(11, "11.00", "1"))
        hub.push(slow, json.dumps({"type": "pong", "id": 1}, separators=(",", ":")))
        for seq in range(12, 15):  # the queue overflows: the pong stays, the book resyncs
            await hub.on_message(update(seq, f"{seq}.00", "1"))
        frames = drained(slow)
        assert [f["type"] for f in frames[:2]] == ["pong", "resync"] and not gave_up
        assert_resynced_without_gap(frames[1:], 14)
        for n in range(4):
            hub.push(slow, json.dumps({"type": "pong", "id": n}, separators=(",", ":")))
        assert not gave_up
        hub.push(slow, json.dumps({"type": "pong", "id": 4}, separators=(",", ":")))
        assert gave_up

    asyncio.run(scenario())


def test_a_consumer_resyncing_too_often_is_given_up_on_but_not_one_slow_now_and_then():
    # 50 resyncs within the window close the connection (4008); a long-lived connection that
    # falls behind now and then is not closed at its 51st resync of all time.
    async def scenario():
        hub, _ = hub_with_book()
        gave_up = []
        slow = Subscriber(maxsize=4, on_give_up=lambda: gave_up.append(True))
        hub.add(slow, "book.X")
        seq = 11
        for _ in range(Subscriber.RESYNC_LIMIT):
            while not slow.queue.full():
                await hub.on_message(update(seq, f"{seq}.00", "1"))
                seq += 1
            resyncs = slow.resyncs
            await hub.on_message(update(seq, f"{seq}.00", "1"))
            seq += 1
            assert slow.resyncs == resyncs + 1
            drained(slow)
        assert not gave_up
        slow.resyncs_since -= Subscriber.RESYNC_WINDOW_SECONDS + 1  # the window has passed
        while not slow.queue.full():
            await hub.on_message(update(seq, f"{seq}.00", "1"))
            seq += 1
        await hub.on_message(update(seq, f"{seq}.00", "1"))
        assert not gave_up and slow.resyncs == 1
        seq += 1
        for _ in range(Subscriber.RESYNC_LIMIT):
            while not slow.queue.full() and not gave_up:
                await hub.on_message(update(seq, f"{seq}.00", "1"))
                seq += 1
            await hub.on_message(update(seq, f"{seq}.00", "1"))
            seq += 1
            drained(slow)
        assert gave_up

    asyncio.run(scenario())


def test_a_ticker_frame_goes_out_when_what_it_shows_changes_only():
    # The comparison included the book's seq, so a change deeper in the book sent a ticker
    # frame identical to the last but for its seq (346 of 1,270 frames in one live run).
    async def scenario():
        hub, _ = hub_with_book()
        watcher = Subscriber(maxsize=10)
        hub.channels["ticker.X"] = {watcher}
        await hub.on_message(update(11, "10.00", "1"))  # a new best bid
        await hub.on_message(update(12, "9.00", "4"))  # behind it
        await hub.on_message(update(13, "10.00", "2"))  # the best bid's size
        shown = [(f["data"]["best_bid"], f["data"]["best_bid_size"]) for f in drained(watcher)]
        assert shown == [("10.00", "1"), ("10.00", "2")]

    asyncio.run(scenario())


def test_private_order_events_reach_only_their_user():
    async def scenario():
        hub = MarketHub()
        alice, bob = Subscriber(maxsize=10), Subscriber(maxsize=10)
        alice.user_id, bob.user_id = 1, 2
        hub.add(alice, "orders")
        hub.add(bob, "orders")
        event = {"order_id": 5, "user_id": 1, "status": "filled", "symbol": "X"}
        await hub.on_message(json.dumps({"books": {}, "trades": [], "orders": [event]}))
        assert bob.queue.empty()
        frame = json.loads(alice.queue.get_nowait())
        assert frame["data"] == {"order_id": 5, "status": "filled", "symbol": "X", "event": "fill"}

    asyncio.run(scenario())


def test_a_balance_event_older_than_one_sent_is_dropped():
    # The web process and the worker each publish after their own commit: the older balance
    # could arrive last and stay on the client's screen (seen live, 1 in 40 tries of a race).
    async def scenario():
        hub = MarketHub()
        alice = Subscriber(maxsize=10)
        alice.user_id = 1
        hub.add(alice, "orders")

        def balance(held: str, version: int, asset: str = "USD") -> str:
            event = {"user_id": 1, "asset": asset, "available": "1.00", "held": held,
                     "total": "2.00", "version": version}  # fmt: skip
            return json.dumps({"balances": [event]})

        for message in (balance("1.00", 7), balance("0.50", 6), balance("0.25", 8)):
            await hub.on_message(message)
        await hub.on_message(balance("9.00", 3, asset="EUR"))  # versions are per asset
        sent = [json.loads(alice.queue.get_nowait())["data"] for _ in range(alice.queue.qsize())]
        assert [(d["asset"], d["held"], d["version"]) for d in sent] == [
            ("USD", "1.00", 7), ("USD", "0.25", 8), ("EUR", "9.00", 3)
        ]  # fmt: skip
        hub.remove(alice, "orders")
        assert hub.balance_versions == {}

    asyncio.run(scenario())


def feed_message(shard: int, feed_id: str, seq: int, **content) -> str:
    """A shard worker's market-data message, numbered as Publisher numbers them."""
    return json.dumps({"shard": shard, "feed": {"id": feed_id, "seq": seq}, "books": {},
                       "trades": [], "orders": [], **content})  # fmt: skip


def test_a_lost_feed_message_tells_trade_order_book_and_ticker_subscribers_what_they_missed():
    # A book resyncs itself after a gap (prev_seq); the trades and order events of a message
    # Redis lost were gone without a word to the client.
    async def scenario():
        hub, _ = hub_with_book()
        trades, orders = Subscriber(maxsize=10), Subscriber(maxsize=10)
        book = Subscriber(maxsize=10)
        orders.user_id = 1
        hub.add(trades, "trades.X")
        hub.add(orders, "orders")
        hub.add(book, "book.X")
        drained(book)
        trade = {"symbol": "X", "trade_id": 3, "price": "1.00", "quantity": "1",
                 "taker_side": "buy", "ts_ns": 1}  # fmt: skip
        await hub.on_message(feed_message(0, "a", 1))
        await hub.on_message(feed_message(0, "a", 2))
        assert trades.queue.empty() and orders.queue.empty()  # in order: nothing to say
        await hub.on_message(feed_message(0, "a", 4, trades=[trade]))  # 3 was lost
        notice = {"type": "resync", "reason": "feed_gap"}
        assert drained(trades) == [
            {**notice, "lost_channels": ["trades.X"]},
            {"channel": "trades.X", "type": "trades", "data": [{k: v for k, v in trade.items()
                                                                if k != "symbol"}]},
        ]  # fmt: skip
        assert drained(orders) == [{**notice, "lost_channels": ["orders"]}]
        # Its levels resync by its seq, but a status frame (a halt) may have been lost too.
        assert drained(book) == [{**notice, "lost_channels": ["book.X"]}]
        # Another worker took the shard over: its predecessor's last batch may never have gone
        # out. A gap on another shard loses no trades of X (every symbol is on shard 0 here).
        await hub.on_message(feed_message(0, "b", 1))
        await hub.on_message(feed_message(1, "c", 5))
        await hub.on_message(feed_message(1, "c", 7))
        assert drained(trades) == [{**notice, "lost_channels": ["trades.X"]}]
        assert drained(orders) == [{**notice, "lost_channels": ["orders"]}] * 2

    asyncio.run(scenario())


def test_a_hub_that_lost_its_redis_subscription_tells_its_subscribers():
    async def scenario():
        hub = MarketHub()
        await hub.ensure_started()
        assert await hub.listening(10)
        trades, orders, ticker = (Subscriber(maxsize=10) for _ in range(3))
        orders.user_id = 1
        hub.channels["trades.X"] = {trades}
        trades.channels.add("trades.X")
        hub.add(orders, "orders")
        hub.channels["ticker.X"] = {ticker}
        ticker.channels.add("ticker.X")
        killed = 0
        redis_conn = redis.Redis.from_url(settings.REDIS_URL)
        for client in redis_conn.client_list():
            if client["name"] == hub_client_name():
                killed += redis_conn.client_kill_filter(_id=client["id"])
        assert killed == 1
        for _ in range(100):  # it reconnects within a second
            if not orders.queue.empty():
                break
            await asyncio.sleep(0.05)
        notice = {"type": "resync", "reason": "feed_gap"}
        assert drained(trades) == [{**notice, "lost_channels": ["trades.X"]}]
        assert drained(orders) == [{**notice, "lost_channels": ["orders"]}]
        assert drained(ticker) == [{**notice, "lost_channels": ["ticker.X"]}]  # its statuses
        hub._task.cancel()

    asyncio.run(scenario())


def snapshot_stored(symbol: str, seq: int) -> None:
    """The worker's Redis snapshot of an empty book `symbol` at `seq`."""
    from exchange.redis_connection import redis_client
    from matching.transport import book_snapshot_key

    snapshot = {"seq": seq, "bids": [], "asks": [], "last_price": None}
    redis_client().set(book_snapshot_key(symbol), json.dumps(snapshot), ex=60)


def redis_out_of_reach() -> aioredis.Redis:
    """A real client of a port nothing listens on: every command fails to connect."""
    return aioredis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=1)


def test_a_book_reload_that_meets_redis_out_of_reach_retries_until_it_loads():
    # After Redis comes back the hub reloads every book; the reload's first read could fail
    # (a stale connection) and left the book unloaded for good: no more updates, and every
    # later subscription waiting forever.
    symbol = f"HUB{uuid.uuid4().hex[:8].upper()}"

    async def scenario():
        hub = MarketHub()
        hub.books[symbol] = mirror = BookMirror(symbol)
        mirror.load({"seq": 10, "bids": [], "asks": [], "last_price": None})
        sub = Subscriber(maxsize=10)
        hub.add(sub, f"book.{symbol}")
        drained(sub)
        hub._client = redis_out_of_reach()
        hub._reload(mirror)
        await asyncio.sleep(0.3)  # its first attempt failed
        assert not mirror.loaded
        snapshot_stored(symbol, 42)
        hub._client = aioredis.Redis.from_url(settings.REDIS_URL)  # Redis is back
        for _ in range(100):
            if mirror.loaded:
                break
            await asyncio.sleep(0.05)
        assert mirror.seq == 42
        assert [(f["type"], f["seq"]) for f in drained(sub)] == [("snapshot", 42)]

    asyncio.run(scenario())


def test_a_first_book_load_that_fails_is_forgotten_and_tried_again():
    symbol = f"HUB{uuid.uuid4().hex[:8].upper()}"

    async def scenario():
        hub = MarketHub()
        hub._client = redis_out_of_reach()
        with pytest.raises((redis.RedisError, OSError)):
            await hub.mirror(symbol)
        assert symbol not in hub.books  # was left unloaded: the next subscriber waited forever
        snapshot_stored(symbol, 7)
        hub._client = aioredis.Redis.from_url(settings.REDIS_URL)
        assert (await asyncio.wait_for(hub.mirror(symbol), timeout=5)).seq == 7

    asyncio.run(scenario())


def test_a_book_reloaded_while_redis_has_lost_its_snapshot_keeps_its_book_until_it_is_back(
    caplog,
):
    # A reload (the hub's Redis subscription lost, say Redis restarted without its data) that
    # found no snapshot mirrored the book empty at seq 0 and sent its subscribers that, for as
    # long as the shard's worker was away to write the snapshot again.
    symbol = f"HUB{uuid.uuid4().hex[:8].upper()}"

    async def scenario():
        from exchange.redis_connection import redis_client
        from matching.transport import book_snapshot_key

        key = book_snapshot_key(symbol)
        snapshot = {"seq": 12, "bids": [["10.00", "3", 1]], "asks": [], "last_price": None}
        redis_client().set(key, json.dumps(snapshot), ex=60)
        hub = MarketHub()
        hub._client = aioredis.Redis.from_url(settings.REDIS_URL)
        mirror = await hub.mirror(symbol)
        sub = Subscriber(maxsize=10)
        hub.add(sub, f"book.{symbol}")
        assert [(f["type"], f["seq"]) for f in drained(sub)] == [("snapshot", 12)]
        redis_client().delete(key)
        hub._reload(mirror)
        await asyncio.sleep(RELOAD_RETRY_SECONDS * 3)  # reload attempts that find nothing
        assert drained(sub) == []
        assert not mirror.loaded
        redis_client().set(key, json.dumps(snapshot), ex=60)  # written again
        for _ in range(60):
            if mirror.loaded:
                break
            await asyncio.sleep(0.05)
        frames = drained(sub)
        assert [(f["type"], f["seq"]) for f in frames] == [("snapshot", 12)]
        assert frames[0]["bids"] == [["10.00", "3"]]

    with caplog.at_level("INFO", logger="exchange.market_hub"):
        asyncio.run(scenario())
    # Said when it starts and when it ends, not at each of the retries between (a warning
    # every half second a book, for as long as the shard's worker was away).
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("book reload")]
    assert said == ["book reload failed, retrying", "book reloaded"]


def test_a_book_loaded_before_its_snapshot_was_written_again_gets_it_without_a_change():
    # After a Redis wipe, a book first watched before the worker wrote its snapshot again was
    # mirrored empty at seq 0, and its subscribers kept that empty book until the book changed.
    symbol = f"HUB{uuid.uuid4().hex[:8].upper()}"

    async def scenario():
        from exchange.redis_connection import redis_client
        from matching.transport import book_snapshot_key

        hub = MarketHub()
        hub._client = aioredis.Redis.from_url(settings.REDIS_URL)
        mirror = await hub.mirror(symbol)
        assert (mirror.seq, mirror.bids.top(1)) == (0, [])
        sub = Subscriber(maxsize=10)
        hub.add(sub, f"book.{symbol}")
        assert [f["type"] for f in drained(sub)] == ["snapshot"]
        snapshot = {"seq": 12, "bids": [["10.00", "3", 1]], "asks": [], "last_price": None}
        redis_client().set(book_snapshot_key(symbol), json.dumps(snapshot), ex=60)
        for _ in range(60):
            if mirror.seq == 12:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.05)
        frames = drained(sub)
        assert [(f["type"], f["seq"]) for f in frames] == [("snapshot", 12)]
        assert frames[0]["bids"] == [["10.00", "3"]]

    asyncio.run(scenario())


def test_a_slow_consumer_is_told_when_a_status_frame_was_among_the_frames_dropped():
    # A halt's status frame dropped with a slow consumer's queue was gone without a word: the
    # fresh snapshot and ticker that follow do not say the status.
    async def scenario():
        hub, _ = hub_with_book()
        sub = Subscriber(maxsize=3)
        hub.add(sub, "book.X")
        hub.add(sub, "ticker.X")
        drained(sub)
        halt = {"symbol": "X", "status": "halted", "reason": "news", "ts_ns": 5}
        await hub.on_message(feed_message(0, "a", 1, statuses=[halt]))
        assert [f["type"] for f in drained(sub)] == ["status", "status"]
        await hub.on_message(feed_message(0, "a", 2, statuses=[halt]))
        update = json.dumps({"channel": "book.X", "type": "update"})
        hub.push(sub, update)  # the queue is full
        hub.push(sub, update)  # it overflows: the status frames queued are dropped
        notice = {"type": "resync", "reason": "slow_consumer"}
        assert json.loads(sub.queue.get_nowait()) == {
            **notice,
            "lost_channels": ["book.X", "ticker.X"],
        }
        # Without a status frame dropped, book and ticker are not named.
        hub.push(sub, update)
        hub.push(sub, update)
        assert drained(sub)[0] == {**notice, "lost_channels": []}

    asyncio.run(scenario())


def test_a_slow_consumer_overflowing_again_before_it_reads_is_still_told_what_it_lost():
    # Each resync dropped the queue, an earlier notice included, and never looked at the frame
    # that overflowed it: a status frame lost that way was never named (helper 58).
    async def scenario():
        hub, _ = hub_with_book()
        sub = Subscriber(maxsize=3)
        hub.add(sub, "book.X")
        drained(sub)
        update = json.dumps({"channel": "book.X", "type": "update"})
        halt = {"symbol": "X", "status": "halted", "ts_ns": 5}
        await hub.on_message(feed_message(0, "a", 1, statuses=[halt]))  # a status frame queued
        for _ in range(3):  # two overflows: the second drops the first one's notice
            hub.push(sub, update)
        notices = [f for f in drained(sub) if f["type"] == "resync"]
        assert [n["lost_channels"] for n in notices] == [["book.X"]]
        # The status frame that overflows a full queue is named too.
        for _ in range(3):
            hub.push(sub, update)
        drained(sub)
        for _ in range(3):
            hub.push(sub, update)
        await hub.on_message(feed_message(0, "a", 2, statuses=[halt]))
        assert drained(sub)[0]["lost_channels"] == ["book.X"]
        # A feed gap's notice still queued when the queue overflows: its channels are named.
        await hub.on_message(feed_message(0, "a", 4))  # 3 was lost
        for _ in range(3):
            hub.push(sub, update)
        notices = [f for f in drained(sub) if f["type"] == "resync"]
        assert [n["lost_channels"] for n in notices] == [["book.X"]]

    asyncio.run(scenario())


def test_a_session_that_opens_or_closes_is_told_on_the_book_and_ticker_channels():
    # No frame had said when a session opened or closed: the ticker's `closed` was computed
    # per request, and a resume outside the session said `trading`.
    async def scenario():
        hub, mirror = hub_with_book()
        sub = Subscriber(maxsize=20)
        hub.add(sub, "book.X")
        hub.status_tell(sub, "book.X", ("trading", "", False))  # subscribed while closed
        frames = drained(sub)
        assert [f["type"] for f in frames] == ["snapshot", "status"]
        assert frames[1]["data"] == {"symbol": "X", "status": "closed"}
        hub.add(sub, "ticker.X")
        drained(sub)
        hub.session_seen(mirror, ("trading", "", False), 1)  # still closed: nothing
        assert drained(sub) == []
        hub.session_seen(mirror, ("trading", "", True), 2)
        opened = drained(sub)
        assert [(f["channel"], f["data"]) for f in opened] == [
            (channel, {"symbol": "X", "status": "trading", "ts_ns": 2})
            for channel in ("book.X", "ticker.X")
        ]
        # Halted: the clock changes nothing it says.
        halt = {"symbol": "X", "status": "halted", "ts_ns": 3}
        await hub.on_message(feed_message(0, "a", 1, statuses=[halt]))
        drained(sub)
        hub.session_seen(mirror, ("halted", "", False), 4)
        assert drained(sub) == []
        # Resumed while the session is closed: `closed`, then `trading` when it opens.
        resume = {"symbol": "X", "status": "trading", "ts_ns": 5}
        await hub.on_message(feed_message(0, "a", 2, statuses=[resume]))
        assert {f["data"]["status"] for f in drained(sub)} == {"closed"}
        later = Subscriber(maxsize=20)
        hub.add(later, "ticker.X")
        hub.status_tell(later, "ticker.X", ("trading", "", True))  # the hub's own view wins
        assert [f["data"]["status"] for f in drained(later)[1:]] == ["closed"]
        hub.session_seen(mirror, ("trading", "", True), 6)
        assert {f["data"]["status"] for f in drained(sub)} == {"trading"}
        assert [f["data"]["status"] for f in drained(later)] == ["trading"]
        # A trading instrument's new subscriber gets no status frame.
        hub.add(later, "book.X")
        hub.status_tell(later, "book.X", ("trading", "", True))
        assert [f["type"] for f in drained(later)] == ["snapshot"]

    asyncio.run(scenario())


def test_a_trade_in_an_update_that_arrives_while_the_book_loads_is_the_tickers_last_price():
    # A batch that arrived while a book's snapshot was being read (a snapshot from before it)
    # was kept and applied to the book, but its trades' price was not: the ticker's
    # last_price stayed the snapshot's, where REST's ticker said the new trade's, until the
    # next trade.
    symbol = f"HUB{uuid.uuid4().hex[:8].upper()}"

    async def scenario():
        from exchange.redis_connection import redis_client
        from matching.transport import book_snapshot_key

        older = {"seq": 10, "bids": [["99.00", "5", 1]], "asks": [], "last_price": "100.00"}
        redis_client().set(book_snapshot_key(symbol), json.dumps(older), ex=60)
        hub = MarketHub()
        hub._client = aioredis.Redis.from_url(settings.REDIS_URL)
        hub.books[symbol] = mirror = BookMirror(symbol)  # loading: updates wait in `pending`
        book = {"seq": 11, "prev_seq": 10, "changes": {"bids": [["99.00", "3", 1]], "asks": []}}
        trade = {"symbol": symbol, "trade_id": 7, "price": "99.00", "quantity": "2",
                 "taker_side": "sell", "ts_ns": 1}  # fmt: skip
        message = {"shard": 0, "books": {symbol: book}, "trades": [trade], "orders": []}
        await hub.on_message(json.dumps(message))
        await hub._load(mirror)
        assert mirror.seq == 11 and mirror.bids.top(1) == [("99.00", "3")]
        assert mirror.ticker()["last_price"] == "99.00"

    asyncio.run(scenario())

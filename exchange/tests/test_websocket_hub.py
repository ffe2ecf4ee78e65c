"""The market hub's book logic without processes: checksum, views, slow consumers."""

import asyncio
import json

from exchange.book_checksum import book_checksum
from exchange.market_hub import BookMirror, MarketHub, Subscriber, view_changes


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

"""A market-data message that Redis loses still counts: the next message's prev_seq is the lost
one's seq, so subscribers see the gap and reload the book, and its feed number is skipped, so
hubs tell trade and order subscribers (real Redis; the failing publish goes to a port where
nothing listens)."""

import json
import time

import redis

from exchange.embedded_servers import free_port
from matching.batch_writer import BatchOutcome
from matching.engine.testing import Harness
from matching.publish import Publisher
from matching.transport import market_data_channel


def test_a_lost_book_message_leaves_a_gap_in_prev_seq(redis_conn):
    shard = 9_000 + free_port() % 1_000  # a shard no other test publishes on
    book = Harness(symbol="GAP", tick_size="0.01", lot_size="1", quote_decimals=2)
    publisher = Publisher(client=redis_conn, shard=shard, consumer="test")
    listener = redis_conn.pubsub(ignore_subscribe_messages=True)
    listener.subscribe(market_data_channel(shard))

    def batch(order_id: int, client: redis.Redis) -> int:
        book.place(order_id, True, 1, 100 + order_id)
        outcome = BatchOutcome(command_ids=[order_id], symbols={"GAP"}, trades=[], orders=[])
        prepared = publisher.prepare(engine=book.engine, outcome=outcome, ts_ns=time.time_ns())
        publisher.client = client
        publisher.send(prepared)
        return prepared["books"]["GAP"]["seq"]

    feeds = []

    def next_book() -> dict:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            message = listener.get_message(timeout=0.5)
            if message is not None:
                data = json.loads(message["data"])
                feeds.append(data["feed"])
                return data["books"]["GAP"]
        raise AssertionError("no market-data message within 5 s")

    first = batch(1, redis_conn)
    assert next_book()["seq"] == first
    unreachable = redis.Redis(port=free_port(), socket_connect_timeout=0.5)
    lost = batch(2, unreachable)  # logged, not raised: the batch is durable in PostgreSQL
    third = batch(3, redis_conn)
    received = next_book()
    # Before: prev_seq was `first` (the last seq that got through), which is what subscribers
    # had; their books silently lacked the lost batch's levels.
    assert (received["seq"], received["prev_seq"]) == (third, lost)
    assert lost != first
    # The lost message took a number too: hubs tell trade and order subscribers of the gap.
    assert feeds == [{"id": publisher.feed_id, "seq": 1}, {"id": publisher.feed_id, "seq": 3}]
    listener.close()


def test_a_fenced_holders_late_snapshot_does_not_replace_its_successors(redis_conn):
    # A holder fenced while it hung between its commit and its Redis writes woke up and put
    # its older book over its successor's: the order book API read it until the book changed.
    from matching.transport import book_snapshot_key

    shard = 9_000 + free_port() % 1_000
    symbol = f"EP{free_port()}"
    key = book_snapshot_key(symbol)

    def sent(epoch: int, price: int) -> None:
        book = Harness(symbol=symbol, tick_size="0.01", lot_size="1", quote_decimals=2)
        book.place(1, True, 1, price)
        publisher = Publisher(client=redis_conn, shard=shard, consumer="t", epoch=epoch)
        outcome = BatchOutcome(command_ids=[1], symbols={symbol}, trades=[], orders=[])
        publisher.send(publisher.prepare(engine=book.engine, outcome=outcome, ts_ns=1))

    def stored_bid() -> str:
        return json.loads(redis_conn.get(key))["bids"][0][0]

    sent(epoch=7, price=101)
    sent(epoch=6, price=99)  # the fenced predecessor, late
    assert stored_bid() == "1.01"
    sent(epoch=7, price=102)
    assert stored_bid() == "1.02"
    # Nor does a holder repairing Redis while it serves (fenced since it last checked).
    book = Harness(symbol=symbol, tick_size="0.01", lot_size="1", quote_decimals=2)
    book.place(1, True, 1, 97)
    Publisher(client=redis_conn, shard=shard, consumer="t", epoch=6).snapshots_write(
        engine=book.engine, ts_ns=2, unless_newer=True
    )
    assert stored_bid() == "1.02"
    # Recovery writes whatever is stored: a database rebuilt from scratch starts at epoch 1.
    book = Harness(symbol=symbol, tick_size="0.01", lot_size="1", quote_decimals=2)
    book.place(1, True, 1, 98)
    Publisher(client=redis_conn, shard=shard, consumer="t", epoch=1).snapshots_write(
        engine=book.engine, ts_ns=2
    )
    assert stored_bid() == "0.98"
    redis_conn.delete(key)


def test_a_worker_announces_its_feed_before_its_first_batch(redis_conn):
    # A takeover on a quiet shard went unnoticed by the hubs until the new worker's first
    # batch: a status frame its predecessor committed but never published stayed unannounced.
    shard = 9_000 + free_port() % 1_000
    book = Harness(symbol="ANN", tick_size="0.01", lot_size="1", quote_decimals=2)
    publisher = Publisher(client=redis_conn, shard=shard, consumer="test")
    listener = redis_conn.pubsub(ignore_subscribe_messages=True)
    listener.subscribe(market_data_channel(shard))
    listener.get_message(timeout=1)
    publisher.announce()
    book.place(1, True, 1, 100)
    outcome = BatchOutcome(command_ids=[1], symbols={"ANN"}, trades=[], orders=[])
    publisher.send(publisher.prepare(engine=book.engine, outcome=outcome, ts_ns=time.time_ns()))
    messages = []
    deadline = time.monotonic() + 5
    while len(messages) < 2 and time.monotonic() < deadline:
        message = listener.get_message(timeout=0.5)
        if message is not None:
            messages.append(json.loads(message["data"]))
    first, second = messages
    assert first["feed"] == {"id": publisher.feed_id, "seq": 1}
    assert (first["books"], first["trades"], first["orders"], first["statuses"]) == ({}, [], [], [])
    assert second["feed"] == {"id": publisher.feed_id, "seq": 2} and "ANN" in second["books"]


def test_a_command_stream_out_of_reach_is_logged_once_not_at_every_wait(redis_conn, caplog):
    # The worker waits on the stream every 10 ms when idle: out of reach, it logged a warning
    # at each wait, 100 lines a second for as long as Redis was away.
    shard = 9_000 + free_port() % 1_000
    # From a URL, as the worker's client is (no retries: each wait fails at once).
    unreachable = redis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")
    publisher = Publisher(client=unreachable, shard=shard, consumer="test")
    with caplog.at_level("INFO", logger="matching.publish"):
        for _ in range(5):
            assert publisher.signal_wait(block_ms=1, count=10) == 0
        publisher.client = redis_conn
        assert publisher.signal_wait(block_ms=1, count=10) == 1  # the group is created
        assert publisher.signal_wait(block_ms=1, count=10) == 0
        publisher.client = unreachable
        publisher.signal_wait(block_ms=1, count=10)
    said = [record.getMessage() for record in caplog.records]
    assert said == [
        "command stream unavailable: polling PostgreSQL alone",
        "command stream available again",
        "command stream unavailable: polling PostgreSQL alone",
    ]
    redis_conn.delete(publisher.stream)

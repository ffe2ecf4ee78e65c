"""Redis names shared by the web processes and the shard workers (all under the key prefix;
the pub/sub channels under the database number too: `pubsub_channel`).

- `command_stream_key(shard)`: XADD on commit of a command row: a wake-up signal, not the record.
- `REPLIES_CHANNEL`: the worker PUBLISHes, after each batch commit, a JSON list of the command
  ids it applied; each web process has one subscriber that wakes the requests waiting on them.
- `book_snapshot_key(symbol)`: JSON of the book's top 50 levels and its seq, rewritten after each
  batch that changed the book.
- `market_data_channel(shard)`: one PUBLISH per batch with the batch's book changes, trades,
  order events and balance changes.
- `private_events_channel()`: balance changes made by the web processes (holds, deposits,
  withdrawals), PUBLISHed after their commit; the hubs forward them like the worker's.
"""

from exchange.redis_connection import pubsub_channel, redis_key

REPLIES = "replies"


def command_stream_key(shard: int) -> str:
    return redis_key("matching", "shard", shard, "commands")


def replies_channel() -> str:
    return pubsub_channel("matching", REPLIES)


def book_snapshot_key(symbol: str) -> str:
    return redis_key("book", symbol)


def market_data_channel(shard: int) -> str:
    return pubsub_channel("md", "shard", shard)


def private_events_channel() -> str:
    return pubsub_channel("md", "private")

"""Engine state version 2 made priority seqs and book update seqs event seqs (6cd57b0). A
database written by an older worker holds the old numbers: open orders' `priority_seq` from a
counter of its own, books' `book_seq` counted one a change. Trading would go on correctly (every
old number is below every new one, so queues keep their order), but `matching_verify` replays
the journal with the new engine and would report every such order and book as a difference.
Migration matching 0006 renumbers them to what that replay gives; a database without a
journal has nothing to renumber."""

from django.db import connection, transaction

from matching.replay import journal_replay

RECORD_ORDER_ID, RECORD_SEQ = 0, 10  # in an engine order record (API.md)

ORDERS_RENUMBER_SQL = """
UPDATE exchange_order o
   SET priority_seq = v.seq
  FROM unnest(%s::bigint[], %s::bigint[]) AS v(id, seq)
 WHERE o.id = v.id AND o.priority_seq IS DISTINCT FROM v.seq
"""

BOOKS_RENUMBER_SQL = """
UPDATE matching_bookstate b
   SET book_seq = v.seq
  FROM unnest(%s::text[], %s::bigint[]) AS v(symbol, seq)
 WHERE b.symbol = v.symbol AND b.shard = %s AND b.book_seq <> v.seq
"""


def shard_seqs_renumber(shard: int) -> tuple[int, int]:
    """Give the shard's open orders and books the seqs a replay of its journal gives them;
    returns how many orders and books changed. Run with the shard's workers stopped."""
    with transaction.atomic():  # the replay reads the journal through a named cursor
        engine, _entries, _mismatches = journal_replay(shard)
        return _seqs_write(shard, engine.export_state())


def _seqs_write(shard: int, state: dict) -> tuple[int, int]:
    records = state["orders"] + state["stops"]
    books = state["books"]
    with connection.cursor() as cursor:
        cursor.execute(
            ORDERS_RENUMBER_SQL,
            [[r[RECORD_ORDER_ID] for r in records], [r[RECORD_SEQ] for r in records]],
        )
        orders = cursor.rowcount
        cursor.execute(BOOKS_RENUMBER_SQL, [[b[0] for b in books], [b[2] for b in books], shard])
        return orders, cursor.rowcount


def journaled_shards() -> list[int]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT DISTINCT shard FROM matching_journalentry ORDER BY shard")
        return [row[0] for row in cursor.fetchall()]

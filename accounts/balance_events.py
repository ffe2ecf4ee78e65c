"""Balance changes for the WebSocket `orders` channel: `{"user_id", "asset", "available",
"held", "total", "version"}` after a commit (the shard worker sends its batch's with the market
data; the web processes send theirs here). Redis is transport: a lost event is caught up by GET
/balances.

Events come from several processes, each after its own commit, so they can arrive out of order:
`version` puts them back in order. Every transaction that reports a user's asset has locked
both of its accounts (cash and hold) before drawing it from one sequence, so for one user's
asset a later commit has a larger version; the socket hub drops an event older than one it has
sent."""

import json
import logging
from collections.abc import Iterable
from decimal import Decimal

import redis
from django.db import transaction

from accounts.selectors import asset_precisions_cached, balance_view
from exchange.redis_connection import redis_client
from matching.transport import private_events_channel

logger = logging.getLogger(__name__)


# A version for this transaction's events, stamped on the accounts they report (GET /balances
# shows it: a REST answer read before an event then says it is older).
VERSION_SQL = """
WITH v AS (SELECT nextval('accounts_balance_version') AS version),
     stamped AS (
         UPDATE accounts_ledgeraccount a SET balance_version = v.version
           FROM v WHERE a.id = ANY(%s::bigint[]))
SELECT version FROM v
"""


def balance_version(cursor, *, account_ids: list[int]) -> int:
    """A version for the events of this transaction, stamped on `account_ids` (the cash and
    hold accounts the events report): call it after locking them."""
    cursor.execute(VERSION_SQL, [account_ids])
    return cursor.fetchone()[0]


def balance_events(rows: Iterable[tuple[int, str, str, Decimal]], *, version: int) -> list[dict]:
    """Events from (user_id, asset, kind, balance) rows of users' cash and hold accounts, the
    amounts as strings at each asset's precision (as GET /api/v1/balances shows them)."""
    merged: dict[tuple[int, str], dict[str, Decimal]] = {}
    for user_id, asset, kind, balance in rows:
        row = merged.setdefault((user_id, asset), {"available": Decimal(0), "held": Decimal(0)})
        row["available" if kind == "cash" else "held"] = balance
    places = asset_precisions_cached(assets={asset for _, asset in merged})
    return [
        {
            "user_id": user_id,
            **balance_view(asset=asset, places=places, **merged[user_id, asset]),
            "version": version,
        }
        for user_id, asset in sorted(merged)
    ]


def balance_events_publish_on_commit(events: list[dict]) -> None:
    """Publish `events` once the current transaction commits (never for a rolled-back one)."""
    if events:
        transaction.on_commit(lambda: _publish(events))


def _publish(events: list[dict]) -> None:
    try:
        redis_client().publish(private_events_channel(), json.dumps({"balances": events}))
    except redis.RedisError as exc:
        logger.warning("balance events not published", extra={"why": str(exc)})

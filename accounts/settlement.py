"""Ledger settlement of a matching batch, inside the batch's transaction, with set-based SQL.

Per trade, one entry (quote and base, each summing to zero):
    buyer hold (quote)   -(notional + buyer fee)     buyer cash (base)    +quantity
    seller hold (base)   -quantity                   seller cash (quote)  +(notional - seller fee)
    exchange fee revenue +fees charged               exchange rebate expense  -rebates paid
A buyer's fee comes out of the hold, exactly as the engine counts it against the buy's cap, so
a maker rebate on a buy stays in the hold and reaches the buyer's cash with the order's release.
Per release (an order ended, or an amend freed part of its hold), one entry: hold -> cash.

Accounts are created when missing; users and then accounts are locked as `accounts.ledger` locks
them, before the batch draws its entry ids.
"""

from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal

import psycopg
from django.db import connection

from accounts.balance_events import balance_events
from accounts.ledger import (
    CASH,
    CREATE_SQL,
    FEE_REVENUE,
    HOLD,
    REBATE_EXPENSE,
    USERS_LOCK_SQL,
    AccountKey,
    key_columns,
    users_lock_params,
)
from accounts.models import LedgerEntry

TRADE = LedgerEntry.Kind.TRADE.value
RELEASE = LedgerEntry.Kind.RELEASE.value
# Account ids a worker remembers before it starts over (~180 bytes each): one per user, asset
# and kind that ever traded or had a hold released on the shard, for the worker's whole life.
ACCOUNT_IDS_MAX = 100_000

RESOLVE_SQL = """
SELECT a.id, a.kind, a.user_id, a.asset
  FROM accounts_ledgeraccount a
  JOIN unnest(%s::text[], %s::bigint[], %s::text[]) AS k(kind, user_id, asset)
    ON a.kind = k.kind AND a.user_id IS NOT DISTINCT FROM k.user_id AND a.asset = k.asset
"""

# The locks, then the batch's entry ids, in one round trip: the users whose postings the batch
# writes (`USERS_LOCK_SQL`, as every ledger writer takes them), then their accounts in
# primary-key order. The lock takes both accounts of each user asset that moved, as
# accounts.ledger does: the balance events report both, and their version orders them only among
# transactions that locked both (accounts.balance_events). The ids are drawn only once the locks
# are held, so a user's postings are numbered in the order their transactions commit (see
# accounts.ledger). The cash and hold accounts of each (user, asset) are probed through the
# unique (kind, user, asset) index (LATERAL, OFFSET 0): the matching worker's batch runs with
# hash and merge joins off, and a plain join became a nested loop comparing every moved (user,
# asset) with every cash and hold account (78,000 comparisons a batch of bench worker's 100
# users; quadratic in the users a batch touches).
LOCK_AND_IDS_SQL = f"""
{USERS_LOCK_SQL};
SELECT 1 FROM accounts_ledgeraccount
 WHERE id = ANY(%s::bigint[] || ARRAY(
       SELECT a.id
         FROM (SELECT DISTINCT user_id, asset FROM accounts_ledgeraccount
                WHERE id = ANY(%s::bigint[]) AND user_id IS NOT NULL) t
        CROSS JOIN LATERAL (
              SELECT a.id FROM accounts_ledgeraccount a
               WHERE a.kind IN ('cash', 'hold') AND a.user_id = t.user_id AND a.asset = t.asset
              OFFSET 0) a))
 ORDER BY id FOR UPDATE;
SELECT nextval(pg_get_serial_sequence('accounts_ledgerentry', 'id')) FROM generate_series(1, %s)
"""

# The balance moves, the users' balances after them (cash and hold of every user asset that
# moved, for the balance events) and the events' version, stamped on those accounts (GET
# /balances shows it), in one round trip.
BALANCES_SQL = """
UPDATE accounts_ledgeraccount a
   SET balance = a.balance + d.delta, updated_at = now()
  FROM unnest(%s::bigint[], %s::numeric[]) AS d(id, delta)
 WHERE a.id = d.id;
SELECT a.user_id, a.asset, a.kind, a.balance
  FROM (SELECT DISTINCT user_id, asset FROM accounts_ledgeraccount
         WHERE id = ANY(%s::bigint[]) AND user_id IS NOT NULL) t
 CROSS JOIN LATERAL (
       SELECT a.user_id, a.asset, a.kind, a.balance FROM accounts_ledgeraccount a
        WHERE a.kind IN ('cash', 'hold') AND a.user_id = t.user_id AND a.asset = t.asset
       OFFSET 0) a;
WITH v AS (SELECT nextval('accounts_balance_version') AS version),
     stamped AS (
         UPDATE accounts_ledgeraccount a SET balance_version = v.version
           FROM v,
                (SELECT DISTINCT user_id, asset FROM accounts_ledgeraccount
                  WHERE id = ANY(%s::bigint[]) AND user_id IS NOT NULL) t
          WHERE a.kind IN ('cash', 'hold') AND a.user_id = t.user_id AND a.asset = t.asset)
SELECT version FROM v
"""


@dataclass(slots=True)
class TradeFill:
    """One trade in ledger terms (Decimal amounts in the instrument's assets)."""

    trade_id: int
    taker_order_id: int
    buyer_id: int
    seller_id: int
    base: str
    quote: str
    quantity: Decimal
    notional: Decimal
    buyer_fee: Decimal
    seller_fee: Decimal


@dataclass(slots=True)
class HoldRelease:
    """Part or all of an order's hold going back to the user's available balance."""

    order_id: int
    user_id: int
    asset: str
    amount: Decimal
    memo: str = ""


def trade_lines(fill: TradeFill) -> list[tuple[AccountKey, Decimal]]:
    """The postings of one trade (zero amounts dropped)."""
    quote, base = fill.quote, fill.base
    fees = (fill.buyer_fee, fill.seller_fee)
    charged = sum((f for f in fees if f > 0), Decimal(0))
    rebated = sum((f for f in fees if f < 0), Decimal(0))
    lines = [
        ((HOLD, fill.buyer_id, quote), -(fill.notional + fill.buyer_fee)),
        ((CASH, fill.buyer_id, base), fill.quantity),
        ((HOLD, fill.seller_id, base), -fill.quantity),
        ((CASH, fill.seller_id, quote), fill.notional - fill.seller_fee),
        ((FEE_REVENUE, None, quote), charged),
        ((REBATE_EXPENSE, None, quote), rebated),
    ]
    return [line for line in lines if line[1]]


class SettlementWriter:
    """Writes the ledger side of batches for one shard worker (remembers account ids)."""

    def __init__(self) -> None:
        self._account_ids: dict[AccountKey, int] = {}

    def forget(self) -> None:
        """Drop remembered account ids (after a rollback, accounts created in it are gone)."""
        self._account_ids.clear()

    def write(self, *, fills: list[TradeFill], releases: list[HoldRelease]) -> list[dict]:
        """Entries, postings and balance moves for a batch's trades and hold releases; returns
        the balance events of the users whose balances moved."""
        entries: list[tuple] = []
        lines: list[tuple[int, AccountKey, Decimal]] = []  # (entry index, account, amount)
        for fill in fills:
            index = len(entries)
            entries.append((TRADE, None, fill.taker_order_id, fill.trade_id, ""))
            lines.extend((index, key, amount) for key, amount in trade_lines(fill))
        for release in releases:
            if release.amount <= 0:
                continue
            index = len(entries)
            entries.append((RELEASE, None, release.order_id, None, release.memo))
            lines.append((index, (HOLD, release.user_id, release.asset), -release.amount))
            lines.append((index, (CASH, release.user_id, release.asset), release.amount))
        if not entries:
            return []
        ids = self._resolve({key for _, key, _ in lines})
        deltas: dict[int, Decimal] = defaultdict(Decimal)
        for _, key, amount in lines:
            deltas[ids[key]] += amount
        moved = sorted(account_id for account_id, delta in deltas.items() if delta)
        with psycopg.ClientCursor(connection.connection) as cursor:
            cursor.execute(
                LOCK_AND_IDS_SQL,
                [*users_lock_params(key[1] for _, key, _ in lines), moved, moved, len(entries)],
            )
            cursor.nextset()
            cursor.nextset()
            entry_ids = [row[0] for row in cursor.fetchall()]
        with psycopg.Cursor(connection.connection) as cursor:
            with cursor.copy(
                "COPY accounts_ledgerentry (id, kind, user_id, order_id, trade_id, memo) FROM STDIN"
            ) as copy:
                for entry_id, row in zip(entry_ids, entries, strict=True):
                    copy.write_row((entry_id, *row))
            with cursor.copy(
                "COPY accounts_ledgerposting (entry_id, account_id, asset, amount) FROM STDIN"
            ) as copy:
                for index, key, amount in lines:
                    copy.write_row((entry_ids[index], ids[key], key[2], amount))
        if not moved:
            return []
        with psycopg.ClientCursor(connection.connection) as cursor:
            cursor.execute(BALANCES_SQL, [moved, [deltas[i] for i in moved], moved, moved])
            cursor.nextset()
            rows = cursor.fetchall()
            cursor.nextset()
            return balance_events(rows, version=cursor.fetchone()[0])

    def _resolve(self, keys: set[AccountKey]) -> dict[AccountKey, int]:
        known = self._account_ids
        missing = [k for k in keys if k not in known]
        if missing and len(known) + len(missing) > ACCOUNT_IDS_MAX:
            known.clear()  # read again what this batch needs
            missing = list(keys)
        if missing:
            columns = key_columns(missing)
            with psycopg.Cursor(connection.connection) as cursor:
                cursor.execute(RESOLVE_SQL, columns)
                rows = cursor.fetchall()
                if len(rows) < len(missing):
                    cursor.execute(CREATE_SQL, columns)
                    cursor.execute(RESOLVE_SQL, columns)
                    rows = cursor.fetchall()
            for pk, kind, user_id, asset in rows:
                known[(kind, user_id, asset)] = pk
        return known

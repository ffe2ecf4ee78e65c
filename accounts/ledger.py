"""Writes to the double-entry ledger: the one path that moves money and keeps balances cached.

Each function runs in the caller's transaction (the outermost service owns it). Accounts are
locked with `accounts_lock`, always in primary-key order, so that a web request and the shard
workers touching the same user's balances queue up instead of deadlocking. The matching worker
settles a whole batch through `accounts.settlement`, which uses the same lock order.

Before its accounts, a writer locks each user it posts for (`USERS_LOCK_SQL`, in user id
order), and draws entry and posting ids only once it holds them. So a user's postings get their
ids in the order their transactions commit, whatever assets they move: `GET /ledger` lists by
posting id, and a client reading the newest postings above the last id it has seen misses none.
(With the account locks alone, a hold of USD and a trade's settlement of BNC for the same user
committed in either order, and a smaller id could appear below one already read.)
"""

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal

from django.db import connection, transaction

from accounts.balance_events import (
    balance_events,
    balance_events_publish_on_commit,
    balance_version,
)
from accounts.models import LedgerAccount, LedgerEntry, LedgerPosting
from accounts.models.ledger import LEDGER_AMOUNT, ledger_arithmetic
from exchange.db_cursors import bound_cursor, transaction_pipeline
from exchange.errors import ApiError, trading_error

AccountKey = tuple[str, int | None, str]  # (kind, user_id or None for the exchange, asset)
Line = tuple[AccountKey, Decimal]

CASH = LedgerAccount.Kind.CASH.value
HOLD = LedgerAccount.Kind.HOLD.value
FEE_REVENUE = LedgerAccount.Kind.FEE_REVENUE.value
REBATE_EXPENSE = LedgerAccount.Kind.REBATE_EXPENSE.value
EXTERNAL = LedgerAccount.Kind.EXTERNAL.value

# Transaction-level advisory locks, one per user, in the two-integer key space under a class of
# their own (the lease and the audit sealer use other classes). The user id is folded into an
# int4: two users sharing a key only queue behind each other. The ids come sorted and are
# locked in array order (a function scan).
USERS_LOCK_CLASS = 0x4C45_4447  # "LEDG"
USERS_LOCK_SQL = """
SELECT pg_advisory_xact_lock(%s, (u.id %% 2147483648)::int) FROM unnest(%s::bigint[]) AS u(id)
"""

LOCK_SQL = """
SELECT a.id, a.kind, a.user_id, a.asset, a.balance
  FROM accounts_ledgeraccount a
  JOIN unnest(%s::text[], %s::bigint[], %s::text[]) AS k(kind, user_id, asset)
    ON a.kind = k.kind AND a.user_id IS NOT DISTINCT FROM k.user_id AND a.asset = k.asset
 ORDER BY a.id
   FOR UPDATE OF a
"""

CREATE_SQL = """
INSERT INTO accounts_ledgeraccount (kind, user_id, asset, balance, updated_at)
SELECT k.kind, k.user_id, k.asset, 0, now()
  FROM unnest(%s::text[], %s::bigint[], %s::text[]) AS k(kind, user_id, asset)
 ORDER BY k.kind, k.user_id, k.asset
    ON CONFLICT DO NOTHING
"""

BALANCES_ADD_SQL = """
UPDATE accounts_ledgeraccount a
   SET balance = a.balance + d.delta, updated_at = now()
  FROM unnest(%s::bigint[], %s::numeric[]) AS d(id, delta)
 WHERE a.id = d.id
"""

# The holds of an order entry batch in one statement: an entry per order (hold entries carry
# their order id, one each), its two postings, and the balances they move.
HOLDS_POST_SQL = """
WITH entry AS (
    INSERT INTO accounts_ledgerentry (kind, user_id, order_id, memo, created_at)
    SELECT %(kind)s, e.user_id, e.order_id, '', now()
      FROM unnest(%(users)s::bigint[], %(orders)s::bigint[]) AS e(user_id, order_id)
    RETURNING id, order_id
), posting AS (
    INSERT INTO accounts_ledgerposting (entry_id, account_id, asset, amount)
    SELECT entry.id, p.account_id, p.asset, p.amount
      FROM unnest(%(posting_orders)s::bigint[], %(posting_accounts)s::bigint[],
                  %(posting_assets)s::text[], %(posting_amounts)s::numeric[])
           AS p(order_id, account_id, asset, amount)
      JOIN entry USING (order_id)
)
UPDATE accounts_ledgeraccount a
   SET balance = a.balance + d.delta, updated_at = now()
  FROM unnest(%(accounts)s::bigint[], %(deltas)s::numeric[]) AS d(id, delta)
 WHERE a.id = d.id
"""


# A balance is a numeric(30, 12) column: it holds magnitudes below 10^18. The exchange's
# external account of an asset holds minus everything deposited, and no user can hold more
# than was deposited (fees and rebates only move it between accounts), so refusing a deposit
# that would take that total to the limit keeps every balance, trade settlement included,
# inside the column.
BALANCE_LIMIT = Decimal(10) ** (LEDGER_AMOUNT["max_digits"] - LEDGER_AMOUNT["decimal_places"])


class LedgerUnbalanced(ValueError):
    """The lines of an entry do not sum to zero in every asset (a programming error)."""


def key_columns(keys: Sequence[AccountKey]) -> list[list]:
    """Account keys as the three arrays (kinds, user ids, assets) the SQL here unnests."""
    return [[k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys]]


def users_lock_params(user_ids: Iterable[int | None]) -> list:
    """`USERS_LOCK_SQL`'s parameters for the users among `user_ids` (None: an exchange account),
    in the one order every writer takes them."""
    return [USERS_LOCK_CLASS, sorted({uid for uid in user_ids if uid is not None})]


def users_lock(*, user_ids: Iterable[int | None]) -> None:
    """Take the users' ledger locks (as every writer does before its accounts) ahead of a read
    the write depends on; a writer taking them again later in the transaction holds them
    already. Call inside a transaction."""
    with bound_cursor() as cursor:
        cursor.execute(USERS_LOCK_SQL, users_lock_params(user_ids))


def accounts_lock(*, keys: Iterable[AccountKey]) -> dict[AccountKey, tuple[int, Decimal]]:
    """Lock the users of `keys` (see the module's docstring), then the accounts named by `keys`
    (creating missing ones) in primary-key order; returns key -> (account id, balance). Call
    inside a transaction."""
    wanted = sorted(set(keys), key=lambda k: (k[0], k[1] or 0, k[2]))
    with bound_cursor() as users, bound_cursor() as cursor:
        with transaction_pipeline():  # both locks in one round trip
            users.execute(USERS_LOCK_SQL, users_lock_params(k[1] for k in wanted))
            cursor.execute(LOCK_SQL, key_columns(wanted))
        found = {(kind, uid, asset): (pk, bal) for pk, kind, uid, asset, bal in cursor.fetchall()}
        if len(found) < len(wanted):
            missing = [k for k in wanted if k not in found]
            cursor.execute(CREATE_SQL, key_columns(missing))
            # Locks of the accounts already held stay held; take them all again in pk order.
            cursor.execute(LOCK_SQL, key_columns(wanted))
            found = {(k, u, a): (pk, bal) for pk, k, u, a, bal in cursor.fetchall()}
    return found


def _check_balanced(lines: Sequence[Line]) -> None:
    per_asset: dict[str, Decimal] = defaultdict(Decimal)
    for (_kind, _user, asset), amount in lines:
        per_asset[asset] += amount
    unbalanced = {asset: total for asset, total in per_asset.items() if total}
    if unbalanced:
        raise LedgerUnbalanced(f"entry does not sum to zero: {unbalanced}")


def _shortfall(asset: str, needed: Decimal, balance: Decimal, kind: str, field: str | None):
    """The 400 InsufficientBalance for `needed` of `asset` against a user's `kind` balance."""
    from accounts.selectors import amount_str, asset_precisions_cached

    what = "available" if kind == CASH else "held"
    places = asset_precisions_cached(assets=[asset]).get(asset)

    def shown(amount: Decimal) -> str:  # at the asset's precision, as balances read ("50.20")
        text = amount_str(amount, places)
        return text if Decimal(text) == amount else format(amount.normalize(), "f")

    return trading_error(
        "InsufficientBalance",
        f"insufficient {asset}: {shown(needed)} needed, {shown(balance)} {what}",
        field=field,
        extra={"asset": asset},
    )


def _over_limit(asset: str, kind: str, balance: Decimal, field: str | None) -> ApiError:
    """The 400 BalanceLimitExceeded for an account whose balance would leave the ledger."""
    if kind == EXTERNAL:
        what = f"the {asset} deposited on the exchange would total {-balance:f}"
    else:
        what = f"the {asset} balance would be {balance:f}"
    return trading_error(
        "BalanceLimitExceeded",
        f"{what}; the ledger holds less than {BALANCE_LIMIT:f} of an asset",
        field=field,
        extra={"asset": asset},
    )


@ledger_arithmetic
def ledger_post(
    *,
    kind: str,
    lines: Sequence[Line],
    user=None,
    order_id: int | None = None,
    trade_id: int | None = None,
    memo: str = "",
    shortfall_field: str | None = None,
) -> LedgerEntry:
    """Write one balanced entry and move the cached balances.

    A user's cash or hold that would go negative raises `InsufficientBalance` (400, naming
    `shortfall_field`), and a balance that would reach `BALANCE_LIMIT` raises
    `BalanceLimitExceeded`, before anything is written; the caller's transaction rolls back.
    """
    lines = [(key, amount) for key, amount in lines if amount]
    _check_balanced(lines)
    # A user's available and held balances of an asset are reported together (balance events),
    # so both accounts are locked even when only one moves.
    user_assets = {(k[1], k[2]) for k, _ in lines if k[0] in LedgerAccount.USER_KINDS}
    siblings = [(kind, uid, asset) for uid, asset in user_assets for kind in (CASH, HOLD)]
    accounts = accounts_lock(keys=[key for key, _ in lines] + siblings)
    deltas: dict[AccountKey, Decimal] = defaultdict(Decimal)
    for key, amount in lines:
        deltas[key] += amount
    for key, delta in deltas.items():
        kind_, _user, asset = key
        balance = accounts[key][1]
        if kind_ in LedgerAccount.USER_KINDS and balance + delta < 0:
            raise _shortfall(asset, -delta, balance, kind_, shortfall_field)
        if abs(balance + delta) >= BALANCE_LIMIT:
            raise _over_limit(asset, kind_, balance + delta, shortfall_field)
    entry = LedgerEntry.objects.create(
        kind=kind, user=user, order_id=order_id, trade_id=trade_id, memo=memo
    )
    LedgerPosting.objects.bulk_create(
        LedgerPosting(entry=entry, account_id=accounts[key][0], asset=key[2], amount=amount)
        for key, amount in lines
    )
    with connection.cursor() as cursor:
        cursor.execute(
            BALANCES_ADD_SQL,
            [[accounts[key][0] for key in deltas], [deltas[key] for key in deltas]],
        )
        version = balance_version(cursor, account_ids=[accounts[key][0] for key in siblings])
    after = {key: accounts[key][1] + deltas.get(key, 0) for key in siblings}
    balance_events_publish_on_commit(
        balance_events(
            ((uid, asset, kind, after[kind, uid, asset]) for kind, uid, asset in siblings),
            version=version,
        )
    )
    return entry


@ledger_arithmetic
def funds_hold(
    *, user, asset: str, amount: Decimal, order_id: int | None, field: str | None = None
) -> LedgerEntry | None:
    """Move `amount` of the user's available `asset` into their hold for an order."""
    if not amount:
        return None
    return ledger_post(
        kind=LedgerEntry.Kind.HOLD,
        lines=[((CASH, user.pk, asset), -amount), ((HOLD, user.pk, asset), amount)],
        user=user,
        order_id=order_id,
        shortfall_field=field,
    )


@dataclass(frozen=True, slots=True)
class HoldRequest:
    """One order's hold for `funds_hold_many`: `amount` of `asset` moves from the user's
    available balance to their held balance; `field` is the request field a shortfall names."""

    user_id: int
    asset: str
    amount: Decimal
    order_id: int
    field: str | None = None


@ledger_arithmetic
def funds_hold_many(*, holds: Sequence[HoldRequest]) -> list[ApiError | None]:
    """Post the holds of many orders at once (the order entry batch), in the given order.

    One lock of every account involved (primary-key order, as `ledger_post`), then each hold is
    checked against what the holds before it left: one that does not fit gets its
    `InsufficientBalance` error in the returned list (at its index) and writes nothing; the rest
    are written set-based (one entry each, two postings, one balance update per account). Same
    entries and balance events as one `funds_hold` per order. Runs in the caller's transaction.
    """
    results: list[ApiError | None] = [None] * len(holds)
    wanted = [i for i, hold in enumerate(holds) if hold.amount]
    if not wanted:
        return results
    siblings = {(kind, holds[i].user_id, holds[i].asset) for i in wanted for kind in (CASH, HOLD)}
    accounts = accounts_lock(keys=siblings)
    balances = {key: accounts[key][1] for key in siblings}
    posted = []
    for i in wanted:
        hold = holds[i]
        cash, held = (CASH, hold.user_id, hold.asset), (HOLD, hold.user_id, hold.asset)
        if balances[cash] < hold.amount:
            results[i] = _shortfall(hold.asset, hold.amount, balances[cash], CASH, hold.field)
            continue
        balances[cash] -= hold.amount
        balances[held] += hold.amount
        posted.append(hold)
    if not posted:
        return results
    order_ids, account_ids, assets, amounts = [], [], [], []
    for hold in posted:
        for kind, amount in ((CASH, -hold.amount), (HOLD, hold.amount)):
            order_ids.append(hold.order_id)
            account_ids.append(accounts[(kind, hold.user_id, hold.asset)][0])
            assets.append(hold.asset)
            amounts.append(amount)
    moved = [key for key in siblings if balances[key] != accounts[key][1]]
    with bound_cursor() as cursor:
        cursor.execute(
            HOLDS_POST_SQL,
            {
                "kind": LedgerEntry.Kind.HOLD.value,
                "users": [hold.user_id for hold in posted],
                "orders": [hold.order_id for hold in posted],
                "posting_orders": order_ids,
                "posting_accounts": account_ids,
                "posting_assets": assets,
                "posting_amounts": amounts,
                "accounts": [accounts[key][0] for key in moved],
                "deltas": [balances[key] - accounts[key][1] for key in moved],
            },
        )
        version = balance_version(cursor, account_ids=[accounts[key][0] for key in siblings])
    balance_events_publish_on_commit(
        balance_events(
            ((uid, asset, kind, balances[(kind, uid, asset)]) for kind, uid, asset in siblings),
            version=version,
        )
    )
    return results


@transaction.atomic
@ledger_arithmetic
def funds_deposit(*, user, asset: str, amount: Decimal, memo: str = "") -> LedgerEntry:
    """Credit `amount` of `asset` from outside the exchange to the user's available balance."""
    return ledger_post(
        kind=LedgerEntry.Kind.DEPOSIT,
        lines=[((EXTERNAL, None, asset), -amount), ((CASH, user.pk, asset), amount)],
        user=user,
        memo=memo,
        shortfall_field="amount",
    )


@transaction.atomic
@ledger_arithmetic
def funds_withdraw(*, user, asset: str, amount: Decimal, memo: str = "") -> LedgerEntry:
    """Pay `amount` of the user's available `asset` out of the exchange."""
    return ledger_post(
        kind=LedgerEntry.Kind.WITHDRAWAL,
        lines=[((CASH, user.pk, asset), -amount), ((EXTERNAL, None, asset), amount)],
        user=user,
        memo=memo,
        shortfall_field="amount",
    )

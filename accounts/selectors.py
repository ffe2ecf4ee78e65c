"""Reads of the ledger: a user's balances and postings, and the ledger's own consistency checks."""

import time
from collections.abc import Iterable
from decimal import Decimal

from django.db import connection
from django.db.models import QuerySet

from accounts.models import LedgerAccount, LedgerPosting
from accounts.models.ledger import ledger_arithmetic
from exchange.models import Instrument, Trade


def asset_precisions() -> dict[str, int]:
    """Decimal places of every asset listed as the base or quote of an instrument."""
    precisions: dict[str, int] = {}
    rows = Instrument.objects.values_list(
        "base_asset", "base_precision", "quote_asset", "quote_precision"
    )
    for base, base_places, quote, quote_places in rows:
        precisions[base] = max(precisions.get(base, 0), base_places)
        precisions[quote] = max(precisions.get(quote, 0), quote_places)
    return precisions


ASSET_PRECISIONS_CACHE_SECONDS = 2.0
# (when read, precision per asset, assets asked for that no instrument listed when read)
_asset_precisions_cache: tuple[float, dict[str, int], set[str]] | None = None


def asset_precisions_cached(*, assets: Iterable[str] = ()) -> dict[str, int]:
    """`asset_precisions()`, kept per process for a moment (read on every balance event); read
    again at once for one of `assets` (those about to be shown) that it does not know, once: an
    asset listed meanwhile had its amounts shown unformatted ("0" held, "50.2" available)."""
    global _asset_precisions_cache
    now = time.monotonic()
    cached = _asset_precisions_cache
    if cached is None or now - cached[0] >= ASSET_PRECISIONS_CACHE_SECONDS:
        cached = _asset_precisions_cache = (now, asset_precisions(), set())
    unknown = {asset for asset in assets if asset not in cached[1] and asset not in cached[2]}
    if unknown:
        precisions = asset_precisions()
        cached = _asset_precisions_cache = (
            cached[0],
            precisions,
            cached[2] | {asset for asset in unknown if asset not in precisions},
        )
    return cached[1]


@ledger_arithmetic
def amount_str(amount: Decimal, places: int | None) -> str:
    """An amount as a decimal string at its asset's precision (exact when unknown)."""
    if places is None:
        return format(amount.normalize(), "f")
    return format(amount.quantize(Decimal(1).scaleb(-places)), "f")


@ledger_arithmetic
def balance_view(*, asset: str, available: Decimal, held: Decimal, places: dict) -> dict:
    """One asset's balance as the API shows it (REST and the balance events alike)."""
    precision = places.get(asset)
    return {
        "asset": asset,
        "available": amount_str(available, precision),
        "held": amount_str(held, precision),
        "total": amount_str(available + held, precision),
    }


@ledger_arithmetic
def balances_for_user(*, user) -> list[dict]:
    """Per asset the user holds or has held: available, held and total, at the asset's precision."""
    per_asset: dict[str, dict[str, Decimal]] = {}
    versions: dict[str, int] = {}
    # One query, so the versions are those of the balances read (the last event's version).
    accounts = LedgerAccount.objects.filter(user=user).values_list(
        "asset", "kind", "balance", "balance_version"
    )
    for asset, kind, balance, version in accounts:
        row = per_asset.setdefault(asset, {"available": Decimal(0), "held": Decimal(0)})
        row["available" if kind == LedgerAccount.Kind.CASH else "held"] += balance
        versions[asset] = max(versions.get(asset, 0), version)
    places = asset_precisions_cached(assets=per_asset)
    return [
        {
            **balance_view(
                asset=asset, available=row["available"], held=row["held"], places=places
            ),
            "version": versions[asset],
        }
        for asset, row in sorted(per_asset.items())
    ]


def ledger_postings_for_user(*, user, asset: str | None = None) -> QuerySet[LedgerPosting]:
    """The postings on the user's own accounts, newest first (paginate by id)."""
    postings = LedgerPosting.objects.filter(account__user=user).select_related("entry", "account")
    if asset:
        postings = postings.filter(asset=asset)
    return postings.order_by("-id")


def ledger_trade_sides(*, trade_ids) -> dict[int, tuple[str, int, int]]:
    """Trade id -> (base asset, buy order id, sell order id), for naming the order a trade
    posting belongs to: a trade's ledger entry covers both sides, and its `order_id` is the
    taker's."""
    rows = Trade.objects.filter(pk__in=set(trade_ids)).values_list(
        "pk", "instrument__base_asset", "taker_side", "taker_order_id", "maker_order_id"
    )
    return {
        pk: (base, taker, maker) if taker_side == "buy" else (base, maker, taker)
        for pk, base, taker_side, taker, maker in rows
    }


# Each ledger invariant, as the query of the rows that break it (one line each, in order, so
# that the operator running ledger_verify knows where to look): counted for the check, its
# first rows listed as examples.
LEDGER_INVARIANTS = {
    "entries that do not sum to zero per asset": """
        SELECT format('entry %%s %%s sums to %%s', entry_id, asset, sum(amount))
          FROM accounts_ledgerposting GROUP BY entry_id, asset HAVING sum(amount) <> 0
         ORDER BY entry_id, asset""",
    "assets whose accounts do not sum to zero": """
        SELECT format('%%s sums to %%s', asset, sum(balance)) FROM accounts_ledgeraccount
         GROUP BY asset HAVING sum(balance) <> 0 ORDER BY asset""",
    "accounts whose balance is not the sum of their postings": """
        SELECT format('account %%s (user %%s, %%s %%s): balance %%s, postings %%s', a.id,
                      coalesce(a.user_id::text, 'exchange'), a.kind, a.asset, a.balance,
                      coalesce(p.total, 0))
          FROM accounts_ledgeraccount a
          LEFT JOIN (SELECT account_id, sum(amount) AS total FROM accounts_ledgerposting
                      GROUP BY account_id) p ON p.account_id = a.id
         WHERE a.balance <> coalesce(p.total, 0) ORDER BY a.id""",
    "users' hold accounts that differ from their open orders' holds": """
        SELECT format('user %%s %%s: hold account %%s, open orders hold %%s',
                      coalesce(h.user_id, o.user_id), coalesce(h.asset, o.asset),
                      coalesce(h.balance, 0), coalesce(o.held, 0))
          FROM (SELECT user_id, asset, balance FROM accounts_ledgeraccount
                 WHERE kind = 'hold') h
          FULL JOIN (SELECT o.user_id,
                            CASE WHEN o.side = 'buy' THEN i.quote_asset
                                 ELSE i.base_asset END AS asset,
                            sum(o.hold_remaining) AS held
                       FROM exchange_order o
                       JOIN exchange_instrument i ON i.id = o.instrument_id
                      WHERE o.is_open
                      GROUP BY 1, 2) o
            ON o.user_id = h.user_id AND o.asset = h.asset
         WHERE coalesce(h.balance, 0) <> coalesce(o.held, 0)
         ORDER BY 1""",
    # Postings carry no foreign-key constraints (see LedgerPosting): checked here instead.
    "postings whose entry does not exist": """
        SELECT format('posting %%s (entry %%s)', p.id, p.entry_id) FROM accounts_ledgerposting p
         WHERE NOT EXISTS (SELECT 1 FROM accounts_ledgerentry e WHERE e.id = p.entry_id)
         ORDER BY p.id""",
    "postings whose account does not exist": """
        SELECT format('posting %%s (account %%s)', p.id, p.account_id)
          FROM accounts_ledgerposting p
         WHERE NOT EXISTS (SELECT 1 FROM accounts_ledgeraccount a WHERE a.id = p.account_id)
         ORDER BY p.id""",
    "closed orders still holding funds": """
        SELECT format('order %%s (%%s): hold_remaining %%s', id, status, hold_remaining)
          FROM exchange_order WHERE NOT is_open AND hold_remaining <> 0 ORDER BY id""",
}


def ledger_discrepancy_examples(*, name: str, limit: int = 5) -> list[str]:
    """The first `limit` rows that break the ledger invariant `name` (a key of
    LEDGER_INVARIANTS)."""
    with connection.cursor() as cursor:
        cursor.execute(f"{LEDGER_INVARIANTS[name]} LIMIT %s", [limit])
        return [row[0] for row in cursor.fetchall()]


def ledger_discrepancies() -> dict[str, int]:
    """Every ledger invariant that does not hold, with how many rows break it. Each check is
    one statement, so it sees one consistent snapshot even while batches commit."""
    found = {}
    with connection.cursor() as cursor:
        for name, sql in LEDGER_INVARIANTS.items():
            cursor.execute(f"SELECT count(*) FROM ({sql}) x", [])
            count = cursor.fetchone()[0]
            if count:
                found[name] = count
    return found

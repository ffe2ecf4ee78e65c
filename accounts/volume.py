"""30-day rolling traded volume per user: daily rows incremented by the matching worker's
batches and recomputed nightly from the trades.

The window of an instant `now` is the 30 UTC days ending with now's UTC day, today included:
`[today - 29, today]`. Volume is in `VOLUME_QUOTE_ASSET` (USD): the notional of the trades of
instruments quoted in it (an instrument quoted in another asset counts for nothing: its amounts
are in another unit, and without an exchange rate, a thousand of a cheap currency had bought
a USD tier); each trade counts for its maker and for its taker. A self-trade (maker and taker
the same user, possible with self-trade prevention `none`) counts for nobody: trading with
oneself must not buy a cheaper tier.
"""

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Sequence
from decimal import Decimal

from django.db import connection, transaction
from django.db.models import Sum

from accounts.models import DailyVolume
from exchange.models import Trade

WINDOW_DAYS = 30
# The currency of the fee tiers' volume thresholds.
VOLUME_QUOTE_ASSET = "USD"
# Advisory lock key of the nightly recompute (an arbitrary constant of this module).
RECOMPUTE_LOCK_KEY = 0x5F0E_7A11

DAILY_VOLUME_ADD_SQL = """
INSERT INTO accounts_dailyvolume (user_id, day, quote_volume, updated_at)
SELECT r.user_id, r.day, r.quote_volume, clock_timestamp()
  FROM unnest(%s::bigint[], %s::date[], %s::numeric[]) AS r(user_id, day, quote_volume)
 ORDER BY r.user_id, r.day
    ON CONFLICT (user_id, day) DO UPDATE
   SET quote_volume = accounts_dailyvolume.quote_volume + EXCLUDED.quote_volume,
       updated_at = EXCLUDED.updated_at
"""

# The nightly correction: each user's volume per day from the trades (maker and taker legs).
DAILY_VOLUME_FROM_TRADES_SQL = """
WITH window_trades AS (
    SELECT t.maker_user_id, t.taker_user_id, (t.executed_at AT TIME ZONE 'UTC')::date AS day,
           t.quote_quantity
      FROM exchange_trade t
      JOIN exchange_instrument i ON i.id = t.instrument_id
     WHERE t.id >= %(min_id)s AND t.executed_at >= %(start)s AND t.executed_at < %(end)s
       AND t.maker_user_id <> t.taker_user_id AND i.quote_asset = %(quote_asset)s
), legs AS (
    SELECT maker_user_id AS user_id, day, quote_quantity FROM window_trades
    UNION ALL
    SELECT taker_user_id, day, quote_quantity FROM window_trades
)
SELECT user_id, day, sum(quote_quantity) FROM legs GROUP BY user_id, day ORDER BY user_id, day
"""


def window_days(now: dt.datetime) -> tuple[dt.date, dt.date]:
    """(first, last) UTC day of the 30-day window at `now`, both included."""
    today = now.astimezone(dt.UTC).date()
    return today - dt.timedelta(days=WINDOW_DAYS - 1), today


def daily_volume_rows(
    fills: Iterable[tuple[int, int, dt.date, Decimal]],
) -> list[tuple[int, dt.date, Decimal]]:
    """Aggregate trades given as (maker_user_id, taker_user_id, day, quote_amount) into
    `daily_volume_add` rows: one per (user, day), both legs counted, self-trades skipped,
    sorted."""
    totals: dict[tuple[int, dt.date], Decimal] = defaultdict(Decimal)
    for maker_id, taker_id, day, amount in fills:
        if maker_id == taker_id:
            continue
        totals[(maker_id, day)] += amount
        totals[(taker_id, day)] += amount
    return [(user_id, day, amount) for (user_id, day), amount in sorted(totals.items())]


def daily_volume_add_params(rows: Sequence[tuple[int, dt.date, Decimal]]) -> list[list] | None:
    """The parameters of `DAILY_VOLUME_ADD_SQL` for `rows` (summed per (user, day), sorted, zero
    amounts dropped), or None when there is nothing to add. For a caller folding the statement
    into a multi-statement round trip of its own."""
    totals: dict[tuple[int, dt.date], Decimal] = defaultdict(Decimal)
    for user_id, day, amount in rows:
        totals[(user_id, day)] += amount
    keys = sorted(k for k, amount in totals.items() if amount)
    if not keys:
        return None
    return [[k[0] for k in keys], [k[1] for k in keys], [totals[k] for k in keys]]


def daily_volume_add(*, cursor, rows: Sequence[tuple[int, dt.date, Decimal]]) -> int:
    """Add `rows` of (user_id, UTC day, quote amount) to the daily volumes in ONE statement, in
    the caller's transaction (the matching worker's batch); returns the number of rows written.

    `cursor` is a psycopg (or Django) cursor on Django's connection. Rows are summed per
    (user, day) and written in (user_id, day) order, so two shard workers updating the same
    users lock their rows in the same order and never deadlock.
    """
    params = daily_volume_add_params(rows)
    if params is None:
        return 0
    cursor.execute(DAILY_VOLUME_ADD_SQL, params)
    return len(params[0])


def trade_id_lower_bound(at: dt.datetime) -> int:
    """A trade id at or below the first trade executed at `at` or later, found by bisecting the
    primary key (ids follow execution time closely: each shard stamps then commits its batch),
    so the nightly recompute reads its window without scanning the whole trade history."""
    margin = dt.timedelta(hours=1)
    target = at - margin
    first = Trade.objects.order_by("id").values_list("id", "executed_at").first()
    last = Trade.objects.order_by("-id").values_list("id").first()
    if first is None or first[1] >= target:
        return 0
    lo, hi = first[0], last[0] + 1  # executed_at(lo) < target; answer in (lo, hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        probe = (
            Trade.objects.filter(id__gte=mid, id__lt=hi)
            .order_by("id")
            .values_list("id", "executed_at")
            .first()
        )
        if probe is None or probe[1] >= target:
            hi = mid
        else:
            lo = probe[0]
    return lo


@transaction.atomic
def daily_volume_recompute(*, now: dt.datetime, days: int = WINDOW_DAYS) -> int:
    """Rewrite the daily volumes of the `days` completed UTC days before `now` from the trades
    (the incremental counts must agree; this corrects any drift). Today's rows are left to the
    worker, whose batches are still adding to them. Returns the number of rows written."""
    today = now.astimezone(dt.UTC).date()
    first_day = today - dt.timedelta(days=days)
    start = dt.datetime.combine(first_day, dt.time(), tzinfo=dt.UTC)
    end = dt.datetime.combine(today, dt.time(), tzinfo=dt.UTC)
    with connection.cursor() as cursor:
        cursor.execute(
            DAILY_VOLUME_FROM_TRADES_SQL,
            {
                "min_id": trade_id_lower_bound(start),
                "start": start,
                "end": end,
                "quote_asset": VOLUME_QUOTE_ASSET,
            },
        )
        rows = cursor.fetchall()
        # Two overlapping runs would each delete and insert the same rows: one at a time.
        cursor.execute("SET LOCAL lock_timeout = 0")  # however long the other run takes
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [RECOMPUTE_LOCK_KEY])
        cursor.execute(
            "DELETE FROM accounts_dailyvolume WHERE day >= %s AND day < %s", [first_day, today]
        )
        if rows:
            cursor.execute(
                "INSERT INTO accounts_dailyvolume (user_id, day, quote_volume, updated_at) "
                "SELECT u, d, v, %s FROM unnest(%s::bigint[], %s::date[], %s::numeric[]) "
                "AS r(u, d, v) WHERE v > 0",
                [now, [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]],
            )
    return len(rows)


def volume_30d(*, user_id: int, now: dt.datetime) -> Decimal:
    """The user's volume over the window at `now` (one indexed query)."""
    first, last = window_days(now)
    total = DailyVolume.objects.filter(user_id=user_id, day__gte=first, day__lte=last).aggregate(
        total=Sum("quote_volume")
    )["total"]
    return total or Decimal(0)


def volumes_30d(*, now: dt.datetime, user_ids: Sequence[int] | None = None) -> dict[int, Decimal]:
    """Window volume per user (every user with volume in the window, or only `user_ids`)."""
    first, last = window_days(now)
    rows = DailyVolume.objects.filter(day__gte=first, day__lte=last)
    if user_ids is not None:
        rows = rows.filter(user_id__in=user_ids)
    return {
        row["user_id"]: row["total"]
        for row in rows.values("user_id").annotate(total=Sum("quote_volume"))
    }


def daily_volumes(*, user_id: int, now: dt.datetime) -> list[tuple[dt.date, Decimal]]:
    """(day, volume) for each day of the window at `now`, oldest first, zero-filled."""
    first, last = window_days(now)
    stored = dict(
        DailyVolume.objects.filter(user_id=user_id, day__gte=first, day__lte=last).values_list(
            "day", "quote_volume"
        )
    )
    return [
        (day, stored.get(day, Decimal(0)))
        for day in (first + dt.timedelta(days=i) for i in range(WINDOW_DAYS))
    ]

"""Quote-presence uptime of market makers: the share of sampled time a user quoted two-sided
near the mid.

Every `QUOTE_PRESENCE_SAMPLE_SECONDS` the sampler looks at each instrument open for trading
(status trading, inside its session). For an instrument whose book (the snapshot the shard
worker keeps in Redis) has both a best bid and a best ask, the mid is their average and the
band is the mid +/- `QUOTE_PRESENCE_MAX_DISTANCE_BPS`. A user is *present* at a sample when, on
at least one instrument, they have both a resting bid and a resting ask priced inside the band
(any open size; several instruments count once). A user is *quoting* at a sample when they have
any resting limit order on an open instrument.

Uptime over a window = samples present / samples taken, in %, where *samples taken* counts every
sample at which some instrument was open (the exchange-wide denominator, the same for everyone:
time a maker is away from the book counts against them). A book without a two-sided mid offers
no presence at that sample. No sample is taken while Redis is out of reach (no book can be
read then).
"""

import datetime as dt
from dataclasses import dataclass
from decimal import ROUND_DOWN, Decimal

from django.db import connection, transaction
from django.db.models import Sum

from accounts.models import QuotePresence, QuotePresenceSample
from accounts.volume import window_days
from exchange.api_errors import ApiError
from exchange.models import Instrument, Order
from exchange.order_rules import check_session
from exchange.selectors import book_snapshot_to_show

RESTING_STATUSES = (Order.Status.NEW, Order.Status.PARTIALLY_FILLED, Order.Status.TRIGGERED)

# Counts the sample, unless one was taken less than `min_interval` ago (an overlapping or
# duplicated task run): then no row comes back and the sample is skipped. The row lock also
# serializes concurrent samplers.
SAMPLE_COUNT_SQL = """
INSERT INTO accounts_quotepresencesample AS s (day, samples, last_sampled_at)
VALUES (%(day)s, 1, %(now)s)
ON CONFLICT (day) DO UPDATE SET samples = s.samples + 1, last_sampled_at = EXCLUDED.last_sampled_at
 WHERE s.last_sampled_at IS NULL OR s.last_sampled_at <= %(not_before)s
RETURNING samples
"""

# Per user resting on the sampled instruments: whether two-sided inside a band on any of them.
PRESENCE_SQL = """
WITH bands AS (
    SELECT * FROM unnest(%(ids)s::bigint[], %(lo)s::numeric[], %(hi)s::numeric[])
        AS b(instrument_id, lo, hi)
), per_book AS (
    SELECT o.user_id,
           bool_or(o.side = 'buy' AND o.price BETWEEN b.lo AND b.hi)
           AND bool_or(o.side = 'sell' AND o.price BETWEEN b.lo AND b.hi) AS two_sided
      FROM exchange_order o
      LEFT JOIN bands b ON b.instrument_id = o.instrument_id
     WHERE o.is_open AND o.instrument_id = ANY(%(open_ids)s::bigint[])
       AND o.status = ANY(%(statuses)s::text[]) AND o.price IS NOT NULL
       AND o.remaining_quantity > 0
     GROUP BY o.user_id, o.instrument_id
)
SELECT user_id, coalesce(bool_or(two_sided), false) FROM per_book GROUP BY user_id
 ORDER BY user_id
"""

COUNTERS_ADD_SQL = """
INSERT INTO accounts_quotepresence AS q (user_id, day, samples_quoting, samples_present)
SELECT r.user_id, %s, 1, r.present::int
  FROM unnest(%s::bigint[], %s::boolean[]) AS r(user_id, present)
 ORDER BY r.user_id
    ON CONFLICT (user_id, day) DO UPDATE
   SET samples_quoting = q.samples_quoting + 1,
       samples_present = q.samples_present + EXCLUDED.samples_present
"""


@dataclass(frozen=True)
class PresenceSample:
    day: dt.date
    instruments: int
    quoting: list[int]
    present: list[int]


def _open_for_trading(instrument: Instrument, now: dt.datetime) -> bool:
    try:
        check_session(instrument, now)
    except ApiError:
        return False
    return True


def _band(symbol: str, distance_bps: int) -> tuple[Decimal, Decimal] | None:
    """The band around the book's mid (None: no two-sided mid); raises ApiError when Redis,
    which holds the book, is out of reach."""
    snapshot = book_snapshot_to_show(symbol)
    if not snapshot or not snapshot["bids"] or not snapshot["asks"]:
        return None
    mid = (Decimal(snapshot["bids"][0][0]) + Decimal(snapshot["asks"][0][0])) / 2
    distance = mid * distance_bps / 10_000
    return mid - distance, mid + distance


def quote_presence_sample(
    *, now: dt.datetime, max_distance_bps: int, min_interval: dt.timedelta
) -> PresenceSample | None:
    """Take one sample at `now`: count it for the day and count every resting user as quoting
    and, if two-sided inside the band, as present. None when no instrument is open for trading
    or a sample was taken less than `min_interval` before."""
    instruments = [
        i
        for i in Instrument.objects.filter(status=Instrument.Status.TRADING)
        if _open_for_trading(i, now)
    ]
    if not instruments:
        return None
    try:
        bands = {i.pk: band for i in instruments if (band := _band(i.symbol, max_distance_bps))}
    except ApiError:
        # Without the books no one can be found present: a sample counted then had counted
        # against every maker's uptime for the exchange's own outage.
        return None
    day = now.astimezone(dt.UTC).date()
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(SAMPLE_COUNT_SQL, {"day": day, "now": now, "not_before": now - min_interval})
        if cursor.fetchone() is None:
            return None
        cursor.execute(
            PRESENCE_SQL,
            {
                "ids": list(bands),
                "lo": [lo for lo, _ in bands.values()],
                "hi": [hi for _, hi in bands.values()],
                "open_ids": [i.pk for i in instruments],
                "statuses": list(RESTING_STATUSES),
            },
        )
        rows = cursor.fetchall()
        if rows:
            cursor.execute(
                COUNTERS_ADD_SQL, [day, [r[0] for r in rows], [bool(r[1]) for r in rows]]
            )
    return PresenceSample(
        day=day,
        instruments=len(instruments),
        quoting=[r[0] for r in rows],
        present=[r[0] for r in rows if r[1]],
    )


@dataclass(frozen=True)
class Uptime:
    samples: int
    samples_quoting: int
    samples_present: int

    @property
    def pct(self) -> Decimal | None:
        """Present / samples taken in %, rounded down to 0.01 (None: nothing was sampled)."""
        if not self.samples:
            return None
        return (Decimal(100) * self.samples_present / self.samples).quantize(
            Decimal("0.01"), rounding=ROUND_DOWN
        )


def _samples_by_day(first: dt.date, last: dt.date) -> dict[dt.date, int]:
    return dict(
        QuotePresenceSample.objects.filter(day__gte=first, day__lte=last).values_list(
            "day", "samples"
        )
    )


def uptime_30d(*, user_id: int, now: dt.datetime) -> Uptime:
    """The user's quote presence over the volume window at `now`."""
    first, last = window_days(now)
    samples = sum(_samples_by_day(first, last).values())
    mine = QuotePresence.objects.filter(user_id=user_id, day__gte=first, day__lte=last).aggregate(
        quoting=Sum("samples_quoting"), present=Sum("samples_present")
    )
    return Uptime(samples, mine["quoting"] or 0, mine["present"] or 0)


def uptimes_30d(*, now: dt.datetime, user_ids=None) -> dict[int, Uptime]:
    """Quote presence over the window per user (every user with counters, or only `user_ids`);
    a user without counters is absent (their uptime is 0 when any sample was taken)."""
    first, last = window_days(now)
    samples = sum(_samples_by_day(first, last).values())
    rows = QuotePresence.objects.filter(day__gte=first, day__lte=last)
    if user_ids is not None:
        rows = rows.filter(user_id__in=user_ids)
    return {
        row["user_id"]: Uptime(samples, row["quoting"], row["present"])
        for row in rows.values("user_id").annotate(
            quoting=Sum("samples_quoting"), present=Sum("samples_present")
        )
    }


def window_samples(*, now: dt.datetime) -> int:
    """Samples taken over the window at `now`: the uptime of a user without counters is 0 %
    of this (or unknown when it is 0)."""
    first, last = window_days(now)
    return sum(_samples_by_day(first, last).values())


def daily_presence(*, user_id: int, now: dt.datetime) -> dict[dt.date, tuple[int, int, int]]:
    """day -> (samples taken, samples quoting, samples present) over the window at `now`."""
    first, last = window_days(now)
    samples = _samples_by_day(first, last)
    mine = {
        day: (quoting, present)
        for day, quoting, present in QuotePresence.objects.filter(
            user_id=user_id, day__gte=first, day__lte=last
        ).values_list("day", "samples_quoting", "samples_present")
    }
    return {day: (samples.get(day, 0), *mine.get(day, (0, 0))) for day in set(samples) | set(mine)}

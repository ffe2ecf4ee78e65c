"""Fee-tier assignment from the 30-day volume and quote-presence uptime, and the rates frozen on
each new order.

A user reaches a tier when their window volume is at least its `min_volume_30d` and, when the
tier sets `min_uptime_pct`, their uptime is at least that. Tiers are ranked by minimum volume,
then by minimum uptime (a requirement ranks above none); a user gets the highest-ranked tier
they reach. A user without an assignment row (never assessed) pays the base tier: the one a
user with no volume and no uptime reaches.

When assessments run (see accounts/tasks.py): nightly for every user with volume, presence or an
assignment (after the daily volumes are recomputed from the trades), and every
`FEE_TIER_REFRESH_SECONDS` for the users whose volume moved since their last assessment, so a
boundary crossed during the day takes effect within about a minute. Tier changes are audited
(`fee.tier_changed`); the new rates apply to orders placed afterwards (rates are frozen on each
order).
"""

import datetime as dt
import time
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings
from django.db import connection, transaction

from accounts.models import DailyVolume, FeeTier, FeeTierAssignment, QuotePresence
from accounts.models.fee_tiers import PPM_PER_PERCENT
from accounts.quote_presence import Uptime, uptime_30d, uptimes_30d, window_samples
from accounts.volume import volume_30d, volumes_30d, window_days
from audit.events import AuditEvent
from audit.services import AuditEntry, audit_entry, audit_record_many

# Rates when no tier exists at all (the shipped tiers were deleted): the Retail schedule.
FALLBACK_MAKER_FEE_PPM = 1_000
FALLBACK_TAKER_FEE_PPM = 2_000
# Users assessed per transaction by a full run.
ASSESS_CHUNK = 500
# Serializes assessment runs (nightly and refresh), an arbitrary constant of this module.
ASSESS_LOCK_KEY = 0x5F0E_7A12


def tier_rank(tier: FeeTier) -> tuple[Decimal, bool, Decimal]:
    """Higher volume first, then an uptime requirement over none, then the higher uptime."""
    return tier.min_volume_30d, tier.min_uptime_pct is not None, tier.min_uptime_pct or Decimal(0)


def tiers_ranked() -> list[FeeTier]:
    """Every tier, lowest first."""
    return sorted(FeeTier.objects.all(), key=tier_rank)


def tier_for(
    tiers: Sequence[FeeTier], *, volume_30d: Decimal, uptime_pct: Decimal | None
) -> FeeTier | None:
    """The highest-ranked of `tiers` (ranked, lowest first) that the volume and uptime reach."""
    reached = None
    for tier in tiers:
        if tier.qualifies(volume_30d=volume_30d, uptime_pct=uptime_pct):
            reached = tier
    return reached


def base_tier(tiers: Sequence[FeeTier]) -> FeeTier | None:
    return tier_for(tiers, volume_30d=Decimal(0), uptime_pct=None)


def _pct(ppm: int) -> Decimal:
    """A rate in parts per million as a percentage, to a tier's four places."""
    return (Decimal(ppm) / PPM_PER_PERCENT).quantize(Decimal("0.0001"))


def _uptime_pct(uptime: Uptime | None, samples: int) -> Decimal | None:
    if uptime is not None:
        return uptime.pct
    return Decimal("0.00") if samples else None


def _assess_chunk(*, user_ids: list[int], tiers: list[FeeTier], now: dt.datetime) -> int:
    """Assess `user_ids` (sorted) in one transaction; returns how many changed tier."""
    base = base_tier(tiers)
    with transaction.atomic():
        with connection.cursor() as cursor:
            # Waits for a running assessment however long it takes (not DB_LOCK_TIMEOUT_MS).
            cursor.execute("SET LOCAL lock_timeout = 0")
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [ASSESS_LOCK_KEY])
        volumes = volumes_30d(now=now, user_ids=user_ids)
        uptimes = uptimes_30d(now=now, user_ids=user_ids)
        samples = window_samples(now=now)
        current = {
            a.user_id: a
            for a in FeeTierAssignment.objects.select_for_update()
            .filter(user_id__in=user_ids)
            .order_by("user_id")
        }
        created, updated, dropped, audits = [], [], [], []
        window = [str(d) for d in window_days(now)]

        def tier_changed(user_id, from_tier, to_tier, rates, volume, uptime) -> AuditEntry:
            """The fee.tier_changed record of a user's move (`rates`: maker, taker in %)."""
            return audit_entry(
                event_type=AuditEvent.FEE_TIER_CHANGED,
                user_id=user_id,
                payload={
                    "from_tier": from_tier,
                    "to_tier": to_tier,
                    "maker_fee_pct": rates[0],
                    "taker_fee_pct": rates[1],
                    "volume_30d": volume,
                    "uptime_pct": uptime,
                    "window": window,
                    "assessed_at": now,
                },
            )

        for user_id in user_ids:
            volume = volumes.get(user_id, Decimal(0))
            uptime = _uptime_pct(uptimes.get(user_id), samples)
            tier = tier_for(tiers, volume_30d=volume, uptime_pct=uptime)
            row = current.get(user_id)
            if tier is None:
                # No tier reaches them (staff raised every minimum above 0): they pay the
                # fallback schedule, as a user never assessed does. They had kept the tier
                # they last reached, its rebate too, for good.
                if row is not None:
                    dropped.append(row.pk)
                    rates = (_pct(FALLBACK_MAKER_FEE_PPM), _pct(FALLBACK_TAKER_FEE_PPM))
                    audits.append(tier_changed(user_id, row.tier.name, None, rates, volume, uptime))
                continue
            previous = row.tier if row is not None else base
            if row is None:
                row = FeeTierAssignment(user_id=user_id, tier=tier, assigned_at=now)
                created.append(row)
            else:
                updated.append(row)
            row.volume_30d, row.uptime_pct, row.assessed_at = volume, uptime, now
            if previous is None or previous.pk != tier.pk:
                row.tier, row.assigned_at = tier, now
                rates = (tier.maker_fee_pct, tier.taker_fee_pct)
                audits.append(
                    tier_changed(
                        user_id,
                        previous.name if previous else None,
                        tier.name,
                        rates,
                        volume,
                        uptime,
                    )
                )
        FeeTierAssignment.objects.filter(pk__in=dropped).delete()
        FeeTierAssignment.objects.bulk_create(created)
        FeeTierAssignment.objects.bulk_update(
            updated, ["tier", "volume_30d", "uptime_pct", "assigned_at", "assessed_at"]
        )
        audit_record_many(records=audits)
    return len(audits)


def fee_tiers_assess(*, now: dt.datetime, user_ids: Sequence[int] | None = None) -> int:
    """Assess `user_ids`, or everyone with volume or presence in the window or an assignment,
    in chunks of `ASSESS_CHUNK` users per transaction; returns how many changed tier."""
    tiers = tiers_ranked()
    if not tiers:
        return 0
    if user_ids is None:
        first, last = window_days(now)
        everyone = set(
            DailyVolume.objects.filter(day__gte=first, day__lte=last).values_list(
                "user_id", flat=True
            )
        )
        everyone |= set(
            QuotePresence.objects.filter(day__gte=first, day__lte=last).values_list(
                "user_id", flat=True
            )
        )
        everyone |= set(FeeTierAssignment.objects.values_list("user_id", flat=True))
        user_ids = everyone
    ordered = sorted(set(user_ids))
    return sum(
        _assess_chunk(user_ids=ordered[i : i + ASSESS_CHUNK], tiers=tiers, now=now)
        for i in range(0, len(ordered), ASSESS_CHUNK)
    )


def fee_tier_assign(*, user, now: dt.datetime) -> FeeTierAssignment | None:
    """Assess one user at `now` and return their assignment (None when no tier exists)."""
    fee_tiers_assess(now=now, user_ids=[user.pk])
    return FeeTierAssignment.objects.select_related("tier").filter(user_id=user.pk).first()


REFRESH_SQL = """
SELECT DISTINCT v.user_id
  FROM accounts_dailyvolume v
  LEFT JOIN accounts_feetierassignment a ON a.user_id = v.user_id
 WHERE v.day >= %s AND (a.user_id IS NULL OR v.updated_at > a.assessed_at - %s)
"""


def fee_tiers_refresh(*, now: dt.datetime) -> int:
    """Re-assess the users whose volume of today or yesterday moved since (shortly before) their
    last assessment; returns how many changed tier. The margin covers a worker batch that
    stamped its rows before an assessment but committed after it."""
    today = now.astimezone(dt.UTC).date()
    margin = dt.timedelta(seconds=settings.FEE_TIER_REFRESH_MARGIN_SECONDS)
    with connection.cursor() as cursor:
        cursor.execute(REFRESH_SQL, [today - dt.timedelta(days=1), margin])
        user_ids = [row[0] for row in cursor.fetchall()]
    if not user_ids:
        return 0
    return fee_tiers_assess(now=now, user_ids=user_ids)


# ---- rates on the order path -----------------------------------------------------------------

_tiers_cache: tuple[float, dict[int, FeeTier], FeeTier | None] | None = None
# user id -> (when read, tier id, 30-day volume, uptime %, assessed at) of their assignment
# (all None: never assessed).
_user_tier_cache: dict[int, tuple] = {}
_USER_CACHE_MAX = 50_000
_UNASSESSED = (None, None, None, None)


@dataclass(frozen=True, slots=True)
class FeeRates:
    """The rates frozen on a new order (ppm) and what they were chosen from: the user's tier
    (`basis` "assigned"; "base" when never assessed, or assessed to a tier this process does not
    know yet; "fallback" when no tier exists), with the 30-day volume and uptime of the
    assessment that assigned it (None when never assessed)."""

    maker_fee_ppm: int
    taker_fee_ppm: int
    tier: FeeTier | None
    basis: str
    volume_30d: Decimal | None
    uptime_pct: Decimal | None
    assessed_at: dt.datetime | None

    def audit_payload(self) -> dict:
        """The `fee.calculated` record's payload (rates in %, as `fee.tier_changed` gives them)."""
        tier = self.tier
        return {
            "tier": tier.name if tier is not None else None,
            "tier_id": tier.pk if tier is not None else None,
            "basis": self.basis,
            "maker_fee_pct": Decimal(self.maker_fee_ppm).scaleb(-4),
            "taker_fee_pct": Decimal(self.taker_fee_ppm).scaleb(-4),
            "volume_30d": self.volume_30d,
            "uptime_pct": self.uptime_pct,
            "assessed_at": self.assessed_at,
        }


def fee_rates_cache_clear() -> None:
    """Forget the cached tiers and users' tiers (tests; the cache expires on its own)."""
    global _tiers_cache
    _tiers_cache = None
    _user_tier_cache.clear()


def _tiers_cached(now: float, ttl: float) -> tuple[dict[int, FeeTier], FeeTier | None]:
    global _tiers_cache
    if _tiers_cache is None or now - _tiers_cache[0] >= ttl:
        tiers = tiers_ranked()
        _tiers_cache = (now, {t.pk: t for t in tiers}, base_tier(tiers))
    return _tiers_cache[1], _tiers_cache[2]


def user_fee_tier_rates(*, user_id: int) -> FeeRates:
    """The rates of the user's tier and where they come from, cached per process for
    `FEE_RATES_CACHE_SECONDS` (an assignment or tier edit applies to new orders within that)."""
    ttl = settings.FEE_RATES_CACHE_SECONDS
    now = time.monotonic()
    tiers, base = _tiers_cached(now, ttl)
    cached = _user_tier_cache.get(user_id)
    if cached is None or now - cached[0] >= ttl:
        if len(_user_tier_cache) >= _USER_CACHE_MAX:
            _user_tier_cache.clear()
        assignment = (
            FeeTierAssignment.objects.filter(user_id=user_id)
            .values_list("tier_id", "volume_30d", "uptime_pct", "assessed_at")
            .first()
        )
        cached = (now, *(assignment or _UNASSESSED))
        _user_tier_cache[user_id] = cached
    _, tier_id, volume, uptime, assessed_at = cached
    tier = tiers.get(tier_id) if tier_id is not None else None
    basis = "assigned"
    if tier is None:
        # Not assessed yet, or assigned a tier created after the tiers were cached.
        tier, basis = base, "base"
    if tier is None:
        return FeeRates(FALLBACK_MAKER_FEE_PPM, FALLBACK_TAKER_FEE_PPM, None, "fallback",
                        volume, uptime, assessed_at)  # fmt: skip
    return FeeRates(
        tier.maker_fee_ppm, tier.taker_fee_ppm, tier, basis, volume, uptime, assessed_at
    )


def user_fee_rates(*, user_id: int) -> tuple[int, int]:
    """(maker_ppm, taker_ppm) of the user's tier (`user_fee_tier_rates`)."""
    rates = user_fee_tier_rates(user_id=user_id)
    return rates.maker_fee_ppm, rates.taker_fee_ppm


# ---- reads for the API -------------------------------------------------------------------------


@dataclass(frozen=True)
class FeeTierStatus:
    tier: FeeTier | None
    assignment: FeeTierAssignment | None
    volume_30d: Decimal
    uptime: Uptime
    next_tier: FeeTier | None
    window: tuple[dt.date, dt.date]


def fee_tier_status(*, user_id: int, now: dt.datetime) -> FeeTierStatus:
    """The user's current tier (assigned, else base), their live window volume and uptime, and
    the next tier up."""
    tiers = tiers_ranked()
    assignment = FeeTierAssignment.objects.select_related("tier").filter(user_id=user_id).first()
    tier = assignment.tier if assignment is not None else base_tier(tiers)
    next_tier = None
    if tier is not None:
        above = [t for t in tiers if tier_rank(t) > tier_rank(tier)]
        next_tier = above[0] if above else None
    return FeeTierStatus(
        tier=tier,
        assignment=assignment,
        volume_30d=volume_30d(user_id=user_id, now=now),
        uptime=uptime_30d(user_id=user_id, now=now),
        next_tier=next_tier,
        window=window_days(now),
    )

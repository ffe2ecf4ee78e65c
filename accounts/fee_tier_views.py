"""REST endpoints of fee tiers and volume (/api/v1/users/{user_id}/...): thin adapters over the
fee-tier selectors. A user reads only their own figures; another user's id is a 404 (staff read
everyone's in the admin)."""

from decimal import ROUND_DOWN, ROUND_UP, Decimal

from django.conf import settings
from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.exceptions import NotFound
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.fee_tiers import fee_tier_status, user_fee_rates
from accounts.models import FeeTier
from accounts.quote_presence import daily_presence, uptime_30d
from accounts.volume import VOLUME_QUOTE_ASSET, daily_volumes, window_days
from exchange.query_params import KnownQueryParameters

# Volumes and thresholds are USD (only instruments quoted in USD count), shown in cents.
CENT = Decimal("0.01")


def usd(value: Decimal, rounding: str = ROUND_DOWN) -> str:
    """USD in cents: a volume rounds down, what a tier needs rounds up. A USD instrument quoted
    to finer than a cent trades sub-cent notionals, and rounded half to even 999,999.995 read
    1000000.00 traded with 0.00 still needed, by a user the tier refused."""
    return f"{value.quantize(CENT, rounding=rounding):f}"


class TierSerializer(serializers.Serializer):
    name = serializers.CharField()
    maker_fee_pct = serializers.CharField(help_text="% of the notional; negative = rebate.")
    taker_fee_pct = serializers.CharField()
    maker_fee_ppm = serializers.IntegerField()
    taker_fee_ppm = serializers.IntegerField()
    min_volume_30d = serializers.CharField()
    min_uptime_pct = serializers.CharField(allow_null=True)


class NextTierSerializer(TierSerializer):
    volume_needed = serializers.CharField(help_text="30-day volume still missing (0 if none).")
    uptime_needed_pct = serializers.CharField(
        allow_null=True, help_text="Uptime points still missing (null: the tier sets none)."
    )


class FeeTierSerializer(serializers.Serializer):
    user_id = serializers.IntegerField()
    tier = TierSerializer(allow_null=True, help_text="Null only when no tier is configured.")
    maker_fee_ppm = serializers.IntegerField(
        help_text="The maker rate a new order of yours gets now (negative: a rebate), in ppm."
    )
    taker_fee_ppm = serializers.IntegerField(help_text="The taker rate a new order gets now.")
    quote_asset = serializers.CharField()
    volume_30d = serializers.CharField(help_text="Volume of the window so far (live).")
    uptime_pct = serializers.CharField(allow_null=True, help_text="Null: nothing sampled.")
    window_start = serializers.DateField()
    window_end = serializers.DateField()
    assigned_at = serializers.DateTimeField(
        allow_null=True, help_text="When you moved to this tier (null: never assessed)."
    )
    assessed_at = serializers.DateTimeField(allow_null=True)
    next_tier = NextTierSerializer(allow_null=True)


class UptimeSerializer(serializers.Serializer):
    samples = serializers.IntegerField(help_text="Samples taken exchange-wide in the window.")
    samples_quoting = serializers.IntegerField(help_text="Samples you had an order resting.")
    samples_present = serializers.IntegerField(
        help_text="Samples you quoted a bid and an ask near the mid of some book."
    )
    uptime_pct = serializers.CharField(allow_null=True)
    max_distance_bps = serializers.IntegerField()


class VolumeDaySerializer(serializers.Serializer):
    day = serializers.DateField()
    quote_volume = serializers.CharField()
    samples = serializers.IntegerField()
    samples_quoting = serializers.IntegerField()
    samples_present = serializers.IntegerField()


class VolumeStatsSerializer(serializers.Serializer):
    user_id = serializers.IntegerField()
    quote_asset = serializers.CharField()
    window_start = serializers.DateField()
    window_end = serializers.DateField()
    volume_30d = serializers.CharField()
    uptime = UptimeSerializer()
    days = VolumeDaySerializer(many=True, help_text="Each UTC day of the window, oldest first.")


def _tier(tier: FeeTier) -> dict:
    return {
        "name": tier.name,
        "maker_fee_pct": format(tier.maker_fee_pct, "f"),
        "taker_fee_pct": format(tier.taker_fee_pct, "f"),
        "maker_fee_ppm": tier.maker_fee_ppm,
        "taker_fee_ppm": tier.taker_fee_ppm,
        "min_volume_30d": usd(tier.min_volume_30d, ROUND_UP),
        "min_uptime_pct": None if tier.min_uptime_pct is None else str(tier.min_uptime_pct),
    }


class OwnUserView(KnownQueryParameters, APIView):
    """Scoped to the caller: any other user id is not found."""

    query_parameters = {"GET": ()}

    def check_user(self, request: Request, user_id: int) -> None:
        if user_id != request.user.pk:
            raise NotFound(f"user {user_id} not found")


class FeeTierView(OwnUserView):
    @extend_schema(
        operation_id="user_fee_tier",
        responses={200: FeeTierSerializer},
        description=(
            "Your fee tier (its rates apply to orders placed from now on), your 30-day volume "
            "and quote-presence uptime, and what the next tier needs."
        ),
    )
    def get(self, request: Request, user_id: int) -> Response:
        self.check_user(request, user_id)
        status = fee_tier_status(user_id=user_id, now=timezone.now())
        uptime = status.uptime.pct
        next_tier = None
        if status.next_tier is not None:
            target = status.next_tier
            next_tier = _tier(target) | {
                "volume_needed": usd(
                    max(Decimal(0), target.min_volume_30d - status.volume_30d), ROUND_UP
                ),
                "uptime_needed_pct": (
                    None
                    if target.min_uptime_pct is None
                    else str(max(Decimal("0.00"), target.min_uptime_pct - (uptime or 0)))
                ),
            }
        assignment = status.assignment
        # What the order path freezes on a new order (the tier's, or the fallback without one).
        maker_ppm, taker_ppm = user_fee_rates(user_id=user_id)
        return Response(
            {
                "user_id": user_id,
                "tier": _tier(status.tier) if status.tier is not None else None,
                "maker_fee_ppm": maker_ppm,
                "taker_fee_ppm": taker_ppm,
                "quote_asset": VOLUME_QUOTE_ASSET,
                "volume_30d": usd(status.volume_30d),
                "uptime_pct": None if uptime is None else str(uptime),
                "window_start": status.window[0],
                "window_end": status.window[1],
                "assigned_at": assignment.assigned_at if assignment else None,
                "assessed_at": assignment.assessed_at if assignment else None,
                "next_tier": next_tier,
            }
        )


class VolumeStatsView(OwnUserView):
    @extend_schema(
        operation_id="user_volume_stats",
        responses={200: VolumeStatsSerializer},
        description=(
            "Your traded volume over the 30 UTC days ending today (maker and taker notional, "
            "quote currency), per day, and your quote-presence uptime."
        ),
    )
    def get(self, request: Request, user_id: int) -> Response:
        self.check_user(request, user_id)
        now = timezone.now()
        first, last = window_days(now)
        uptime = uptime_30d(user_id=user_id, now=now)
        presence = daily_presence(user_id=user_id, now=now)
        volumes = daily_volumes(user_id=user_id, now=now)
        days = []
        for day, volume in volumes:
            samples, quoting, present = presence.get(day, (0, 0, 0))
            days.append(
                {
                    "day": day,
                    "quote_volume": usd(volume),
                    "samples": samples,
                    "samples_quoting": quoting,
                    "samples_present": present,
                }
            )
        return Response(
            {
                "user_id": user_id,
                "quote_asset": VOLUME_QUOTE_ASSET,
                "window_start": first,
                "window_end": last,
                "volume_30d": usd(sum((v for _, v in volumes), Decimal(0))),
                "uptime": {
                    "samples": uptime.samples,
                    "samples_quoting": uptime.samples_quoting,
                    "samples_present": uptime.samples_present,
                    "uptime_pct": None if uptime.pct is None else str(uptime.pct),
                    "max_distance_bps": settings.QUOTE_PRESENCE_MAX_DISTANCE_BPS,
                },
                "days": days,
            }
        )

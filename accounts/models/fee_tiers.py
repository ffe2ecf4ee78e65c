"""Fee tiers, the 30-day rolling volume they are assigned from, and market makers' quote presence.

Volume is counted in the quote currency of the instruments traded: every listed instrument
quotes USD today, so volumes and tier thresholds are USD. A trade counts for both its maker and
its taker (their notional), on the UTC day of its execution.
"""

from decimal import Decimal

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models

MONEY = {"max_digits": 30, "decimal_places": 12}
# Rates are percentages with 4 decimal places: 0.0001 % is exactly 1 ppm, the engine's unit.
RATE = {"max_digits": 7, "decimal_places": 4}
PPM_PER_PERCENT = 10_000


class FeeTier(models.Model):
    """A fee schedule reached with a minimum 30-day volume (and optionally a minimum quote
    presence); a negative maker fee is a rebate. Edited by staff in the admin."""

    name = models.CharField(max_length=40, unique=True)
    min_volume_30d = models.DecimalField(
        help_text="Minimum 30-day traded volume (quote currency, USD) to reach this tier.", **MONEY
    )
    maker_fee_pct = models.DecimalField(
        help_text="Maker fee in % of the notional; negative = rebate (e.g. -0.0100).", **RATE
    )
    taker_fee_pct = models.DecimalField(help_text="Taker fee in % of the notional.", **RATE)
    min_uptime_pct = models.DecimalField(
        max_digits=5,
        decimal_places=2,
        null=True,
        blank=True,
        help_text="Minimum quote-presence uptime % over the window (blank: no requirement).",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["min_volume_30d", "name"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(min_volume_30d__gte=0),
                name="fee_tier_min_volume_gte_0",
                violation_error_message="The minimum volume cannot be negative.",
            ),
            models.CheckConstraint(
                condition=models.Q(taker_fee_pct__gte=0, taker_fee_pct__lt=100),
                name="fee_tier_taker_fee_range",
                violation_error_message="The taker fee must be at least 0 and below 100 %.",
            ),
            models.CheckConstraint(
                condition=models.Q(maker_fee_pct__gt=-100, maker_fee_pct__lt=100),
                name="fee_tier_maker_fee_range",
                violation_error_message="The maker fee must be between -100 % and 100 %.",
            ),
            # The exchange never pays out on a trade: the taker's fee covers the maker's rebate.
            models.CheckConstraint(
                condition=models.Q(taker_fee_pct__gte=-models.F("maker_fee_pct")),
                name="fee_tier_taker_covers_rebate",
                violation_error_message="The taker fee must cover the maker rebate.",
            ),
            models.CheckConstraint(
                condition=models.Q(min_uptime_pct__isnull=True)
                | models.Q(min_uptime_pct__gte=0, min_uptime_pct__lte=100),
                name="fee_tier_min_uptime_range",
                violation_error_message="The minimum uptime must be between 0 and 100 %.",
            ),
            models.UniqueConstraint(
                fields=["min_volume_30d", "min_uptime_pct"],
                nulls_distinct=False,
                name="fee_tier_requirements_unique",
                violation_error_message="Another tier has the same volume and uptime minimums.",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        """Across tiers too, the exchange never pays out on a trade: the maker and the taker may
        be in different tiers, so every taker fee must cover every maker rebate. (Per tier this
        is also a database constraint; across rows it is checked here, where staff edit.)"""
        super().clean()
        if not isinstance(self.maker_fee_pct, Decimal) or not isinstance(
            self.taker_fee_pct, Decimal
        ):
            return
        others = list(
            FeeTier.objects.exclude(pk=self.pk).values_list("maker_fee_pct", "taker_fee_pct")
        )
        largest_rebate = max([-self.maker_fee_pct, *(-maker for maker, _ in others), Decimal(0)])
        smallest_taker = min([self.taker_fee_pct, *(taker for _, taker in others)])
        if smallest_taker < largest_rebate:
            raise ValidationError(
                f"Every taker fee must cover every maker rebate (a maker and a taker may be in "
                f"different tiers): the largest rebate would be {largest_rebate} % and the "
                f"smallest taker fee {smallest_taker} %."
            )

    @property
    def maker_fee_ppm(self) -> int:
        return int(self.maker_fee_pct * PPM_PER_PERCENT)

    @property
    def taker_fee_ppm(self) -> int:
        return int(self.taker_fee_pct * PPM_PER_PERCENT)

    def qualifies(self, *, volume_30d: Decimal, uptime_pct: Decimal | None) -> bool:
        """Whether a user with this volume and uptime (None: never sampled) reaches the tier."""
        if volume_30d < self.min_volume_30d:
            return False
        if self.min_uptime_pct is None:
            return True
        return uptime_pct is not None and uptime_pct >= self.min_uptime_pct


class DailyVolume(models.Model):
    """A user's traded volume on one UTC day: incremented by the matching worker's batches,
    corrected nightly from the trades."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+", db_index=False
    )
    day = models.DateField(help_text="UTC day of the trades.")
    quote_volume = models.DecimalField(default=Decimal(0), **MONEY)
    updated_at = models.DateTimeField(
        help_text="Last increment; the tier refresh re-assesses users whose volume moved."
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "day"], name="daily_volume_user_day_unique"),
            models.CheckConstraint(
                condition=models.Q(quote_volume__gte=0), name="daily_volume_gte_0"
            ),
        ]
        indexes = [models.Index(fields=["day"], name="daily_volume_day")]

    def __str__(self) -> str:
        return f"{self.user_id} {self.day} {self.quote_volume}"


class FeeTierAssignment(models.Model):
    """A user's current tier, whose rates are frozen on each new order; no row = the base tier."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        primary_key=True,
        related_name="fee_tier_assignment",
    )
    tier = models.ForeignKey(FeeTier, on_delete=models.PROTECT, related_name="assignments")
    volume_30d = models.DecimalField(help_text="30-day volume when last assessed.", **MONEY)
    uptime_pct = models.DecimalField(
        max_digits=5,
        decimal_places=2,
        null=True,
        blank=True,
        help_text="Quote-presence uptime % when last assessed (blank: never sampled).",
    )
    assigned_at = models.DateTimeField(help_text="When the user moved to this tier.")
    assessed_at = models.DateTimeField(help_text="When volume and uptime were last assessed.")

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=models.Q(volume_30d__gte=0), name="fee_tier_assignment_volume_gte_0"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.user_id}: {self.tier_id}"


class QuotePresenceSample(models.Model):
    """How many quote-presence samples were taken on a UTC day: the uptime's denominator."""

    day = models.DateField(primary_key=True)
    samples = models.PositiveIntegerField(default=0)
    last_sampled_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.day}: {self.samples}"


class QuotePresence(models.Model):
    """A user's quote-presence counters on a UTC day: samples at which they had an order resting
    in a book (`samples_quoting`) and at which they quoted two-sided near the mid
    (`samples_present`)."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+", db_index=False
    )
    day = models.DateField()
    samples_quoting = models.PositiveIntegerField(default=0)
    samples_present = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "day"], name="quote_presence_user_day_unique"),
            models.CheckConstraint(
                condition=models.Q(samples_present__lte=models.F("samples_quoting")),
                name="quote_presence_present_lte_quoting",
            ),
        ]
        indexes = [models.Index(fields=["day"], name="quote_presence_day")]

    def __str__(self) -> str:
        return f"{self.user_id} {self.day}: {self.samples_present}/{self.samples_quoting}"

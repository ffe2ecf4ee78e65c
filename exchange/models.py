"""The trading core's records. PostgreSQL is the system of record."""

from decimal import Decimal

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models

from matching.sharding import shard_for_symbol

MONEY = {"max_digits": 30, "decimal_places": 12}


class StpMode(models.TextChoices):
    """Self-trade prevention modes; the incoming order's mode decides."""

    CANCEL_RESTING = "cancel_resting", "Cancel resting"
    CANCEL_INCOMING = "cancel_incoming", "Cancel incoming"
    CANCEL_BOTH = "cancel_both", "Cancel both"
    CANCEL_SMALLEST = "cancel_smallest", "Cancel smallest"
    DECREMENT_BOTH = "decrement_both", "Decrement both"
    NONE = "none", "Allow self-trade"


class Instrument(models.Model):
    """A tradable spot pair with its trading rules; its shard is derived from the symbol."""

    class Status(models.TextChoices):
        TRADING = "trading", "Trading"
        HALTED = "halted", "Halted"
        DELISTED = "delisted", "Delisted"

    symbol = models.CharField(
        max_length=20,
        unique=True,
        validators=[
            RegexValidator(
                r"^[A-Z0-9][A-Z0-9.\-]{0,19}$",
                "Symbols are upper-case letters, digits, '.' and '-'.",
            )
        ],
    )
    base_asset = models.CharField(max_length=12)
    quote_asset = models.CharField(max_length=12)
    base_precision = models.PositiveSmallIntegerField(help_text="Decimal places of quantities.")
    quote_precision = models.PositiveSmallIntegerField(help_text="Decimal places of money.")
    tick_size = models.DecimalField(**MONEY)
    lot_size = models.DecimalField(**MONEY)
    min_quantity = models.DecimalField(**MONEY)
    min_notional = models.DecimalField(**MONEY)
    price_band_pct = models.DecimalField(
        max_digits=6,
        decimal_places=2,
        default=Decimal("10.00"),
        help_text="Limit prices more than this % away from the reference price are refused.",
    )
    market_collar_pct = models.DecimalField(
        max_digits=6,
        decimal_places=2,
        default=Decimal("5.00"),
        help_text="A market order stops filling this % beyond the best opposite price.",
    )
    trades_24_7 = models.BooleanField(default=True)
    session_open = models.TimeField(null=True, blank=True)
    session_close = models.TimeField(null=True, blank=True)
    session_timezone = models.CharField(max_length=64, default="America/New_York")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.TRADING)
    default_stp_mode = models.CharField(
        max_length=16, choices=StpMode.choices, default=StpMode.CANCEL_RESTING
    )
    shard = models.PositiveSmallIntegerField(
        editable=False, help_text="Matching shard, from a stable hash of the symbol."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["symbol"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(tick_size__gt=0), name="instrument_tick_gt_0"
            ),
            models.CheckConstraint(condition=models.Q(lot_size__gt=0), name="instrument_lot_gt_0"),
            models.CheckConstraint(
                condition=models.Q(min_quantity__gt=0), name="instrument_min_qty_gt_0"
            ),
            models.CheckConstraint(
                condition=models.Q(min_notional__gte=0), name="instrument_min_notional_gte_0"
            ),
            models.CheckConstraint(
                condition=models.Q(trades_24_7=True)
                | (models.Q(session_open__isnull=False) & models.Q(session_close__isnull=False)),
                name="instrument_session_hours_set",
            ),
        ]

    def __str__(self) -> str:
        return self.symbol

    def save(self, *args, **kwargs) -> None:
        self.shard = shard_for_symbol(self.symbol, settings.MATCHING_SHARDS)
        super().save(*args, **kwargs)

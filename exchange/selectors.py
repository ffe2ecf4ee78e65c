"""Reads of the trading core."""

from django.db.models import QuerySet

from exchange.models import Instrument


def instruments_listed() -> QuerySet[Instrument]:
    """Every instrument that is not delisted, by symbol."""
    return Instrument.objects.exclude(status=Instrument.Status.DELISTED).order_by("symbol")

"""Celery tasks of the accounts app: thin adapters over the services."""

import datetime as dt

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from accounts.fee_tiers import fee_tiers_assess, fee_tiers_refresh
from accounts.quote_presence import quote_presence_sample
from accounts.volume import daily_volume_recompute
from accounts.web_sessions import web_sessions_clear_expired


@shared_task(ignore_result=True)
def fee_tiers_nightly_task() -> int:
    """Nightly (UTC): rewrite the last 30 completed days' volumes from the trades, then assess
    every user with volume, presence or an assignment; returns how many changed tier."""
    now = timezone.now()
    daily_volume_recompute(now=now)
    return fee_tiers_assess(now=now)


@shared_task(ignore_result=True)
def fee_tiers_refresh_task() -> int:
    """Every FEE_TIER_REFRESH_SECONDS: re-assess the users whose volume moved."""
    return fee_tiers_refresh(now=timezone.now())


@shared_task(ignore_result=True)
def quote_presence_sample_task() -> None:
    """Every QUOTE_PRESENCE_SAMPLE_SECONDS: one quote-presence sample of every open book (a run
    closer than half a period to the previous sample is skipped)."""
    quote_presence_sample(
        now=timezone.now(),
        max_distance_bps=settings.QUOTE_PRESENCE_MAX_DISTANCE_BPS,
        min_interval=dt.timedelta(seconds=settings.QUOTE_PRESENCE_SAMPLE_SECONDS / 2),
    )


@shared_task(ignore_result=True)
def web_sessions_clear_expired_task() -> None:
    """Nightly (UTC): delete the web sessions past their expiry (Django keeps them for good)."""
    web_sessions_clear_expired()

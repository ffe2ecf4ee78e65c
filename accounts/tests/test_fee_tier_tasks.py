"""The scheduled fee-tier work, run the way Celery runs it (the task bodies, in process), and its
beat entries."""

import datetime as dt
import json
from decimal import Decimal

import pytest
from django.conf import settings
from django.utils import timezone

from accounts.models import DailyVolume, FeeTierAssignment, QuotePresence
from accounts.tasks import (
    fee_tiers_nightly_task,
    fee_tiers_refresh_task,
    quote_presence_sample_task,
)
from accounts.tests.fee_tier_data import (
    ensure_shipped_tiers,
    new_instrument,
    new_user,
    resting_order,
    trade,
)
from exchange.models import Instrument
from matching.transport import book_snapshot_key

pytestmark = pytest.mark.django_db


def test_beat_runs_the_nightly_assessment_the_refresh_and_the_sampler():
    schedule = {
        entry["task"]: entry["schedule"] for entry in settings.CELERY_BEAT_SCHEDULE.values()
    }
    nightly = schedule["accounts.tasks.fee_tiers_nightly_task"]
    assert (nightly.hour, nightly.minute) == ({0}, {10})  # after the UTC day closed
    assert schedule["accounts.tasks.fee_tiers_refresh_task"] == settings.FEE_TIER_REFRESH_SECONDS
    assert (
        schedule["accounts.tasks.quote_presence_sample_task"]
        == settings.QUOTE_PRESENCE_SAMPLE_SECONDS
    )


def test_nightly_task_rebuilds_yesterdays_volume_from_trades_and_moves_tiers():
    ensure_shipped_tiers()
    instrument = new_instrument()
    maker, taker = new_user("maker"), new_user("taker")
    yesterday = timezone.now().astimezone(dt.UTC).date() - dt.timedelta(days=1)
    noon = dt.datetime.combine(yesterday, dt.time(12), tzinfo=dt.UTC)
    trade(instrument, maker, taker, noon, "1000.00", "600")
    trade(instrument, taker, maker, noon + dt.timedelta(hours=1), "1000.00", "400")
    # The incremental count missed the second trade.
    for user in (maker, taker):
        DailyVolume.objects.create(
            user=user, day=yesterday, quote_volume=Decimal("600000"), updated_at=noon
        )
    fee_tiers_nightly_task()
    for user in (maker, taker):
        assert DailyVolume.objects.get(user=user, day=yesterday).quote_volume == Decimal("1000000")
        assert FeeTierAssignment.objects.get(user=user).tier.name == "Volume 1"


def test_refresh_task_moves_a_user_whose_volume_just_crossed_a_boundary():
    ensure_shipped_tiers()
    user = new_user()
    DailyVolume.objects.create(
        user=user,
        day=timezone.now().astimezone(dt.UTC).date(),
        quote_volume=Decimal("10000000"),
        updated_at=timezone.now(),
    )
    fee_tiers_refresh_task()
    assert FeeTierAssignment.objects.get(user=user).tier.name == "Volume 2"


def test_sample_task_counts_a_two_sided_maker(redis_conn):
    Instrument.objects.update(status=Instrument.Status.HALTED)  # only this test's book
    instrument = new_instrument()
    maker = new_user("mm")
    resting_order(user=maker, instrument=instrument, side="buy", price="99.99")
    resting_order(user=maker, instrument=instrument, side="sell", price="100.01")
    redis_conn.set(
        book_snapshot_key(instrument.symbol),
        json.dumps(
            {
                "symbol": instrument.symbol,
                "seq": 2,
                "bids": [["99.99", "10", 1]],
                "asks": [["100.01", "10", 1]],
                "last_price": None,
                "ts_ns": 0,
            }
        ),
    )
    quote_presence_sample_task()
    row = QuotePresence.objects.get(user=maker)
    assert (row.samples_quoting, row.samples_present) == (1, 1)

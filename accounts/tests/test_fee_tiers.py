"""Fee-tier assignment: volume boundaries, the 30-day window, uptime requirements, audit, and
the rates frozen on new orders."""

import datetime as dt
from decimal import Decimal

import pytest
from django.db import IntegrityError, transaction
from django.db.models import ProtectedError

from accounts.fee_tiers import (
    fee_rates_cache_clear,
    fee_tier_assign,
    fee_tier_status,
    fee_tiers_assess,
    fee_tiers_refresh,
)
from accounts.models import DailyVolume, FeeTier, FeeTierAssignment, QuotePresence
from accounts.models import QuotePresenceSample as Sample
from accounts.tests.fee_tier_data import SHIPPED_TIERS, at, ensure_shipped_tiers, new_user
from audit.events import AuditEvent
from audit.models import AuditRecord
from exchange import services
from exchange.api_errors import ApiError
from exchange.fees import fee_rates_for
from exchange.models import Order
from exchange.order_rules import OrderRequest
from exchange.tests.api_client import make_instrument, make_user

pytestmark = pytest.mark.django_db

NOW = at("2030-03-31T12:00:00")


@pytest.fixture
def tiers():
    return ensure_shipped_tiers()


def volume(user, day: dt.date, amount: str, *, updated_at: dt.datetime = NOW) -> None:
    DailyVolume.objects.create(
        user=user, day=day, quote_volume=Decimal(amount), updated_at=updated_at
    )


def assigned(user, now: dt.datetime = NOW) -> str:
    return fee_tier_assign(user=user, now=now).tier.name


def test_shipped_tiers_carry_the_issues_rates_and_our_thresholds():
    shipped = [
        (t.name, t.min_volume_30d, t.maker_fee_pct, t.taker_fee_pct, t.min_uptime_pct)
        for t in FeeTier.objects.order_by("min_volume_30d")
    ]
    assert shipped == [(*row, None) for row in SHIPPED_TIERS]
    rates = {t.name: (t.maker_fee_ppm, t.taker_fee_ppm) for t in FeeTier.objects.all()}
    assert rates == {
        "Retail": (1_000, 2_000),
        "Volume 1": (-100, 1_500),
        "Volume 2": (-200, 1_200),
        "Volume 3": (-300, 1_000),
    }


@pytest.mark.parametrize(
    ("amount", "tier"),
    [
        ("0", "Retail"),
        ("999999.99", "Retail"),
        ("1000000.00", "Volume 1"),
        ("9999999.99", "Volume 1"),
        ("10000000.00", "Volume 2"),
        ("49999999.99", "Volume 2"),
        ("50000000.00", "Volume 3"),
        ("800000000.00", "Volume 3"),
    ],
)
def test_tier_assignment_at_the_volume_boundaries(tiers, amount, tier):
    user = new_user()
    # Split over two days of the window: the tier sees their sum.
    first = (Decimal(amount) / 3).quantize(Decimal("0.01"))
    volume(user, NOW.date(), str(Decimal(amount) - first))
    volume(user, NOW.date() - dt.timedelta(days=29), str(first))
    assert assigned(user) == tier
    assert FeeTierAssignment.objects.get(user=user).volume_30d == Decimal(amount)


def test_window_is_the_30_utc_days_ending_today(tiers):
    user = new_user()
    # 2030-03-02 is the first day of the window of any instant on 2030-03-31 (UTC).
    volume(user, dt.date(2030, 3, 2), "600000")
    volume(user, dt.date(2030, 3, 31), "400000")
    assert assigned(user, at("2030-03-31T00:00:00")) == "Volume 1"
    assert assigned(user, at("2030-03-31T23:59:59.999999")) == "Volume 1"
    # At midnight 2030-03-02 leaves the window: 400,000 is Retail again.
    assert assigned(user, at("2030-04-01T00:00:00")) == "Retail"
    # A day in the future (a clock ahead of ours) is not counted either.
    volume(user, dt.date(2030, 4, 2), "5000000")
    assert assigned(user, at("2030-04-01T12:00:00")) == "Retail"


def test_highest_tier_whose_uptime_requirement_is_met(tiers):
    FeeTier.objects.create(
        name="Market maker",
        min_volume_30d=Decimal("5000000"),
        maker_fee_pct=Decimal("-0.0250"),
        taker_fee_pct=Decimal("0.1200"),
        min_uptime_pct=Decimal("90.00"),
    )
    maker, trader = new_user("mm"), new_user("trader")
    for user in (maker, trader):
        volume(user, NOW.date(), "5000000")
    Sample.objects.create(day=NOW.date(), samples=10_000)
    QuotePresence.objects.create(
        user=maker, day=NOW.date(), samples_quoting=9_500, samples_present=9_000
    )
    QuotePresence.objects.create(
        user=trader, day=NOW.date(), samples_quoting=9_500, samples_present=8_999
    )
    assert assigned(maker) == "Market maker"  # 90.00 %
    assert assigned(trader) == "Volume 1"  # 89.99 %: the volume tier below
    status = fee_tier_status(user_id=trader.pk, now=NOW)
    assert status.next_tier.name == "Market maker"
    assert status.uptime.pct == Decimal("89.99")


def test_users_never_sampled_do_not_reach_a_tier_that_needs_uptime(tiers):
    FeeTier.objects.create(
        name="Presence only",
        min_volume_30d=Decimal("0"),
        maker_fee_pct=Decimal("0.0000"),
        taker_fee_pct=Decimal("0.2000"),
        min_uptime_pct=Decimal("0.00"),
    )
    user = new_user()
    assert assigned(user) == "Retail"  # no sample taken: uptime unknown
    Sample.objects.create(day=NOW.date(), samples=5)
    assert assigned(user) == "Presence only"  # 0.00 % of 5 samples meets 0.00 %


def test_a_tier_change_is_audited_once_with_both_tiers(tiers):
    user = new_user()
    assert assigned(user) == "Retail"
    assert not AuditRecord.objects.filter(
        event_type=AuditEvent.FEE_TIER_CHANGED, user_id=user.pk
    ).exists()
    volume(user, NOW.date(), "10000000")
    assert assigned(user) == "Volume 2"
    assert assigned(user, NOW + dt.timedelta(minutes=1)) == "Volume 2"
    records = list(
        AuditRecord.objects.filter(event_type=AuditEvent.FEE_TIER_CHANGED, user_id=user.pk)
    )
    assert len(records) == 1
    payload = records[0].payload
    assert (payload["from_tier"], payload["to_tier"]) == ("Retail", "Volume 2")
    assert Decimal(payload["volume_30d"]) == Decimal("10000000")
    assert (payload["maker_fee_pct"], payload["taker_fee_pct"]) == ("-0.0200", "0.1200")
    row = FeeTierAssignment.objects.get(user=user)
    assert row.assigned_at == NOW and row.assessed_at == NOW + dt.timedelta(minutes=1)


def test_order_rates_are_the_users_tier_and_retail_without_an_assignment(tiers):
    fee_rates_cache_clear()
    newcomer, whale = new_user(), new_user()
    volume(whale, NOW.date(), "50000000")
    fee_tier_assign(user=whale, now=NOW)
    assert fee_rates_for(user=newcomer, instrument=None) == (1_000, 2_000)
    assert fee_rates_for(user=whale, instrument=None) == (-300, 1_000)


def test_each_stored_order_records_its_frozen_rates_and_their_tier_as_fee_calculated(tiers):
    # The catalogue had `fee.calculated`, and nothing wrote it.
    fee_rates_cache_clear()
    whale, newcomer = make_user("whale"), make_user("newcomer")
    poor = make_user("poor", funds={})
    volume(whale, NOW.date(), "50000000")
    fee_tier_assign(user=whale, now=NOW)
    symbol = make_instrument().symbol

    def plan(user):
        request = OrderRequest(symbol=symbol, side="buy", order_type="limit",
                               price=Decimal("10.00"), quantity=Decimal("2"))  # fmt: skip
        return services.order_plan(user=user, request=request)

    big, small, refused = services.orders_store(plans=[plan(whale), plan(newcomer), plan(poor)])
    assert isinstance(refused, ApiError)  # nothing stored, nothing calculated
    assert not AuditRecord.objects.filter(user_id=poor.pk).exists()
    calculated = {}
    for placed in (big, small):
        order = Order.objects.get(pk=placed.order.pk)
        [submitted] = AuditRecord.objects.filter(event_type="order.submitted", order_id=order.pk)
        [record] = AuditRecord.objects.filter(event_type="fee.calculated", order_id=order.pk)
        assert record.seq == submitted.seq + 1  # beside it, in the same COPY and transaction
        assert (record.user_id, record.symbol) == (order.user_id, symbol)
        assert record.payload["command_id"] == placed.command_id
        assert (record.payload["maker_fee_ppm"], record.payload["taker_fee_ppm"]) == (
            order.maker_fee_ppm,
            order.taker_fee_ppm,
        )
        calculated[order.user_id] = record.payload
    whales = calculated[whale.pk]
    assert (whales["tier"], whales["basis"]) == ("Volume 3", "assigned")
    assert (whales["maker_fee_pct"], whales["taker_fee_pct"]) == ("-0.0300", "0.1000")
    assert Decimal(whales["volume_30d"]) == Decimal("50000000")
    assert whales["assessed_at"] == NOW.isoformat().replace("+00:00", "Z")
    newcomers = calculated[newcomer.pk]
    assert (newcomers["tier"], newcomers["basis"]) == ("Retail", "base")  # never assessed
    assert (newcomers["maker_fee_pct"], newcomers["taker_fee_pct"]) == ("0.1000", "0.2000")
    assert newcomers["volume_30d"] is None and newcomers["assessed_at"] is None


def test_full_assessment_moves_everyone_including_those_whose_volume_left(tiers):
    leaving, arriving, idle = new_user(), new_user(), new_user()
    volume(leaving, dt.date(2030, 3, 1), "2000000")
    fee_tier_assign(user=leaving, now=at("2030-03-15T00:00:00"))
    volume(arriving, NOW.date(), "1000000")
    changed = fee_tiers_assess(now=NOW)
    assert changed == 2
    names = {
        a.user_id: a.tier.name
        for a in FeeTierAssignment.objects.filter(user__in=[leaving, arriving, idle])
    }
    assert names == {leaving.pk: "Retail", arriving.pk: "Volume 1"}  # idle: never assessed


def test_refresh_reassesses_only_users_whose_volume_moved(tiers, settings):
    settings.FEE_TIER_REFRESH_MARGIN_SECONDS = 60
    moved, still = new_user(), new_user()
    volume(moved, NOW.date(), "900000", updated_at=NOW - dt.timedelta(hours=2))
    volume(still, NOW.date(), "900000", updated_at=NOW - dt.timedelta(hours=2))
    fee_tiers_assess(now=NOW - dt.timedelta(hours=1), user_ids=[moved.pk, still.pk])
    DailyVolume.objects.filter(user=moved).update(
        quote_volume=Decimal("1100000"), updated_at=NOW - dt.timedelta(minutes=5)
    )
    DailyVolume.objects.filter(user=still).update(quote_volume=Decimal("1100000"))
    fee_tiers_refresh(now=NOW)
    rows = {a.user_id: a for a in FeeTierAssignment.objects.filter(user__in=[moved, still])}
    assert rows[moved.pk].tier.name == "Volume 1" and rows[moved.pk].assessed_at == NOW
    # Its row did not move since its assessment: left to the nightly run.
    assert rows[still.pk].tier.name == "Retail"
    assert rows[still.pk].assessed_at == NOW - dt.timedelta(hours=1)


def test_refresh_counts_a_batch_stamped_shortly_before_the_last_assessment(tiers, settings):
    settings.FEE_TIER_REFRESH_MARGIN_SECONDS = 60
    user = new_user()
    volume(user, NOW.date(), "900000", updated_at=NOW - dt.timedelta(hours=2))
    fee_tiers_assess(now=NOW - dt.timedelta(minutes=10), user_ids=[user.pk])
    # A batch stamped 30 s before that assessment but committed after it.
    DailyVolume.objects.filter(user=user).update(
        quote_volume=Decimal("1000000"), updated_at=NOW - dt.timedelta(minutes=10, seconds=30)
    )
    fee_tiers_refresh(now=NOW)
    assert FeeTierAssignment.objects.get(user=user).tier.name == "Volume 1"


@pytest.mark.parametrize(
    ("maker", "taker", "min_volume"),
    [
        ("-0.0200", "0.0100", "1"),  # the rebate would exceed the taker fee
        ("0.1000", "-0.0100", "2"),  # negative taker fee
        ("0.1000", "0.2000", "-1"),  # negative volume threshold
    ],
)
def test_tier_invariants_are_enforced_by_the_database(tiers, maker, taker, min_volume):
    with pytest.raises(IntegrityError), transaction.atomic():
        FeeTier.objects.create(
            name="Bad",
            min_volume_30d=Decimal(min_volume),
            maker_fee_pct=Decimal(maker),
            taker_fee_pct=Decimal(taker),
        )


def test_a_tier_in_use_cannot_be_deleted(tiers):
    user = new_user()
    volume(user, NOW.date(), "1000000")
    fee_tier_assign(user=user, now=NOW)
    with pytest.raises(ProtectedError), transaction.atomic():
        tiers["Volume 1"].delete()


def test_a_user_no_tier_reaches_any_more_pays_the_fallback_schedule(tiers):
    # Staff raised every minimum above 0: a user whose volume then left the window kept the
    # tier they had last reached, rebate and all, for good.
    user = new_user()
    volume(user, dt.date(2030, 3, 1), "2000000")
    assert assigned(user, at("2030-03-15T00:00:00")) == "Volume 1"
    FeeTier.objects.filter(min_volume_30d=0).update(min_volume_30d=Decimal("1.00"))
    fee_rates_cache_clear()
    assert fee_tier_assign(user=user, now=NOW + dt.timedelta(days=30)) is None
    record = AuditRecord.objects.filter(
        event_type=AuditEvent.FEE_TIER_CHANGED, user_id=user.pk
    ).latest("seq")
    assert (record.payload["from_tier"], record.payload["to_tier"]) == ("Volume 1", None)
    assert (record.payload["maker_fee_pct"], record.payload["taker_fee_pct"]) == (
        "0.1000",
        "0.2000",
    )
    assert fee_rates_for(user=user, instrument=None) == (1_000, 2_000)

"""Staff edit fee tiers in the admin; assignments, volumes and presence counters are read-only."""

from decimal import Decimal

import pytest

from accounts.fee_tiers import fee_tier_assign
from accounts.models import DailyVolume, FeeTier, FeeTierAssignment
from accounts.tests.fee_tier_data import at, ensure_shipped_tiers, new_user
from accounts.tests.otp_login import make_person, verified_client

pytestmark = pytest.mark.django_db

NOW = at("2030-09-01T12:00:00")


@pytest.fixture
def staff_client():
    ensure_shipped_tiers()
    return verified_client(make_person(superuser=True))


def tier_form(tier: FeeTier, **changes) -> dict:
    form = {
        "name": tier.name,
        "min_volume_30d": str(tier.min_volume_30d),
        "maker_fee_pct": str(tier.maker_fee_pct),
        "taker_fee_pct": str(tier.taker_fee_pct),
        "min_uptime_pct": "" if tier.min_uptime_pct is None else str(tier.min_uptime_pct),
    }
    form.update(changes)
    return form


def test_staff_edit_a_tiers_rates_in_the_admin(staff_client):
    tier = FeeTier.objects.get(name="Volume 1")
    listing = staff_client.get("/admin/accounts/feetier/")
    assert listing.status_code == 200 and b"Volume 1" in listing.content
    url = f"/admin/accounts/feetier/{tier.pk}/change/"
    response = staff_client.post(url, tier_form(tier, taker_fee_pct="0.1400"))
    assert response.status_code == 302, response.content[:2000]
    tier.refresh_from_db()
    assert (tier.taker_fee_pct, tier.taker_fee_ppm) == (Decimal("0.1400"), 1_400)


def test_the_admin_refuses_a_tier_whose_rebate_exceeds_its_taker_fee(staff_client):
    tier = FeeTier.objects.get(name="Volume 1")
    url = f"/admin/accounts/feetier/{tier.pk}/change/"
    response = staff_client.post(url, tier_form(tier, taker_fee_pct="0.0050"))
    assert response.status_code == 200  # the form again, with the error
    assert b"The taker fee must cover the maker rebate." in response.content
    tier.refresh_from_db()
    assert tier.taker_fee_pct == Decimal("0.1500")


@pytest.mark.parametrize(
    ("maker", "taker"),
    [
        ("-0.1200", "0.2000"),  # a rebate above Volume 3's 0.10 % taker fee
        ("0.0000", "0.0200"),  # a taker fee below Volume 3's 0.03 % rebate
    ],
)
def test_the_admin_refuses_a_taker_fee_below_another_tiers_rebate(staff_client, maker, taker):
    form = {
        "name": "Special",
        "min_volume_30d": "20000000",
        "maker_fee_pct": maker,
        "taker_fee_pct": taker,
        "min_uptime_pct": "",
    }
    response = staff_client.post("/admin/accounts/feetier/add/", form)
    assert response.status_code == 200
    assert b"Every taker fee must cover every maker rebate" in response.content
    assert not FeeTier.objects.filter(name="Special").exists()


def test_staff_add_a_market_maker_tier_with_an_uptime_requirement(staff_client):
    form = {
        "name": "Market maker",
        "min_volume_30d": "5000000",
        "maker_fee_pct": "-0.0250",
        "taker_fee_pct": "0.1200",
        "min_uptime_pct": "90",
    }
    response = staff_client.post("/admin/accounts/feetier/add/", form)
    assert response.status_code == 302, response.content[:2000]
    tier = FeeTier.objects.get(name="Market maker")
    assert (tier.maker_fee_ppm, tier.min_uptime_pct) == (-250, Decimal("90.00"))


def test_assignments_and_volumes_are_read_only(staff_client):
    user = new_user()
    DailyVolume.objects.create(
        user=user, day=NOW.date(), quote_volume=Decimal("1000000"), updated_at=NOW
    )
    fee_tier_assign(user=user, now=NOW)
    assignment = FeeTierAssignment.objects.get(user=user)
    page = staff_client.get(f"/admin/accounts/feetierassignment/{assignment.pk}/change/")
    assert page.status_code == 200 and b"Volume 1" in page.content
    refused = staff_client.post(
        f"/admin/accounts/feetierassignment/{assignment.pk}/change/",
        {"tier": FeeTier.objects.get(name="Volume 3").pk},
    )
    assert refused.status_code == 403
    assert staff_client.get("/admin/accounts/feetierassignment/add/").status_code == 403
    assert staff_client.get("/admin/accounts/dailyvolume/").status_code == 200
    assert staff_client.get("/admin/accounts/dailyvolume/add/").status_code == 403
    assert FeeTierAssignment.objects.get(user=user).tier.name == "Volume 1"

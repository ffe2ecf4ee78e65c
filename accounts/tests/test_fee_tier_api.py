"""Fee-tier and volume endpoints, and rebates at work, over HTTP against the real web process and
shard worker."""

import datetime as dt
from decimal import Decimal

import httpx
import pytest
from django.utils import timezone

from accounts.fee_tiers import fee_tier_assign
from accounts.models import DailyVolume, QuotePresence, QuotePresenceSample
from accounts.tests.fee_tier_data import ensure_shipped_tiers
from exchange.models import Trade
from exchange.tests.api_client import ApiClient, make_instrument, make_user

pytestmark = [pytest.mark.processes]


@pytest.fixture
def client(exchange_stack, live_db):
    ensure_shipped_tiers()
    return ApiClient(exchange_stack)


def add_volume(user, day: dt.date, amount: str) -> None:
    DailyVolume.objects.update_or_create(
        user=user,
        day=day,
        defaults={"quote_volume": Decimal(amount), "updated_at": timezone.now()},
    )


def test_a_new_user_is_retail_and_sees_what_volume_1_needs(client):
    user_id = client.user.pk
    response = client.get(f"/api/v1/users/{user_id}/fee-tier")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["tier"] == {
        "name": "Retail",
        "maker_fee_pct": "0.1000",
        "taker_fee_pct": "0.2000",
        "maker_fee_ppm": 1000,
        "taker_fee_ppm": 2000,
        "min_volume_30d": "0.00",
        "min_uptime_pct": None,
    }
    assert (body["maker_fee_ppm"], body["taker_fee_ppm"]) == (1000, 2000)  # a new order's
    assert (body["quote_asset"], body["volume_30d"], body["assigned_at"]) == ("USD", "0.00", None)
    assert body["next_tier"]["name"] == "Volume 1"
    assert body["next_tier"]["maker_fee_pct"] == "-0.0100"
    assert body["next_tier"]["volume_needed"] == "1000000.00"
    today = timezone.now().astimezone(dt.UTC).date()
    assert body["window_end"] == today.isoformat()
    assert body["window_start"] == (today - dt.timedelta(days=29)).isoformat()


def test_fee_tier_and_volume_stats_after_an_assessment(client):
    user = client.user
    today = timezone.now().astimezone(dt.UTC).date()
    add_volume(user, today, "7000000.50")
    add_volume(user, today - dt.timedelta(days=3), "3000000")
    QuotePresenceSample.objects.get_or_create(day=today - dt.timedelta(days=3))
    QuotePresenceSample.objects.filter(day=today - dt.timedelta(days=3)).update(samples=400)
    QuotePresence.objects.create(
        user=user, day=today - dt.timedelta(days=3), samples_quoting=300, samples_present=100
    )
    fee_tier_assign(user=user, now=timezone.now())

    body = client.get(f"/api/v1/users/{user.pk}/fee-tier").json()
    assert body["tier"]["name"] == "Volume 2"
    assert (body["tier"]["maker_fee_ppm"], body["tier"]["taker_fee_ppm"]) == (-200, 1200)
    assert body["volume_30d"] == "10000000.50"
    assert body["assigned_at"].endswith("Z") and body["assessed_at"].endswith("Z")
    assert body["next_tier"]["name"] == "Volume 3"
    assert body["next_tier"]["volume_needed"] == "39999999.50"
    assert body["next_tier"]["uptime_needed_pct"] is None

    stats = client.get(f"/api/v1/users/{user.pk}/volume-stats").json()
    assert stats["volume_30d"] == "10000000.50"
    assert len(stats["days"]) == 30
    assert stats["days"][-1] == {
        "day": today.isoformat(),
        "quote_volume": "7000000.50",
        "samples": 0,
        "samples_quoting": 0,
        "samples_present": 0,
    }
    earlier = stats["days"][-4]
    assert (earlier["quote_volume"], earlier["samples_present"]) == ("3000000.00", 100)
    uptime = stats["uptime"]
    assert (uptime["samples_quoting"], uptime["samples_present"]) == (300, 100)
    assert uptime["samples"] >= 400  # the exchange-wide count (other tests may sample too)
    assert Decimal(uptime["uptime_pct"]) <= Decimal("25.00")
    assert uptime["max_distance_bps"] == 100


def test_a_volume_a_fraction_of_a_cent_short_of_a_tier_does_not_read_as_reaching_it(client):
    # A USD instrument quoted to finer than a cent trades sub-cent notionals. Rounded half to
    # even, 999,999.995 read "1000000.00" traded and "0.00" needed for Volume 1, from a user
    # the assessment (rightly) left in Retail.
    user = client.user
    today = timezone.now().astimezone(dt.UTC).date()
    add_volume(user, today, "999999.995")
    assert fee_tier_assign(user=user, now=timezone.now()).tier.name == "Retail"

    body = client.get(f"/api/v1/users/{user.pk}/fee-tier").json()
    assert body["tier"]["name"] == "Retail"
    assert body["volume_30d"] == "999999.99"
    assert (body["next_tier"]["name"], body["next_tier"]["volume_needed"]) == ("Volume 1", "0.01")
    stats = client.get(f"/api/v1/users/{user.pk}/volume-stats").json()
    assert stats["volume_30d"] == "999999.99"
    assert stats["days"][-1]["quote_volume"] == "999999.99"


def test_another_users_figures_are_not_found(client, exchange_stack):
    other = make_user()
    for path in ("fee-tier", "volume-stats"):
        response = client.get(f"/api/v1/users/{other.pk}/{path}")
        assert response.status_code == 404
        assert response.json()["error"] == "NotFound"
        anonymous = httpx.get(f"{exchange_stack}/api/v1/users/{other.pk}/{path}")
        assert anonymous.status_code in (401, 403)


def test_endpoints_are_in_the_openapi_schema(client):
    schema = client.get("/api/schema/", format="json").json()
    fee_tier = schema["paths"]["/api/v1/users/{user_id}/fee-tier"]["get"]
    volume_stats = schema["paths"]["/api/v1/users/{user_id}/volume-stats"]["get"]
    assert fee_tier["operationId"] == "user_fee_tier"
    assert volume_stats["operationId"] == "user_volume_stats"
    fee_tier_body = schema["components"]["schemas"]["FeeTier"]["properties"]
    assert fee_tier_body["volume_30d"]["type"] == "string"
    assert "next_tier" in fee_tier_body


def test_a_maker_on_a_rebate_tier_is_paid_and_metrics_net_the_rebate(client, exchange_stack):
    instrument = make_instrument()
    maker, taker = client, ApiClient(exchange_stack)
    add_volume(maker.user, timezone.now().astimezone(dt.UTC).date(), "1000000")
    assert fee_tier_assign(user=maker.user, now=timezone.now()).tier.name == "Volume 1"
    sell = {"symbol": instrument.symbol, "side": "sell", "order_type": "limit", "price": "100.00"}
    resting = maker.place(**sell, quantity="10")
    assert resting.status_code == 201, resting.text
    # The rates it will pay are on the order (frozen: a later tier change does not move them).
    assert (resting.json()["maker_fee_ppm"], resting.json()["taker_fee_ppm"]) == (-100, 1500)
    taken = taker.place(**{**sell, "side": "buy"}, quantity="10")
    assert taken.status_code == 201, taken.text
    assert (taken.json()["maker_fee_ppm"], taken.json()["taker_fee_ppm"]) == (1000, 2000)
    trade = Trade.objects.get(pk=taken.json()["fills"][0]["trade_id"])
    # 1000.00 notional: a 0.01 % rebate to the maker, the Retail 0.20 % from the taker.
    assert (trade.maker_fee, trade.taker_fee) == (Decimal("-0.10"), Decimal("2.00"))
    maker_fill = maker.get("/api/v1/fills", symbol=instrument.symbol).json()["results"][0]
    assert (maker_fill["liquidity"], maker_fill["fee"]) == ("maker", "-0.10")

    staff = make_user("staff")
    staff.is_staff = True
    staff.save()
    metrics = ApiClient(exchange_stack, staff).get("/api/v1/metrics/exchange").json()
    row = next(r for r in metrics["symbols"] if r["symbol"] == instrument.symbol)
    assert (row["maker_fees"], row["taker_fees"], row["rebates_paid"]) == ("0.00", "2.00", "0.10")
    assert row["net_fee_revenue"] == "1.90"

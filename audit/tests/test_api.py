"""The compliance query API: hidden (404) from everyone but compliance staff."""

import pytest
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from audit.events import AuditEvent
from audit.services import audit_record

pytestmark = pytest.mark.django_db

ORDER_ID = 9_100_001


@pytest.fixture
def order_history():
    return [
        audit_record(
            event_type=event,
            actor="tester",
            order_id=ORDER_ID,
            symbol="BTC-USD",
            payload={"step": i},
        )
        for i, event in enumerate(
            [AuditEvent.ORDER_SUBMITTED, AuditEvent.ORDER_AMENDED, AuditEvent.ORDER_CANCELLED]
        )
    ]


def _client(user=None) -> APIClient:
    client = APIClient()
    if user is not None:
        client.force_authenticate(user)
    return client


@pytest.mark.parametrize(
    "url",
    [
        f"/api/v1/audit/orders/{ORDER_ID}/history",
        "/api/v1/audit/users/1/activity",
        "/api/v1/audit/trades/1",
    ],
)
def test_audit_api_is_a_404_for_anonymous_and_non_compliance_users(make_user, url, order_history):
    for client in (_client(), _client(make_user()), _client(make_user(staff=True))):
        response = client.get(url)
        assert response.status_code == 404
        assert response.json()["error"] == "NotFound"
        assert set(response.json()) >= {"error", "code", "message"}


def test_compliance_user_gets_an_orders_history_oldest_first(make_user, order_history):
    response = _client(make_user(compliance=True)).get(f"/api/v1/audit/orders/{ORDER_ID}/history")
    assert response.status_code == 200
    body = response.json()
    assert [r["seq"] for r in body["results"]] == order_history
    first = body["results"][0]
    assert first["event_type"] == "order.submitted"
    assert first["subjects"]["order_id"] == ORDER_ID and first["subjects"]["symbol"] == "BTC-USD"
    assert first["ts"].endswith("Z") and len(first["ts"].split(".")[1]) == 10  # 9 digits + Z
    assert first["hash"] is None  # not sealed yet
    assert "next" in body


def test_history_is_cursor_paginated(make_user, order_history):
    client = _client(make_user(compliance=True))
    page = client.get(f"/api/v1/audit/orders/{ORDER_ID}/history?limit=2").json()
    assert [r["seq"] for r in page["results"]] == order_history[:2]
    rest = client.get(page["next"]).json()
    assert [r["seq"] for r in rest["results"]] == order_history[2:]


def test_user_activity_filters_by_time_window(make_user):
    user = make_user()
    base = 1_800_000_000 * 10**9
    seqs = [
        audit_record(event_type=AuditEvent.LOGIN, actor=user, user_id=user.pk, ts_ns=base + i)
        for i in range(3)
    ]
    client = _client(make_user(compliance=True))
    url = f"/api/v1/audit/users/{user.pk}/activity"
    everything = client.get(url).json()["results"]
    assert [r["seq"] for r in everything] == seqs
    window = client.get(
        url, {"start": "2027-01-15T08:00:00.000000001Z", "end": "2027-01-15T08:00:00.000000001Z"}
    ).json()["results"]
    assert [r["ts_ns"] for r in window] == [base + 1]


@pytest.mark.parametrize(
    ("query", "error", "code"),
    [
        ({"start": "yesterday"}, "InvalidParameter", -1102),
        ({"end": "2026-13-01"}, "InvalidParameter", -1102),
        # Arabic-Indic digits in the fraction had been read as 0.1 s and 0.123 s, and padding
        # trimmed: the order list's time filters take ASCII digits as sent.
        ({"start": "2027-01-15T08:00:00.\u0661Z"}, "InvalidParameter", -1102),
        ({"end": "2027-01-15T08:00:00.\u0661\u0662\u0663Z"}, "InvalidParameter", -1102),
        ({"start": "2027-01-15T08:00:00Z\t"}, "InvalidParameter", -1102),
        ({"end": " 2027-01-15T08:00:00Z"}, "InvalidParameter", -1102),
        # Empty had been no filter: the whole activity, as if none had been asked for.
        ({"start": ""}, "InvalidParameter", -1102),
        ({"end": ""}, "InvalidParameter", -1102),
        ({"start": "2026-02-02", "end": "2026-02-01"}, "InvalidTimeRange", -1131),
    ],
)
def test_bad_activity_query_is_a_400_naming_the_field(make_user, query, error, code):
    response = _client(make_user(compliance=True)).get("/api/v1/audit/users/1/activity", query)
    assert response.status_code == 400
    body = response.json()
    assert (body["error"], body["code"], body["field"]) == (error, code, next(iter(query)))


def test_trade_endpoint_serves_the_trades_records(make_user):
    seq = audit_record(
        event_type=AuditEvent.TRADE_EXECUTED, trade_id=9_200_001, payload={"price": "10.00"}
    )
    body = _client(make_user(compliance=True)).get("/api/v1/audit/trades/9200001").json()
    assert [r["seq"] for r in body["results"]] == [seq]


def test_audit_endpoints_are_in_the_openapi_schema(make_user):
    client = _client(make_user())
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/json").content.decode()
    for path in (
        "/api/v1/audit/orders/{order_id}/history",
        "/api/v1/audit/users/{user_id}/activity",
        "/api/v1/audit/trades/{trade_id}",
    ):
        assert path in schema
    assert "AuditRecord" in schema


def test_a_compliance_group_member_without_the_staff_flag_is_a_404_as_in_the_admin(make_user):
    # The admin and its two-factor step are for staff only, yet the API had served the whole
    # audit trail (every user's activity and addresses) to a non-staff member of the group
    # signed in with a password alone, no second factor asked.
    member = make_user(compliance=True)
    member.is_staff = False
    member.save(update_fields=["is_staff"])
    browser = Client()
    signed_in = browser.post(
        reverse("accounts:login"), {"email": member.email, "password": "correct horse battery 9"}
    )
    assert signed_in.status_code == 302
    for url in [
        f"/api/v1/audit/orders/{ORDER_ID}/history",
        f"/api/v1/audit/users/{member.pk}/activity",
        "/api/v1/audit/trades/1",
    ]:
        response = browser.get(url)
        assert response.status_code == 404, url
        assert response.json()["error"] == "NotFound"

"""GET /api/v1/orders: the list's filters (time range edges), read in-process."""

import datetime as dt

import pytest

from exchange.models import Order
from exchange.tests.api_client import make_instrument
from exchange.tests.test_candles_api import Tape, at

pytestmark = pytest.mark.django_db


def test_a_time_range_between_two_microseconds_keeps_each_order_on_its_side(client):
    # Order times are kept to the microsecond, and Django's parser cut a filter's digits past
    # the sixth: `end` 100 ns after an order left that order out (it is before that end), and
    # `start` 100 ns after it kept it in (it is before that start).
    tape = Tape(make_instrument())
    tape.trade(at(0), "100.00", "1")
    order = Order.objects.filter(user=tape.taker).get()
    created = dt.datetime(2026, 11, 25, 12, 0, 0, 5, tzinfo=dt.UTC)  # 12:00:00.000005
    Order.objects.filter(pk=order.pk).update(created_at=created)
    client.force_login(tape.taker)

    def listed(**params) -> list[int]:
        response = client.get("/api/v1/orders", params)
        assert response.status_code == 200, response.content
        return [o["order_id"] for o in response.json()["results"]]

    assert listed(start="2026-11-25T12:00:00.000005Z") == [order.pk]  # inclusive
    assert listed(start="2026-11-25T12:00:00.0000051Z") == []
    assert listed(end="2026-11-25T12:00:00.000005Z") == []  # exclusive
    assert listed(end="2026-11-25T12:00:00.000005001Z") == [order.pk]
    assert listed(start="2026-11-25T12:00:00.0000049Z", end="2026-11-25T12:00:00.0000051Z") == [
        order.pk
    ]

"""GET /api/v1/trades/{symbol}: the public list of an instrument's recent trades."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from exchange.tests.api_client import make_instrument
from exchange.tests.test_candles_api import Tape, at

pytestmark = pytest.mark.django_db


def test_a_page_of_trades_costs_the_same_few_queries_however_many_it_holds(client):
    # Each trade read its instrument with a query of its own: a page of 1,000 trades, 1,000
    # queries more, for anyone who asked.
    tape = Tape(make_instrument())
    path = f"/api/v1/trades/{tape.instrument.symbol}"
    tape.trade(at(0), "100.00", "1")
    assert client.get(path).status_code == 200  # the instrument is cached from here on
    with CaptureQueriesContext(connection) as one:
        assert client.get(path).status_code == 200
    for second in range(1, 30):
        tape.trade(at(0, second), "100.00", "1")
    with CaptureQueriesContext(connection) as many:
        response = client.get(path)
    assert response.status_code == 200
    assert len(response.json()["results"]) == 30
    assert response.json()["results"][0]["price"] == "100.00"
    assert len(many.captured_queries) == len(one.captured_queries)

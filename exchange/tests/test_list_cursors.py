"""Cursor pagination of the lists: a cursor pages on the list that handed it out, only."""

import base64
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from exchange.tests.api_client import make_instrument
from exchange.tests.test_candles_api import Tape, at

pytestmark = pytest.mark.django_db


def cursor_of(url: str) -> str:
    return parse_qs(urlsplit(url).query)["cursor"][0]


def test_a_cursor_sent_to_another_list_is_refused_not_read_as_a_position_there(client):
    # A cursor is a position in its own list's ids: a /fills cursor (a trade id) sent to
    # /orders served the orders below that number as if it were an order id, without a word.
    tape, other = Tape(make_instrument()), Tape(make_instrument())
    for second in range(4):
        tape.trade(at(0, second), "100.00", "1")
        other.trade(at(0, second), "100.00", "1")
    client.force_login(tape.taker)
    symbol = tape.instrument.symbol
    lists = ["/api/v1/fills", "/api/v1/orders", "/api/v1/ledger", f"/api/v1/trades/{symbol}"]
    served = {}
    for path in lists:
        page = client.get(path, {"limit": "1"})
        assert page.status_code == 200, page.content
        served[path] = cursor_of(page.json()["next"])
    for path in lists:
        # The list's own cursor pages on.
        assert client.get(path, {"limit": "1", "cursor": served[path]}).status_code == 200
        for elsewhere in [*lists, f"/api/v1/trades/{other.instrument.symbol}"]:
            if elsewhere == path:
                continue
            refused = client.get(elsewhere, {"limit": "1", "cursor": served[path]})
            assert refused.status_code == 404, (path, elsewhere, refused.content)
            assert refused.json()["error"] == "NotFound"
            assert refused.json()["message"] == "Invalid cursor"


def test_paging_trades_that_share_a_timestamp_while_more_arrive_skips_and_repeats_none(client):
    tape = Tape(make_instrument())
    path = f"/api/v1/trades/{tape.instrument.symbol}"
    first = [tape.trade(at(0), "100.00", "1").pk for _ in range(7)]
    seen = []
    page = client.get(path, {"limit": "2"}).json()
    while True:
        seen.extend(t["trade_id"] for t in page["results"])
        tape.trade(at(0), "100.00", "1")  # a newer trade, at the same instant, mid-paging
        if not page["next"]:
            break
        page = client.get(path, {"limit": "2", "cursor": cursor_of(page["next"])}).json()
    assert seen == sorted(first, reverse=True)
    # Back from the last page, the previous pages hold the same trades.
    assert page["previous"] is not None


def test_a_cursor_edited_by_hand_is_refused_not_read_from_wherever_it_points(client):
    # A cursor was opaque but not signed: its position or offset edited (or a stale one of
    # another filter written by hand) served a page from that point, silently skipping rows.
    tape = Tape(make_instrument())
    for second in range(5):
        tape.trade(at(0, second), "100.00", "1")
    path = f"/api/v1/trades/{tape.instrument.symbol}"
    served = cursor_of(client.get(path, {"limit": "2"}).json()["next"])
    assert client.get(path, {"limit": "2", "cursor": served}).status_code == 200
    fields = parse_qs(base64.b64decode(served).decode(), keep_blank_values=True)
    position = int(fields["p"][0])
    for edit in ({"p": [str(position - 2)]}, {"o": ["1"]}, {"r": ["1"]}, {"e": ["0" * 20]}):
        edited = base64.b64encode(urlencode({**fields, **edit}, doseq=True).encode()).decode()
        refused = client.get(path, {"limit": "2", "cursor": edited})
        assert refused.status_code == 404, (edit, refused.content)
        assert refused.json()["message"] == "Invalid cursor"

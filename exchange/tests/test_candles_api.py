"""GET /api/v1/candles/{symbol}: OHLC and volume from the trades, over HTTP, at chosen instants."""

import datetime as dt
from decimal import Decimal

import pytest

from exchange.models import Order, Trade
from exchange.tests.api_client import make_instrument, make_user

pytestmark = pytest.mark.django_db

T0 = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)


class Tape:
    """Writes trades of one instrument at chosen instants (as the matching worker stores them)."""

    def __init__(self, instrument) -> None:
        self.instrument = instrument
        self.maker, self.taker = make_user("maker"), make_user("taker")
        self.seq = 0

    def _order(self, user, side: str, price: Decimal, quantity: Decimal) -> Order:
        return Order.objects.create(
            user=user,
            instrument=self.instrument,
            side=side,
            order_type=Order.Type.LIMIT,
            time_in_force=Order.TimeInForce.GTC,
            price=price,
            quantity=quantity,
            maker_fee_ppm=0,
            taker_fee_ppm=0,
            status=Order.Status.FILLED,
            is_open=False,
            filled_quantity=quantity,
        )

    def trade(self, at: dt.datetime, price: str, quantity: str) -> Trade:
        self.seq += 1
        price_d, quantity_d = Decimal(price), Decimal(quantity)
        return Trade.objects.create(
            instrument=self.instrument,
            engine_trade_seq=self.seq,
            price=price_d,
            quantity=quantity_d,
            quote_quantity=price_d * quantity_d,
            maker_order=self._order(self.maker, "sell", price_d, quantity_d),
            taker_order=self._order(self.taker, "buy", price_d, quantity_d),
            maker_user=self.maker,
            taker_user=self.taker,
            taker_side="buy",
            maker_fee=Decimal(0),
            taker_fee=Decimal(0),
            executed_at=at,
            executed_at_ns=int(at.timestamp()) * 1_000_000_000,
        )


def candles(client, symbol: str, **params):
    return client.get(f"/api/v1/candles/{symbol}", params)


def at(minutes: float = 0, seconds: float = 0) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes, seconds=seconds)


def test_one_minute_candles_are_ohlc_and_volume_of_each_minute_oldest_first(client):
    tape = Tape(make_instrument())
    tape.trade(at(0, 10), "100.00", "2")
    tape.trade(at(0, 40), "105.00", "1")
    tape.trade(at(0, 50), "99.00", "3")
    tape.trade(at(1, 5), "102.00", "4")
    tape.trade(at(3, 0), "101.00", "1")

    response = candles(client, tape.instrument.symbol, interval="1m", end=at(4).isoformat())

    assert response.status_code == 200
    body = response.json()
    assert (body["symbol"], body["interval"]) == (tape.instrument.symbol, "1m")
    assert body["candles"] == [
        {
            "open_time": "2026-11-25T12:00:00Z",
            "open": "100.00",
            "high": "105.00",
            "low": "99.00",
            "close": "99.00",
            "volume": "6",
            "quote_volume": "602.00",
            "trades": 3,
        },
        {
            "open_time": "2026-11-25T12:01:00Z",
            "open": "102.00",
            "high": "102.00",
            "low": "102.00",
            "close": "102.00",
            "volume": "4",
            "quote_volume": "408.00",
            "trades": 1,
        },
        {
            "open_time": "2026-11-25T12:03:00Z",
            "open": "101.00",
            "high": "101.00",
            "low": "101.00",
            "close": "101.00",
            "volume": "1",
            "quote_volume": "101.00",
            "trades": 1,
        },
    ]


def test_five_minute_buckets_start_on_whole_five_minutes(client):
    tape = Tape(make_instrument())
    tape.trade(at(4, 59), "10.00", "1")
    tape.trade(at(5, 0), "11.00", "1")
    tape.trade(at(9, 59), "12.00", "1")

    body = candles(client, tape.instrument.symbol, interval="5m", end=at(30).isoformat()).json()

    assert [(c["open_time"], c["open"], c["close"], c["trades"]) for c in body["candles"]] == [
        ("2026-11-25T12:00:00Z", "10.00", "10.00", 1),
        ("2026-11-25T12:05:00Z", "11.00", "12.00", 2),
    ]


def test_hourly_and_daily_candles_are_aligned_to_utc(client):
    tape = Tape(make_instrument())
    tape.trade(T0 - dt.timedelta(hours=12, minutes=1), "20.00", "1")  # 23:59 the day before
    tape.trade(T0 - dt.timedelta(minutes=30), "21.00", "1")  # 11:30
    tape.trade(at(30), "22.00", "1")  # 12:30
    end = (T0 + dt.timedelta(hours=1)).isoformat()

    hourly = candles(client, tape.instrument.symbol, interval="1h", end=end).json()["candles"]
    daily = candles(client, tape.instrument.symbol, interval="1d", end=end).json()["candles"]

    assert [c["open_time"] for c in hourly] == [
        "2026-11-24T23:00:00Z",
        "2026-11-25T11:00:00Z",
        "2026-11-25T12:00:00Z",
    ]
    assert [(c["open_time"], c["open"], c["close"], c["volume"]) for c in daily] == [
        ("2026-11-24T00:00:00Z", "20.00", "20.00", "1"),
        ("2026-11-25T00:00:00Z", "21.00", "22.00", "2"),
    ]


def test_end_excludes_later_trades_and_limit_keeps_the_latest_buckets(client):
    tape = Tape(make_instrument())
    for minute in range(6):
        tape.trade(at(minute), f"{100 + minute}.00", "1")

    body = candles(
        client, tape.instrument.symbol, interval="1m", limit="3", end=at(5).isoformat()
    ).json()

    # The trade at 12:05 is at `end`, so not before it; the three latest earlier minutes remain.
    assert [(c["open_time"], c["close"]) for c in body["candles"]] == [
        ("2026-11-25T12:02:00Z", "102.00"),
        ("2026-11-25T12:03:00Z", "103.00"),
        ("2026-11-25T12:04:00Z", "104.00"),
    ]
    # RFC 3339 allows a lower-case "t" and "z" (they were a 400).
    lower = at(5).astimezone(dt.UTC).strftime("%Y-%m-%dt%H:%M:%Sz")
    same = candles(client, tape.instrument.symbol, interval="1m", limit="3", end=lower).json()
    assert same["candles"] == body["candles"]


def test_a_partial_last_bucket_counts_trades_up_to_end(client):
    tape = Tape(make_instrument())
    tape.trade(at(0, 10), "50.00", "1")
    tape.trade(at(0, 30), "55.00", "1")

    body = candles(client, tape.instrument.symbol, interval="1m", end=at(0, 20).isoformat()).json()

    assert [(c["open_time"], c["close"], c["trades"]) for c in body["candles"]] == [
        ("2026-11-25T12:00:00Z", "50.00", 1)
    ]


def test_candles_hold_only_the_instruments_own_trades(client):
    mine, other = Tape(make_instrument()), Tape(make_instrument())
    mine.trade(at(0, 1), "10.00", "1")
    other.trade(at(0, 2), "99.00", "7")

    body = candles(client, mine.instrument.symbol, interval="1m", end=at(1).isoformat()).json()

    assert [(c["high"], c["volume"]) for c in body["candles"]] == [("10.00", "1")]


def test_no_trades_gives_no_candles(client):
    instrument = make_instrument()
    body = candles(client, instrument.symbol, interval="1h").json()
    assert body == {
        "symbol": instrument.symbol,
        "interval": "1h",
        "candles": [],
        "last_trade_id": None,
    }


def test_candles_name_the_last_trade_they_count_so_live_trades_are_folded_once(client):
    # A page loading the candles while trades arrive on the socket could not tell whether a
    # live trade was already in the latest candle: it was counted twice, or dropped.
    tape = Tape(make_instrument())
    first = tape.trade(at(0, 10), "10.00", "1")
    counted = tape.trade(at(1, 10), "11.00", "1")
    after_end = tape.trade(at(2, 10), "12.00", "1")
    Tape(make_instrument()).trade(at(1, 20), "99.00", "1")  # another symbol's, a higher id

    body = candles(client, tape.instrument.symbol, interval="1m", end=at(2).isoformat()).json()

    assert [c["trades"] for c in body["candles"]] == [1, 1]
    assert body["last_trade_id"] == counted.pk
    assert first.pk < counted.pk < after_end.pk
    # The older buckets cut off by `limit` do not matter: the latest counted trade is named.
    one = candles(client, tape.instrument.symbol, interval="1m", limit="1", end=at(3).isoformat())
    assert one.json()["last_trade_id"] == after_end.pk


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"interval": "2m"}, "interval"),
        ({}, "interval"),
        ({"interval": "1m", "limit": "0"}, "limit"),
        ({"interval": "1m", "limit": "1001"}, "limit"),
        ({"interval": "1m", "limit": "ten"}, "limit"),
        ({"interval": "1m", "end": "yesterday"}, "end"),
        # Each of these was a 500: "²" is a digit to str.isdigit but not to int; Django's
        # parse_datetime raises ValueError for an impossible date; a year-1 end overflowed the
        # 1,000 buckets back, a year-9999 one west of UTC overflowed converting to UTC.
        ({"interval": "1m", "limit": "\u00b2"}, "limit"),
        ({"interval": "1d", "end": "2026-02-30T10:00:00Z"}, "end"),
        ({"interval": "1d", "end": "2026-11-26T25:00:00"}, "end"),
        ({"interval": "1d", "end": "2026-11-26T10:00:00+99:00"}, "end"),
        ({"interval": "1d", "end": "0001-01-01T00:00:00Z"}, "end"),
        ({"interval": "1d", "end": "9999-12-31T23:59:59-23:59"}, "end"),
    ],
)
def test_bad_parameters_are_400_with_the_error_shape_naming_the_field(client, params, field):
    instrument = make_instrument()
    response = candles(client, instrument.symbol, **params)
    assert response.status_code == 400
    body = response.json()
    assert (body["error"], body["code"], body["field"]) == ("InvalidParameter", -1102, field)
    assert body["message"]


def test_unknown_symbol_is_refused(client):
    response = candles(client, "NOPE", interval="1m")
    assert response.status_code == 400
    assert response.json()["error"] == "UnknownSymbol"


def test_candles_are_public_and_in_the_openapi_schema(client):
    instrument = make_instrument()
    assert candles(client, instrument.symbol, interval="1d").status_code == 200  # no login
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/json").json()
    operation = schema["paths"]["/api/v1/candles/{symbol}"]["get"]
    assert operation["operationId"] == "candles"
    interval = next(p for p in operation["parameters"] if p["name"] == "interval")
    assert interval["required"] is True
    assert sorted(interval["schema"]["enum"]) == ["1d", "1h", "1m", "5m"]
    answer = operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    fields = schema["components"]["schemas"][answer.rsplit("/", 1)[1]]["properties"]
    assert fields["last_trade_id"]["type"] == "integer"
    assert fields["last_trade_id"]["nullable"] is True


def test_a_24h_change_that_rounds_to_zero_has_no_sign():
    """30000.10 then 29999.99 is -0.0004 %: the ticker and both pages read "-0.00"."""
    from exchange.selectors import ticker_24h

    instrument = make_instrument()
    tape = Tape(instrument)
    tape.trade(at(0, 10), "30000.10", "1")
    tape.trade(at(0, 20), "29999.99", "1")
    stats = ticker_24h(instrument=instrument, now=at(1))
    assert (stats["change_24h"], str(stats["change_pct_24h"])) == (Decimal("-0.11"), "0.00")


def test_an_end_between_two_microseconds_counts_the_trades_before_it_to_the_nanosecond(client):
    # Django's parser cut an end's digits past the sixth: an end 100 ns after a trade left it
    # out (...00.0000001 read as ...00.000000, which the trade is not before), and a client
    # asking up to a trade's executed_at_ns + 1 did not get that trade.
    tape = Tape(make_instrument())
    trade = tape.trade(at(0, 10), "100.00", "2")
    trade.executed_at_ns += 700  # 10.000000700 s: its executed_at, 10.000000, is cut to the µs
    trade.save(update_fields=["executed_at_ns"])
    symbol = tape.instrument.symbol

    def volume(end: str) -> list[str]:
        body = candles(client, symbol, interval="1m", end=end).json()
        return [c["volume"] for c in body["candles"]]

    assert volume("2026-11-25T12:00:10.0000001Z") == []  # 100 ns: before the trade
    assert volume("2026-11-25T12:00:10.0000007Z") == []  # at it: "before end" only
    assert volume("2026-11-25T12:00:10.000000701Z") == ["2"]  # 1 ns after it
    assert volume("2026-11-25T12:00:10.000001Z") == ["2"]

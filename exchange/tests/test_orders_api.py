"""Order entry over HTTP against the real web process and the real shard worker."""

import dataclasses
import datetime as dt
import gzip
import hashlib
import json
import time
from decimal import Decimal

import httpx
import pytest
from django.utils import timezone

from accounts.selectors import ledger_discrepancies
from audit.models import AuditRecord
from conftest import start_web, wait_until
from exchange.api_errors import ApiError
from exchange.embedded_servers import free_port
from exchange.models import Order, Trade
from exchange.order_answers import order_placed_answer
from exchange.order_rules import OrderRequest
from exchange.services import order_amend, order_place
from exchange.tests.api_client import ApiClient, limit, make_instrument, make_user, session_client
from matching.models import Command

pytestmark = [pytest.mark.processes]


@pytest.fixture
def market(exchange_stack, live_db):
    """A fresh symbol and two traders on the running exchange."""
    instrument = make_instrument()
    maker, taker = ApiClient(exchange_stack), ApiClient(exchange_stack)
    return instrument, maker, taker


def test_limit_order_rests_and_is_answered_with_its_state(market):
    instrument, maker, _ = market
    response = maker.place(**limit(instrument.symbol, "buy", "100.00", "10"))
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["status"] == "new"
    assert body["price"] == "100.00"
    assert body["filled_quantity"] == "0"
    assert body["remaining_quantity"] == "10"
    assert body["fills"] == []
    # 10 x 100, the worst-case 0.20% taker fee, and a cent for each fill after the first (the
    # engine rounds each fill's fee up).
    assert body["held_amount"] == "1002.09"
    stored = Order.objects.get(pk=body["order_id"])
    assert stored.status == "new" and stored.user == maker.user


def test_crossing_orders_trade_at_the_makers_price_with_fees(market):
    instrument, maker, taker = market
    resting = maker.place(**limit(instrument.symbol, "sell", "150.45", "10")).json()
    response = taker.place(**limit(instrument.symbol, "buy", "151.00", "4"))
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["status"] == "filled"
    assert body["avg_price"] == "150.450000"
    assert body["fills"] == [
        {
            "trade_id": body["fills"][0]["trade_id"],
            "price": "150.45",
            "quantity": "4",
            "fee": "1.21",  # 601.80 x 0.20% = 1.2036, a fee rounds up
            "liquidity": "taker",
        }
    ]
    maker_view = maker.get(f"/api/v1/orders/{resting['order_id']}").json()
    assert maker_view["status"] == "partially_filled"
    assert maker_view["filled_quantity"] == "4"
    assert maker_view["remaining_quantity"] == "6"
    assert maker_view["fills"][0]["fee"] == "0.61"  # 601.80 x 0.10% = 0.6018, rounds up
    assert maker_view["fills"][0]["liquidity"] == "maker"
    trade = Trade.objects.get(pk=body["fills"][0]["trade_id"])
    assert (trade.maker_user, trade.taker_user, trade.taker_side) == (
        maker.user,
        taker.user,
        "buy",
    )


def test_market_order_walks_levels_reports_vwap_and_cancels_the_rest(market):
    instrument, maker, taker = market
    for price, quantity in (("100.00", "2"), ("100.50", "3")):
        assert maker.place(**limit(instrument.symbol, "sell", price, quantity)).status_code == 201
    response = taker.place(symbol=instrument.symbol, side="buy", order_type="market", quantity="10")
    assert response.status_code == 201, response.text
    body = response.json()
    assert [(f["price"], f["quantity"]) for f in body["fills"]] == [
        ("100.00", "2"),
        ("100.50", "3"),
    ]
    assert body["filled_quantity"] == "5"
    assert body["avg_price"] == "100.300000"  # (200 + 301.50) / 5
    assert body["status"] == "cancelled"
    assert body["reason"] == "no_liquidity"


def test_market_buy_by_quote_amount_spends_at_most_that(market):
    instrument, maker, taker = market
    maker.place(**limit(instrument.symbol, "sell", "10.00", "100"))
    body = taker.place(
        symbol=instrument.symbol, side="buy", order_type="market", quote_quantity="55.00"
    ).json()
    assert body["filled_quantity"] == "5"  # 6 would cost 60.12 with the fee
    assert body["status"] == "filled"
    assert body["quote_quantity"] == "55.00"


def test_ioc_fills_what_crosses_and_cancels_the_remainder(market):
    instrument, maker, taker = market
    maker.place(**limit(instrument.symbol, "sell", "20.00", "3"))
    body = taker.place(**limit(instrument.symbol, "buy", "20.00", "5", time_in_force="IOC")).json()
    assert (body["filled_quantity"], body["status"], body["reason"]) == (
        "3",
        "cancelled",
        "ioc_remainder",
    )


def test_a_self_trade_shows_both_of_its_fills(market):
    # With STP mode none a user trades with itself: /fills showed the maker side only, so the
    # taker order's fill and fee were missing from it.
    instrument, maker, _ = market
    sell = maker.place(**limit(instrument.symbol, "sell", "10.00", "5")).json()
    buy = maker.place(**limit(instrument.symbol, "buy", "10.00", "3", stp_mode="none")).json()
    assert buy["status"] == "filled", buy
    fills = maker.get("/api/v1/fills", symbol=instrument.symbol).json()["results"]
    assert [(f["order_id"], f["side"], f["liquidity"], f["fee"]) for f in fills] == [
        (buy["order_id"], "buy", "taker", "0.06"),
        (sell["order_id"], "sell", "maker", "0.03"),
    ]
    assert fills[0]["trade_id"] == fills[1]["trade_id"]


def test_fok_that_cannot_fill_is_rejected_and_stored_as_rejected(market):
    instrument, maker, taker = market
    maker.place(**limit(instrument.symbol, "sell", "20.00", "3"))
    response = taker.place(**limit(instrument.symbol, "buy", "20.00", "5", time_in_force="FOK"))
    assert response.status_code == 400
    error = response.json()
    assert error["error"] == "FokUnfillable"
    stored = Order.objects.get(pk=error["order_id"])
    assert (stored.status, stored.reason) == ("rejected", "fok_unfillable")
    assert not Trade.objects.filter(taker_order=stored).exists()


def test_post_only_that_would_cross_is_rejected_with_the_price(market):
    instrument, maker, taker = market
    maker.place(**limit(instrument.symbol, "sell", "150.45", "1"))
    response = taker.place(**limit(instrument.symbol, "buy", "151.00", "1", post_only=True))
    assert response.status_code == 400
    error = response.json()
    assert error["error"] == "PostOnlyWouldMatch"
    assert error["code"] == -2010
    assert error["message"] == "Order would match immediately at 150.45"
    assert Order.objects.get(pk=error["order_id"]).status == "rejected"
    # Read back (as after a 202), the order says why: it had read rejected / post_only only.
    shown = taker.get(f"/api/v1/orders/{error['order_id']}").json()
    assert (shown["status"], shown["reason"]) == ("rejected", "post_only")
    assert shown["rejection"] == {key: error[key] for key in ("error", "code", "message")}
    assert maker.get("/api/v1/orders").json()["results"][0]["rejection"] is None


def test_post_only_adjust_reprices_one_tick_behind_the_best_offer(market):
    instrument, maker, taker = market
    maker.place(**limit(instrument.symbol, "sell", "150.45", "1"))
    body = taker.place(
        **limit(instrument.symbol, "buy", "151.00", "1", post_only_adjust=True)
    ).json()
    assert (body["status"], body["price"]) == ("new", "150.44")


def test_iceberg_shows_only_its_display_quantity_in_the_book(market):
    instrument, maker, _ = market
    body = maker.place(
        **limit(instrument.symbol, "sell", "30.00", "100", display_quantity="10")
    ).json()
    assert body["status"] == "new"
    book = wait_until(
        lambda: (b := maker.get(f"/api/v1/orderbook/{instrument.symbol}").json())["asks"] and b,
        timeout=10,
    )
    assert book["asks"] == [{"price": "30.00", "quantity": "10", "orders": 1}]
    # Amended below its display quantity it shows all of it (it said display 10 of 5).
    amended = maker.patch(f"/api/v1/orders/{body['order_id']}", {"quantity": "5"}).json()
    assert (amended["quantity"], amended["display_quantity"]) == ("5", "5")


def test_an_iceberg_slice_meets_the_instruments_minimums_as_an_order_does(market):
    """Each slice of an iceberg trades on its own: slices below the minimum notional split
    every taker meeting them into dust fills, each paying a fee rounded up to a whole minor
    unit (100 fills of 1 x 0.50 had charged a taker 1.00 of fees on 50.00, ten times its 0.2 %,
    and the maker as much)."""
    _, maker, taker = market
    instrument = make_instrument(min_quantity=Decimal("2"), min_notional=Decimal("5.00"))
    symbol = instrument.symbol
    for display, error in (("1", "QuantityBelowMinimum"), ("9", "NotionalTooSmall")):
        refused = maker.place(**limit(symbol, "sell", "0.50", "100", display_quantity=display))
        assert refused.status_code == 400, refused.text
        assert (refused.json()["error"], refused.json()["field"]) == (error, "display_quantity")
    assert not Order.objects.filter(instrument=instrument).exists()
    placed = maker.place(**limit(symbol, "sell", "0.50", "100", display_quantity="10"))
    assert placed.status_code == 201, placed.text
    # Repriced, its slices would be worth less than the minimum: refused as a new order is.
    order_id = placed.json()["order_id"]
    repriced = maker.patch(f"/api/v1/orders/{order_id}", {"price": "0.49"})
    assert repriced.status_code == 400, repriced.text
    assert (repriced.json()["error"], repriced.json()["field"]) == ("NotionalTooSmall", "price")
    reduced = maker.patch(f"/api/v1/orders/{order_id}", {"quantity": "12"})
    assert reduced.status_code == 200, reduced.text
    bought = taker.place(**limit(symbol, "buy", "0.50", "12"))
    assert bought.status_code == 201, bought.text
    assert [fill["quantity"] for fill in bought.json()["fills"]] == ["10", "2"]


def test_stop_loss_triggers_on_the_last_trade_price(market):
    instrument, maker, taker = market
    stop = taker.place(
        symbol=instrument.symbol,
        side="sell",
        order_type="stop_loss",
        stop_price="95.00",
        quantity="2",
    ).json()
    assert stop["status"] == "untriggered"
    maker.place(**limit(instrument.symbol, "buy", "94.00", "5"))
    maker.place(**limit(instrument.symbol, "buy", "95.00", "1"))
    taker2 = ApiClient(maker.http.base_url)
    taker2.place(symbol=instrument.symbol, side="sell", order_type="market", quantity="1")
    triggered = wait_until(
        lambda: (
            (o := taker.get(f"/api/v1/orders/{stop['order_id']}").json())["status"]
            in ("filled", "cancelled")
            and o
        ),
        timeout=10,
    )
    assert triggered["status"] == "filled"
    assert triggered["fills"][0]["price"] == "94.00"


def test_stop_limit_becomes_a_resting_limit_when_triggered(market):
    instrument, maker, taker = market
    stop = taker.place(
        symbol=instrument.symbol,
        side="buy",
        order_type="stop_limit",
        stop_price="105.00",
        limit_price="104.00",
        quantity="2",
    ).json()
    assert stop["status"] == "untriggered"
    assert stop["price"] == "104.00"
    maker.place(**limit(instrument.symbol, "sell", "105.00", "1"))
    ApiClient(maker.http.base_url).place(
        symbol=instrument.symbol, side="buy", order_type="market", quantity="1"
    )
    resting = wait_until(
        lambda: (
            (o := taker.get(f"/api/v1/orders/{stop['order_id']}").json())["status"] == "new" and o
        ),
        timeout=10,
    )
    assert resting["remaining_quantity"] == "2"


def test_gtd_order_expires_at_its_time(market):
    instrument, maker, _ = market
    from matching.services import shard_expire_due_enqueue

    expire_at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
    body = maker.place(
        **limit(
            instrument.symbol,
            "buy",
            "10.00",
            "1",
            time_in_force="GTD",
            expire_at=expire_at.isoformat().replace("+00:00", "Z"),
        )
    ).json()
    assert body["status"] == "new"
    time.sleep(1.2)
    shard_expire_due_enqueue(shard=instrument.shard, now_ns=time.time_ns())
    expired = wait_until(
        lambda: (
            (o := maker.get(f"/api/v1/orders/{body['order_id']}").json())["status"] == "expired"
            and o
        ),
        timeout=10,
    )
    assert expired["reason"] == "gtd_expired"


def test_gtd_order_up_to_the_horizon_is_accepted_and_one_past_it_refused(market):
    instrument, maker, _ = market
    now = dt.datetime.now(dt.UTC)
    for days, status in ((364, 201), (366, 400)):
        expire_at = (now + dt.timedelta(days=days)).isoformat().replace("+00:00", "Z")
        response = maker.place(
            **limit(
                instrument.symbol, "buy", "10.00", "1", time_in_force="GTD", expire_at=expire_at
            )
        )
        assert response.status_code == status, response.text
    assert response.json() == {
        "error": "ExpireAtTooFar",
        "code": -1123,
        "message": "expire_at must be at most 365 days ahead",
        "field": "expire_at",
    }


def test_day_order_expires_at_the_session_close(market):
    instrument, maker, _ = market
    body = maker.place(**limit(instrument.symbol, "buy", "10.00", "1", time_in_force="DAY")).json()
    tomorrow = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).date()
    assert body["expire_at"] == f"{tomorrow.isoformat()}T00:00:00Z"


def test_self_trade_prevention_cancels_the_resting_order_by_default(market):
    instrument, maker, _ = market
    resting = maker.place(**limit(instrument.symbol, "sell", "50.00", "2")).json()
    incoming = maker.place(**limit(instrument.symbol, "buy", "50.00", "1")).json()
    assert incoming["status"] == "new"
    assert incoming["fills"] == []
    cancelled = maker.get(f"/api/v1/orders/{resting['order_id']}").json()
    assert (cancelled["status"], cancelled["reason"]) == ("cancelled", "stp")


def test_quantity_taken_off_by_decrement_both_shows_as_cancelled_quantity(market):
    # The 4 decremented lots were in no field: the sell read "filled", 6 of 10 filled.
    instrument, maker, taker = market
    sell = maker.place(**limit(instrument.symbol, "sell", "50.00", "10", stp_mode="none")).json()
    assert sell["cancelled_quantity"] == "0"
    buy = maker.place(**limit(instrument.symbol, "buy", "50.00", "4", stp_mode="decrement_both"))
    assert (buy.json()["status"], buy.json()["reason"]) == ("cancelled", "stp"), buy.text
    assert (buy.json()["filled_quantity"], buy.json()["cancelled_quantity"]) == ("0", "4")
    decremented = maker.get(f"/api/v1/orders/{sell['order_id']}").json()
    assert (decremented["status"], decremented["remaining_quantity"]) == ("new", "6")
    assert decremented["cancelled_quantity"] == "4"
    # Its history says why (it had read "order.amended" by the system, with no reason).
    history = AuditRecord.objects.filter(order_id=sell["order_id"]).order_by("seq")
    prevented = history.get(event_type="trade.self_trade_prevented")
    assert (prevented.payload["role"], prevented.payload["mode"]) == ("resting", "decrement_both")
    reduced = history.get(event_type="order.reduced")
    assert (reduced.payload["why"], reduced.payload["remaining"]) == ("stp", "6")
    assert not history.filter(event_type="order.amended").exists()
    taken = taker.place(**limit(instrument.symbol, "buy", "50.00", "6", time_in_force="IOC"))
    assert taken.json()["status"] == "filled", taken.text
    ended = maker.get(f"/api/v1/orders/{sell['order_id']}").json()
    assert (ended["status"], ended["filled_quantity"], ended["cancelled_quantity"]) == (
        "filled", "6", "4"
    )  # fmt: skip
    by_quote = taker.place(symbol=instrument.symbol, side="buy", order_type="market",
                           quote_quantity="10.00").json()  # fmt: skip
    assert by_quote["cancelled_quantity"] is None  # no quantity to divide


def test_cancel_amend_and_mass_cancel(market):
    instrument, maker, _ = market
    first = maker.place(**limit(instrument.symbol, "buy", "10.00", "5")).json()
    second = maker.place(**limit(instrument.symbol, "buy", "11.00", "5")).json()
    amended = maker.patch(f"/api/v1/orders/{first['order_id']}", {"quantity": "3"})
    assert amended.status_code == 200, amended.text
    assert (amended.json()["quantity"], amended.json()["remaining_quantity"]) == ("3", "3")
    repriced = maker.patch(f"/api/v1/orders/{first['order_id']}", {"price": "10.50"}).json()
    assert (repriced["price"], repriced["quantity"]) == ("10.50", "3")
    cancelled = maker.delete(f"/api/v1/orders/{second['order_id']}")
    assert cancelled.status_code == 200
    assert (cancelled.json()["status"], cancelled.json()["reason"]) == ("cancelled", "user")
    again = maker.delete(f"/api/v1/orders/{second['order_id']}")
    assert again.status_code == 400 and again.json()["error"] == "OrderNotOpen"
    third = maker.place(**limit(instrument.symbol, "sell", "90.00", "1")).json()
    mass = maker.delete("/api/v1/orders", symbol=instrument.symbol)
    assert mass.status_code == 202
    for order_id in (first["order_id"], third["order_id"]):
        assert maker.get(f"/api/v1/orders/{order_id}").json()["status"] == "cancelled"
        # Its history says which command ended it: the mass cancel whose request record
        # (actor, address, key) names that command (it read as the user's own cancel).
        ended = AuditRecord.objects.get(event_type="order.cancelled", order_id=order_id)
        assert ended.payload["command"] == "mass_cancel"
        assert ended.payload["command_id"] in mass.json()["command_ids"]
        # Who asked, and from where, is in its own history too (helper 50).
        asked = AuditRecord.objects.get(event_type="order.cancel_requested", order_id=order_id)
        assert asked.payload["mass_cancel"] and asked.channel == "rest"
        assert asked.payload["command_ids"] == mass.json()["command_ids"]
    single = AuditRecord.objects.get(event_type="order.cancelled", order_id=second["order_id"])
    assert single.payload["command"] == "cancel"
    open_orders = maker.get("/api/v1/orders", symbol=instrument.symbol, status="open").json()
    assert open_orders["results"] == []
    closed = maker.get("/api/v1/orders", symbol=instrument.symbol, status="closed").json()
    assert [o["order_id"] for o in closed["results"]] == [
        third["order_id"], second["order_id"], first["order_id"]
    ]  # fmt: skip


def test_an_amend_the_engine_refuses_is_a_400_and_leaves_the_order_as_it_was(market):
    instrument, maker, taker = market
    taker.place(**limit(instrument.symbol, "buy", "100.00", "1"))
    resting = maker.place(**limit(instrument.symbol, "sell", "101.00", "2", post_only=True))
    order_id = resting.json()["order_id"]
    refused = maker.patch(f"/api/v1/orders/{order_id}", {"price": "100.00"})
    assert refused.status_code == 400
    # An integer, as in every other answer (was the id as a string in error bodies only).
    assert (refused.json()["error"], refused.json()["order_id"]) == ("PostOnlyWouldMatch", order_id)
    # As when placing, the price it would have matched at (was "the matching engine refused
    # the change").
    assert refused.json()["message"] == "Order would match immediately at 100.00"
    unchanged = maker.get(f"/api/v1/orders/{order_id}").json()
    assert (unchanged["status"], unchanged["price"]) == ("new", "101.00")
    # Audited as a refused amend (not the order's rejection), the price written as a price
    # (it was the engine's tick count, 10000).
    refused_record = AuditRecord.objects.get(event_type="order.amend_refused", order_id=order_id)
    assert (refused_record.user_id, refused_record.payload["detail"]) == (maker.user.pk, "100.00")
    requested = AuditRecord.objects.get(event_type="order.amend_requested", order_id=order_id)
    assert (requested.payload["price"], requested.payload["previous_price"]) == ("100.00", "101.00")


def test_an_amend_whose_trades_trigger_a_fok_stop_that_cannot_fill_is_applied(market):
    # The stop's rejection comes among the amend's events: it had been taken for the amend's
    # own, so the amend that traded was answered 400 FokUnfillable, its new quantity was not
    # stored and the hold it added was given back, and the worker's batch then failed to
    # commit (the order's hold went negative), stalling the shard.
    instrument, maker, taker = market
    symbol = instrument.symbol
    maker.place(**limit(symbol, "sell", "100.00", "1"))
    taker.place(**limit(symbol, "buy", "100.00", "1"))  # the last price is 100.00
    stopper = ApiClient(maker.http.base_url)
    stop = stopper.place(
        symbol=symbol, side="buy", order_type="stop_loss", stop_price="101.00", quantity="50",
        time_in_force="FOK",
    ).json()  # fmt: skip
    assert stop["status"] == "untriggered"
    maker.place(**limit(symbol, "sell", "101.00", "2"))
    resting = taker.place(**limit(symbol, "buy", "99.00", "1")).json()
    amended = taker.patch(
        f"/api/v1/orders/{resting['order_id']}", {"price": "101.00", "quantity": "3"}
    )
    assert amended.status_code == 200, amended.text
    body = amended.json()
    assert (body["status"], body["quantity"], body["filled_quantity"]) == (
        "partially_filled", "3", "2"
    )  # fmt: skip
    assert body["remaining_quantity"] == "1"
    stopped = stopper.get(f"/api/v1/orders/{stop['order_id']}").json()
    assert (stopped["status"], stopped["rejection"]["error"]) == ("rejected", "FokUnfillable")
    # What the rest needs is held: 1 x 101.00 with the 0.20% fee rounded up.
    assert body["held_amount"] == "303.62"
    usd = {b["asset"]: b for b in taker.get("/api/v1/balances").json()}["USD"]
    assert usd["held"] == "101.21"
    assert ledger_discrepancies() == {}


@pytest.mark.django_db
def test_a_market_order_on_its_way_to_the_engine_cannot_be_amended():
    # Open (pending_new) until the engine fills or ends it: a market buy by quote_quantity has
    # no quantity, and an amend of one was a TypeError answered 500.
    instrument, user = make_instrument(), make_user()
    by_quote = order_place(
        user=user,
        request=OrderRequest(
            symbol=instrument.symbol, side="buy", order_type="market",
            quote_quantity=Decimal("100.00"),
        ),
    ).order  # fmt: skip
    assert by_quote.status == Order.Status.PENDING_NEW
    for change in ({"quantity": Decimal(5)}, {"price": Decimal("10.00")}):
        with pytest.raises(ApiError) as refused:
            order_amend(order=by_quote, actor=user, **change)
        assert (refused.value.error, refused.value.field) == ("InvalidCombination", *change)
    assert not Command.objects.filter(order_id=by_quote.pk, kind=Command.Kind.AMEND).exists()


def test_an_amend_above_the_engines_highest_price_is_refused_before_it_is_stored(market):
    instrument, maker, _ = market
    order_id = maker.place(**limit(instrument.symbol, "sell", "10.00", "1")).json()["order_id"]
    refused = maker.patch(f"/api/v1/orders/{order_id}", {"price": "10000000000.01"})
    assert refused.status_code == 400, refused.text
    # Was sent to the engine, which refused it (no field) after an amend was requested.
    assert (refused.json()["error"], refused.json()["field"]) == ("PriceOutsideBand", "price")
    assert "10000000000.00" in refused.json()["message"]
    assert not AuditRecord.objects.filter(
        event_type="order.amend_requested", order_id=order_id
    ).exists()
    assert maker.get(f"/api/v1/orders/{order_id}").json()["price"] == "10.00"


def test_client_order_id_is_idempotent_and_refuses_a_different_body(market):
    instrument, maker, _ = market
    body = limit(instrument.symbol, "buy", "10.00", "1", client_order_id="my-order-1")
    first = maker.place(**body)
    assert first.status_code == 201
    replay = maker.place(**body)
    assert replay.status_code == 200
    assert replay.json()["order_id"] == first.json()["order_id"]
    # The same numbers written otherwise are the same order (was a 409).
    rewritten = maker.place(**{**body, "price": "10.0", "quantity": "1.000"})
    assert rewritten.status_code == 200, rewritten.text
    assert rewritten.json()["order_id"] == first.json()["order_id"]
    # An order stored before digests were canonical (each value as written) still replays.
    written = {"symbol": body["symbol"], "side": "buy", "order_type": "limit", "quantity": "1",
               "price": "10.00", "stop_price": None, "quote_quantity": None,
               "time_in_force": "GTC", "expire_at": None, "post_only": "False",
               "post_only_adjust": "False", "display_quantity": None, "stp_mode": "",
               "client_order_id": "my-order-1"}  # fmt: skip
    legacy = hashlib.sha256(json.dumps(written, sort_keys=True).encode()).hexdigest()
    Order.objects.filter(pk=first.json()["order_id"]).update(request_digest=legacy)
    assert maker.place(**body).status_code == 200
    conflict = maker.place(**{**body, "quantity": "2"})
    assert conflict.status_code == 409
    assert conflict.json()["error"] == "DuplicateClientOrderId"
    by_client_id = maker.get("/api/v1/orders/client/my-order-1").json()
    assert by_client_id["order_id"] == first.json()["order_id"]
    assert Order.objects.filter(user=maker.user, client_order_id="my-order-1").count() == 1
    assert maker.delete("/api/v1/orders/client/my-order-1").json()["status"] == "cancelled"


def test_a_client_order_id_retry_after_the_market_moved_returns_the_stored_order(
    exchange_stack, live_db
):
    # A client that got no answer (its web process killed, a timeout) retries with the same
    # client_order_id. The retry was checked against the market as it is now, before the
    # replay was looked up: the last price had moved, and the retry of the resting order was
    # refused 400 PriceOutsideBand, so the client took a live order for one never placed.
    instrument = make_instrument(price_band_pct=Decimal("10"))
    maker, seller, taker = (ApiClient(exchange_stack) for _ in range(3))
    body = limit(instrument.symbol, "buy", "10.00", "1", client_order_id="band-retry")
    first = maker.place(**body)
    assert (first.status_code, first.json()["status"]) == (201, "new"), first.text
    seller.place(**limit(instrument.symbol, "sell", "20.00", "1"))
    traded = taker.place(**limit(instrument.symbol, "buy", "20.00", "1"))
    assert traded.json()["status"] == "filled", traded.text
    wait_until(  # order entry now checks prices against the last one, 20.00
        lambda: taker.place(**limit(instrument.symbol, "buy", "10.00", "1")).status_code == 400,
        timeout=10,
    )
    retry = maker.place(**body)
    assert retry.status_code == 200, retry.text
    assert (retry.json()["order_id"], retry.json()["status"]) == (first.json()["order_id"], "new")
    assert Order.objects.filter(user=maker.user, client_order_id="band-retry").count() == 1
    # Another body under that client_order_id is still refused for what is wrong with it.
    other = maker.place(**{**body, "quantity": "2"})
    assert (other.status_code, other.json()["error"]) == (400, "PriceOutsideBand"), other.text


def test_a_gtd_order_retried_after_its_expiry_returns_the_stored_order(market):
    # The retry of a GTD order that had been stored came after its expire_at: refused 400
    # ExpireAtInPast instead of answered with the order (which had rested, and could have
    # traded, until then).
    instrument, maker, _ = market
    placed_at = timezone.now()
    request = OrderRequest(
        symbol=instrument.symbol,
        side="buy",
        order_type="limit",
        price=Decimal("10.00"),
        quantity=Decimal("1"),
        time_in_force="GTD",
        expire_at=placed_at + dt.timedelta(seconds=5),
        client_order_id="gtd-retry",
    )
    first = order_place(user=maker.user, request=request, now=placed_at)
    assert first.created
    retry = order_place(user=maker.user, request=request, now=placed_at + dt.timedelta(minutes=1))
    assert (retry.order.pk, retry.created) == (first.order.pk, False)
    # A new client_order_id with that expiry is refused as before.
    with pytest.raises(ApiError) as refused:
        order_place(
            user=maker.user,
            request=dataclasses.replace(request, client_order_id="gtd-new"),
            now=placed_at + dt.timedelta(minutes=1),
        )
    assert refused.value.error == "ExpireAtInPast"


def test_another_users_order_is_a_404(market):
    instrument, maker, taker = market
    order = maker.place(**limit(instrument.symbol, "buy", "10.00", "1")).json()
    for method in (taker.get, taker.delete):
        response = method(f"/api/v1/orders/{order['order_id']}")
        assert response.status_code == 404
        assert response.json()["error"] == "OrderNotFound"
    assert taker.patch(f"/api/v1/orders/{order['order_id']}", {"quantity": "2"}).status_code == 404
    assert Order.objects.get(pk=order["order_id"]).status == "new"


def test_a_path_no_endpoint_matches_gets_the_apis_json_404(market):
    _, maker, _ = market
    for method, path in [
        ("GET", "/api/v1/orders/-1"),  # not an <int> id: no route, not an unknown order
        ("DELETE", "/api/v1/orders/12abc"),
        ("PATCH", "/api/v1/orders/-1"),
        ("GET", "/api/v1/no-such-endpoint"),
        ("POST", "/api/v2/orders"),
    ]:
        response = maker.http.request(method, path, json={} if method != "GET" else None)
        assert response.status_code == 404, (method, path, response.text)
        assert response.headers["content-type"] == "application/json"
        assert response.json() == {
            "error": "NotFound",
            "code": -1005,
            "message": f"no API endpoint {method} {path} (the endpoints are listed at /api/docs/)",
        }
    # A long path is named by its first 77 characters, not sent back whole.
    long_path = "/api/v1/" + "x" * 5000
    answer = maker.http.get(long_path).json()
    assert answer["message"] == (
        f"no API endpoint GET {long_path[:77]}... (the endpoints are listed at /api/docs/)"
    )
    # The API reference pages keep their slash-appending redirect.
    assert maker.http.get("/api/docs").status_code == 301
    # A Host the exchange does not serve: Django's 400 page, HTML, under /api/ too.
    for path in ("/api/v1/time", "/api/v1/orders"):
        refused = httpx.get(f"{maker.http.base_url}{path}", headers={"Host": "evil.example"})
        assert refused.status_code == 400 and refused.json()["error"] == "MalformedRequest"
        assert "evil.example" not in refused.text
    assert (
        "text/html"
        in httpx.get(f"{maker.http.base_url}/", headers={"Host": "evil.example"}).headers[
            "content-type"
        ]
    )


def test_a_nul_character_in_the_path_or_query_is_a_400_not_a_500(market):
    # PostgreSQL refuses NUL in text: each of these reached a query with it and failed (500).
    instrument, maker, _ = market
    maker.place(**limit(instrument.symbol, "buy", "10.00", "1", client_order_id="nul-1"))
    for method, path, params in [
        ("GET", "/api/v1/orders/client/nul-1%00", None),
        ("DELETE", "/api/v1/orders/client/nul-1%00", None),
        ("GET", "/api/v1/orders", {"symbol": f"{instrument.symbol}\x00"}),
        ("DELETE", "/api/v1/orders", {"symbol": f"{instrument.symbol}\x00"}),
        ("GET", "/api/v1/fills", {"symbol": "\x00"}),
        ("GET", f"/api/v1/orderbook/{instrument.symbol}%00", None),
        ("GET", "/api/v1/ledger", {"asset": "USD\x00"}),
    ]:
        response = maker.http.request(method, path, params=params)
        assert response.status_code == 400, (method, path, response.text)
        assert response.json() == {
            "error": "MalformedRequest",
            "code": -1100,
            "message": "the path or the query string holds a NUL character (%00), "
            "which nothing accepts",
        }
    assert Order.objects.get(user=maker.user, client_order_id="nul-1").status == "new"
    # Outside the API, a plain 400 (was a 500 from the trade page's symbol lookup).
    assert httpx.get(f"{maker.http.base_url}/trade/X%00/").status_code == 400


@pytest.mark.parametrize(
    ("path", "params", "field"),
    [
        ("/api/v1/orders", {"start": "2026-02-30T10:00:00Z"}, "start"),
        ("/api/v1/orders", {"end": "2026-11-26T25:00:00"}, "end"),
        ("/api/v1/orders", {"start": "9999-12-31T23:59:59-23:59"}, "start"),
        ("/api/v1/orderbook/{symbol}", {"depth": "\u00b2"}, "depth"),
        ("/api/v1/orders", {"start": "\u0662\u0660\u0662\u0668-01-01T00:00:00Z"}, "start"),
        # A bad page size had been the default page, an unknown status an empty list.
        ("/api/v1/orders", {"limit": "abc"}, "limit"),
        ("/api/v1/orders", {"limit": "0"}, "limit"),
        ("/api/v1/orders", {"limit": "1001"}, "limit"),
        ("/api/v1/fills", {"limit": "-1"}, "limit"),
        ("/api/v1/trades/{symbol}", {"limit": "\u0661"}, "limit"),
        ("/api/v1/orders", {"status": "bogus"}, "status"),
        ("/api/v1/orders", {"end": "\uff12\uff10\uff12\uff16-01-01T00:00:00Z"}, "end"),
        # Over the 4,300 digits int() reads (CPython's limit).
        ("/api/v1/orders", {"limit": "9" * 5000}, "limit"),
        ("/api/v1/orderbook/{symbol}", {"depth": "0" * 5000 + "51"}, "depth"),
        ("/api/v1/candles/{symbol}", {"interval": "1m", "limit": "9" * 5000}, "limit"),
    ],
)
def test_an_impossible_time_a_non_ascii_digit_or_a_bad_filter_is_a_400(market, path, params, field):
    instrument, maker, _ = market
    response = maker.get(path.format(symbol=instrument.symbol), **params)
    assert response.status_code == 400, response.text  # each was a 500
    body = response.json()
    assert (body["error"], body["field"]) == ("InvalidParameter", field)


def test_an_orders_time_range_that_ends_before_it_starts_is_a_400(market):
    _, maker, _ = market
    response = maker.get("/api/v1/orders", start="2027-01-01T00:00:00Z", end="2026-01-01T00:00:00Z")
    assert response.status_code == 400, response.text  # had listed nothing
    body = response.json()
    assert (body["error"], body["code"], body["field"]) == ("InvalidTimeRange", -1131, "start")


def test_a_body_nested_deeper_than_the_json_decoder_goes_is_a_400(market):
    _, maker, _ = market
    response = maker.http.post(
        "/api/v1/orders", content=b"[" * 100_000, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400, response.text  # was a RecursionError: a 500
    assert response.json()["error"] == "MalformedRequest"


def test_a_lone_surrogate_in_a_body_is_a_400_not_a_500(market):
    # Valid JSON text ("\\ud800") that Python decodes into a string UTF-8 cannot encode: the
    # choice fields' errors and the unknown-field error that echoed it could not be rendered.
    instrument, maker, _ = market
    order = maker.place(**limit(instrument.symbol, "buy", "10.00", "1")).json()
    body = limit(instrument.symbol, "buy", "10.00", "1")
    for method, path, sent in [
        ("POST", "/api/v1/orders", {**body, "side": "\ud800"}),
        ("POST", "/api/v1/orders", {**body, "time_in_force": "\udfff"}),
        ("POST", "/api/v1/orders", {**body, "\ud800": 1}),
        ("PATCH", f"/api/v1/orders/{order['order_id']}", {"\udbff": "1"}),
    ]:
        response = maker.http.request(
            method, path, content=json.dumps(sent), headers={"content-type": "application/json"}
        )
        assert response.status_code == 400, (sent, response.text)
        assert response.json()["error"] == "MalformedRequest"
        assert "lone UTF-16 surrogate" in response.json()["message"]
    assert Order.objects.filter(user=maker.user).count() == 1
    # A surrogate pair (an escaped emoji) is text: refused by the field's own rule.
    paired = {**body, "client_order_id": "\ud83d\ude00"}
    response = maker.http.post(
        "/api/v1/orders", content=json.dumps(paired), headers={"content-type": "application/json"}
    )
    assert response.status_code == 400, response.text
    assert (response.json()["error"], response.json()["field"]) == (
        "InvalidParameter", "client_order_id"
    )  # fmt: skip


def test_over_a_thousand_query_parameters_is_a_400(market):
    _, maker, _ = market
    response = maker.get("/api/v1/orders", **{f"p{i}": "1" for i in range(1500)})
    assert response.status_code == 400, response.text  # was a 500 (TooManyFieldsSent)
    assert response.json()["error"] == "MalformedRequest"


def test_an_unknown_symbol_is_named_not_echoed_whole(market):
    _, maker, _ = market
    response = maker.get(f"/api/v1/orderbook/{'A' * 5000}")
    assert response.status_code == 400
    message = response.json()["message"]
    assert message.startswith("unknown symbol 'AAAA") and len(message) < 120


def test_a_crafted_cursor_is_a_404_and_a_served_one_pages_on(market):
    import base64

    instrument, maker, _ = market
    for price in ("1.00", "1.01", "1.02"):
        maker.place(**limit(instrument.symbol, "buy", price, "1"))
    first = maker.get("/api/v1/orders", limit="2").json()
    served = first["next"].split("cursor=")[1].split("&")[0]
    rest = maker.get("/api/v1/orders", limit="2", cursor=httpx.URL(f"?c={served}").params["c"])
    assert len(rest.json()["results"]) == 1
    # The cursor is opaque but not signed: each of these reached the id comparison (500).
    for crafted in ("p=abc", "p=1.5", "p=1e5", "r=1&p=abc", "p=" + "9" * 30, "p=" + "9" * 5000):
        cursor = base64.b64encode(crafted.encode()).decode()
        for path in ("/api/v1/orders", "/api/v1/fills", f"/api/v1/trades/{instrument.symbol}"):
            response = maker.get(path, cursor=cursor)
            assert response.status_code == 404, (crafted, path, response.text)
            assert response.json()["message"] == "Invalid cursor"
    # Not base64 of a cursor at all: each served the first page, starting the client over.
    # An empty cursor is the start, as DRF writes one (a crafted offset cursor's `next`).
    assert maker.get("/api/v1/orders", cursor="").status_code == 200
    for garbled in ("!!", "AAAAAAAA", base64.b64encode(b"x=1").decode(), served + "!"):
        for path in ("/api/v1/orders", "/api/v1/ledger"):
            response = maker.get(path, cursor=garbled)
            assert response.status_code == 404, (garbled, path, response.text)


def test_a_body_over_the_upload_limit_is_a_413(market):
    instrument, maker, _ = market
    body = {**limit(instrument.symbol, "buy", "1.00", "1"), "pad": "x" * 3_000_000}
    response = maker.http.post("/api/v1/orders", json=body)
    assert response.status_code == 413, response.text  # was a 500 (RequestDataTooBig)
    assert response.json() == {
        "error": "PayloadTooLarge",
        "code": -1101,
        "message": "the request body is over 2,621,440 bytes",
    }
    assert not Order.objects.filter(user=maker.user).exists()


def gtd_at(expire_at: str) -> dict:
    return {"time_in_force": "GTD", "expire_at": expire_at}


MARKET_BUY_BY_QUOTE_FOK = {
    "order_type": "market",
    "price": None,
    "quantity": None,
    "quote_quantity": "300.00",
    "time_in_force": "FOK",
}
STOP_LIMIT_SELL_ABOVE_THE_ENGINE = {
    "order_type": "stop_limit",
    "side": "sell",
    "price": None,
    "stop_price": "5.00",
    "limit_price": "10000000000.01",
}
BAD_INPUTS = [
    ({"symbol": "NOPE"}, "UnknownSymbol", "symbol"),
    # Trimmed and placed on the symbol: kept as sent, as every other field is.
    ({"symbol": "__SYMBOL__\n"}, "UnknownSymbol", "symbol"),
    ({"symbol": " __SYMBOL__"}, "UnknownSymbol", "symbol"),
    ({"symbol": 5}, "InvalidParameter", "symbol"),
    (gtd_at(" 2030-01-01T00:00:00Z"), "InvalidParameter", "expire_at"),
    ({"price": "10.001"}, "PriceOffTick", "price"),
    ({"quantity": "1.5"}, "QuantityOffLot", "quantity"),
    ({"quantity": "0"}, "InvalidNumber", "quantity"),
    ({"price": "0.01", "quantity": "1"}, "NotionalTooSmall", "quantity"),
    ({"price": None}, "MissingParameter", "price"),
    ({"post_only": True, "time_in_force": "IOC"}, "InvalidCombination", "post_only"),
    # The engine refused it after it was stored (400 OrderRejected, a `rejected` order).
    (MARKET_BUY_BY_QUOTE_FOK, "InvalidCombination", "time_in_force"),
    ({"display_quantity": "20"}, "DisplayQuantityTooLarge", "display_quantity"),
    ({"time_in_force": "GTD", "expire_at": "2020-01-01T00:00:00Z"}, "ExpireAtInPast", "expire_at"),
    # More than GTD_MAX_DAYS (365) ahead. Past April 2262 it was accepted, and then the shard
    # worker could not recover (the expiry overflowed its nanosecond clock): shard down.
    ({"time_in_force": "GTD", "expire_at": "2262-04-12T00:00:00Z"}, "ExpireAtTooFar", "expire_at"),
    ({"time_in_force": "GTD", "expire_at": "9999-12-31T23:59:59Z"}, "ExpireAtTooFar", "expire_at"),
    # Django's parser read any Unicode digit and stopped at a NUL: each of these was stored.
    (gtd_at("\u0662\u0660\u0663\u0660-01-01T00:00:00Z"), "InvalidParameter", "expire_at"),
    (gtd_at("2030-01-01T00:00:00Z\x00"), "InvalidParameter", "expire_at"),
    # Without its zone (or without a time) an expiry was read as UTC: hours off for a client
    # who meant its own local time.
    (gtd_at("2030-01-01T10:00:00"), "InvalidParameter", "expire_at"),
    (gtd_at("2030-01-01"), "InvalidParameter", "expire_at"),
    (gtd_at("2030-01-01T00:00:00.\u0661Z"), "InvalidParameter", "expire_at"),
    ({"price": 10.5}, "NumberNotString", "price"),
    # Trimmed and taken, a no-break space too, where the contract is ASCII digits.
    ({"price": " 10.00"}, "InvalidNumber", "price"),
    ({"quantity": "1\u00a0"}, "InvalidNumber", "quantity"),
    ({"price": True}, "InvalidNumber", "price"),  # had said: a number, "such as True"
    ({"post_only": "true"}, "InvalidParameter", "post_only"),  # "true", 1 and "on" were taken
    ({"post_only": 1}, "InvalidParameter", "post_only"),
    ({"quantity": "ten"}, "InvalidNumber", "quantity"),
    ({"quantity": "-1"}, "InvalidNumber", "quantity"),
    ({"price": "\u0661\u0660.\u0665\u0660"}, "InvalidNumber", "price"),  # Arabic-Indic: was 10.50
    # Above what the amount columns hold, and above what the engine holds in ticks.
    ({"quantity": "1" + "0" * 18}, "NumberTooLarge", "quantity"),
    ({"price": "9" * 24 + ".00"}, "NumberTooLarge", "price"),
    ({"side": "sell", "price": "9" * 24 + ".00"}, "NumberTooLarge", "price"),  # was a 500
    ({"price": "1" + "0" * 17 + ".00"}, "NumberTooLarge", "price"),
    # Past the digits a decimal string may have: each was told to be a decimal string "like
    # 150.45", which it was.
    ({"price": "1." + "0" * 20 + "1"}, "AmountTooPrecise", "price"),
    ({"quantity": "1" * 40}, "NumberTooLarge", "quantity"),
    ({"quantity": "0" * 25 + "1"}, "InvalidNumber", "quantity"),  # was "must be below 10^18"
    # Over the 4,300 digits int() reads (CPython's limit): each was a 500.
    ({"quantity": "9" * 5000}, "NumberTooLarge", "quantity"),
    ({"price": "0" * 5000 + "1"}, "InvalidNumber", "price"),
    ({"side": "hold"}, "InvalidParameter", "side"),
    # Above the engine's highest price (10^12 ticks), with no last trade to band it: each was
    # stored, then rejected by the matching engine (an order_id, no field).
    ({"side": "sell", "price": "10000000000.01"}, "PriceOutsideBand", "price"),
    (STOP_LIMIT_SELL_ABOVE_THE_ENGINE, "PriceOutsideBand", "limit_price"),
    # A required field left out, as a missing price is named (they read InvalidParameter).
    ({"symbol": None}, "MissingParameter", "symbol"),
    ({"side": None}, "MissingParameter", "side"),
    ({"order_type": None}, "MissingParameter", "order_type"),
    ({"colour": "red"}, "UnexpectedParameter", "colour"),
    # Kept as sent: a number was stored as its text, padding was trimmed off.
    ({"client_order_id": 5}, "InvalidParameter", "client_order_id"),
    ({"client_order_id": " order-1"}, "InvalidParameter", "client_order_id"),
]


@pytest.mark.parametrize(("change", "error", "field"), BAD_INPUTS)
def test_bad_input_is_a_400_naming_the_field_and_stores_nothing(market, change, error, field):
    instrument, maker, _ = market
    body = limit(instrument.symbol, "buy", "10.00", "10")
    body.update(change)
    body = {k: v for k, v in body.items() if v is not None}
    if isinstance(body.get("symbol"), str):
        body["symbol"] = body["symbol"].replace("__SYMBOL__", instrument.symbol)
    response = maker.place(**body)
    assert response.status_code == 400, response.text
    payload = response.json()
    assert (payload["error"], payload.get("field")) == (error, field)
    assert isinstance(payload["code"], int) and payload["message"]
    assert not Order.objects.filter(user=maker.user).exists()
    # Nothing stored, yet the refusal is in the audit trail: what was sent and what was said.
    refused = AuditRecord.objects.get(event_type="order.refused", user_id=maker.user.pk)
    assert (refused.payload["status"], refused.payload["error"]) == (400, payload)
    assert (refused.channel, refused.api_key_id) == ("rest", maker.api_key.pk)
    sent_symbol = body.get("symbol")
    if isinstance(sent_symbol, str):
        sent_symbol = sent_symbol[:100]
    assert refused.payload["request"].get("symbol") == sent_symbol
    assert refused.payload.get("unknown_fields", []) == [n for n in change if n == "colour"]


def test_an_off_lot_or_off_tick_value_is_named_in_plain_digits(market):
    # 0.000000001 was named "1E-9": the API never writes an exponent.
    instrument, maker, _ = market
    for change, field in (
        ({"quantity": "0.000000001"}, "quantity"),
        ({"price": "0.0000001"}, "price"),
    ):
        body = {**limit(instrument.symbol, "buy", "10.00", "10"), **change}
        refused = maker.place(**body).json()
        assert refused["field"] == field and f"{field} {change[field]} is not" in refused["message"]
    by_quote = {"symbol": instrument.symbol, "side": "buy", "order_type": "market"}
    refused = maker.place(**by_quote, quote_quantity="0.000000001").json()
    assert refused["error"] == "AmountTooPrecise", refused
    assert refused["message"].startswith("quote_quantity 0.000000001 has more"), refused


def test_a_number_sent_as_json_is_told_the_fixed_point_string_to_send_instead(market):
    # 0.00000085 was told to send "8.5e-07" and 1e20 "1e+20", strings the API refuses (it never
    # takes an exponent); a number of thousands of digits was echoed whole.
    instrument, maker, _ = market
    for sent, shown in (
        ("0.00000085", '"0.00000085"'),
        ("1e20", '"100000000000000000000"'),
        ("10.5", '"10.5"'),
        ("9" * 4000, '"' + "9" * 57 + '..."'),
    ):
        body = json.dumps(limit(instrument.symbol, "buy", "10.00", "PLACEHOLDER")).replace(
            '"PLACEHOLDER"', sent
        )
        refused = maker.http.post(
            "/api/v1/orders", content=body, headers={"Content-Type": "application/json"}
        )
        assert refused.status_code == 400, refused.text
        answer = refused.json()
        assert (answer["error"], answer["field"]) == ("NumberNotString", "quantity")
        assert f"must be a JSON string such as {shown}, not a number" in answer["message"]
    assert not Order.objects.filter(user=maker.user).exists()


def test_a_refused_expiry_is_told_the_format_with_its_zone_required(market):
    # A number, month 13 or an offset of +99:00 had been told DRF's format, whose zone is
    # optional ("[+HH:MM|-HH:MM|Z]"): a client following it sent no zone and was refused again.
    instrument, maker, _ = market
    for expire_at in (1795000000000, "2030-13-01T00:00:00Z", "2030-01-01T00:00:00+99:00"):
        body = {**limit(instrument.symbol, "buy", "10.00", "10"), **gtd_at(expire_at)}
        refused = maker.place(**body)
        assert refused.status_code == 400, refused.text
        answer = refused.json()
        assert (answer["error"], answer["field"]) == ("InvalidParameter", "expire_at")
        assert "YYYY-MM-DDThh:mm[:ss[.ffffff]](Z|+hh:mm|-hh:mm)" in answer["message"], answer
    assert not Order.objects.filter(user=maker.user).exists()


def test_an_order_refused_at_entry_is_audited_whatever_its_body_and_a_placed_one_is_not(market):
    instrument, maker, _ = market
    placed = maker.place(**limit(instrument.symbol, "buy", "10.00", "10"))
    assert placed.status_code == 201, placed.text
    malformed = maker.http.post(
        "/api/v1/orders", content=b'{"symbol": ', headers={"Content-Type": "application/json"}
    )
    huge = maker.place(**limit("X" * 5000, "buy", "10.00", "10"), price_note=[1, {"a": 2}])
    assert (malformed.status_code, huge.status_code) == (400, 400)
    records = AuditRecord.objects.filter(event_type="order.refused", user_id=maker.user.pk)
    first, second = records.order_by("seq")
    assert first.payload == {"status": 400, "error": malformed.json()}  # no body to keep
    assert second.payload["request"]["symbol"] == "X" * 100 and second.symbol is None
    assert second.payload["unknown_fields"] == ["price_note"]
    # A NUL in a field's name, echoed by the error: PostgreSQL had refused the record.
    nul = maker.place(**limit(instrument.symbol, "buy", "10.00", "10"), **{"x\u0000y": 1})
    assert (nul.status_code, nul.json()["field"]) == (400, "x\u0000y")
    third = records.order_by("seq").last()
    assert (third.payload["error"]["field"], third.payload["unknown_fields"]) == ("xy", ["xy"])


def test_a_bad_choice_is_named_with_the_choices_and_not_echoed_whole(market):
    instrument, maker, _ = market
    response = maker.place(**{**limit(instrument.symbol, "buy", "10.00", "1"), "side": "x" * 300})
    assert response.status_code == 400, response.text
    body = response.json()
    assert (body["error"], body["field"]) == ("InvalidParameter", "side")
    assert body["message"] == f"side: '{'x' * 56}... is not one of: buy, sell"


def test_a_buy_worth_more_than_the_engine_carries_is_refused_not_left_to_stop_the_shard(
    exchange_stack, live_db
):
    """A 12-decimal quote asset: 20,000,000 at 2 is 4e19 minor units, past 64 bits. Such a buy
    was accepted (its buyer could pay); the batch holding its trade then failed ("bigint out of
    range") and the worker exited. Only after two restarts was the buy rejected as
    CommandFailed, the whole shard stalled meanwhile (here, with no supervisor, for good)."""
    instrument = make_instrument(
        base_asset="BIG", quote_asset="TOK", quote_precision=12, tick_size=Decimal("1"),
        min_notional=Decimal("0"),
    )  # fmt: skip
    funds = {"BIG": Decimal("100000000"), "TOK": Decimal("100000000")}
    maker = ApiClient(exchange_stack, make_user("maker", funds=funds))
    taker = ApiClient(exchange_stack, make_user("taker", funds=funds))
    resting = taker.place(**limit(instrument.symbol, "buy", "1", "1000000")).json()
    assert maker.place(**limit(instrument.symbol, "sell", "2", "20000000")).status_code == 201

    refused = taker.place(**limit(instrument.symbol, "buy", "2", "20000000"))
    assert refused.status_code == 400, refused.text
    assert (refused.json()["error"], refused.json()["field"]) == ("NumberTooLarge", "quantity")
    assert refused.json()["message"].startswith(
        "order value 40080000.000019999999 TOK (price x quantity"
    )
    assert Order.objects.filter(user=taker.user).count() == 1, "nothing stored"

    # Up to the bound (2^61 minor units: about 2,305,843 TOK here) it trades.
    filled = taker.place(**limit(instrument.symbol, "buy", "2", "1000000"))
    assert (filled.status_code, filled.json()["status"]) == (201, "filled"), filled.text

    # An amend is held to the same bound; the order stays as it was.
    amended = taker.patch(f"/api/v1/orders/{resting['order_id']}", {"quantity": "3000000"})
    assert amended.status_code == 400, amended.text
    assert (amended.json()["error"], amended.json()["field"]) == ("NumberTooLarge", "quantity")
    unchanged = taker.get(f"/api/v1/orders/{resting['order_id']}").json()
    assert (unchanged["status"], unchanged["quantity"]) == ("new", "1000000")


def test_price_outside_the_band_around_the_last_trade_is_refused(market):
    instrument, maker, taker = market
    maker.place(**limit(instrument.symbol, "sell", "100.00", "1"))
    taker.place(**limit(instrument.symbol, "buy", "100.00", "1"))
    response = maker.place(**limit(instrument.symbol, "sell", "120.00", "1"))
    assert response.status_code == 400
    assert (response.json()["error"], response.json()["field"]) == ("PriceOutsideBand", "price")


def test_the_band_a_refusal_names_holds_only_prices_it_takes(market):
    # 10% around 9.97 is 8.973-10.967: on the cent grid 8.98-10.96 (it had said 8.97-10.97,
    # both refused, rounding each edge to the nearest cent).
    instrument, maker, taker = market
    maker.place(**limit(instrument.symbol, "sell", "9.97", "1"))
    assert taker.place(**limit(instrument.symbol, "buy", "9.97", "1")).json()["status"] == "filled"
    for price in ("10.97", "8.97"):
        refused = maker.place(**limit(instrument.symbol, "sell", price, "1"))
        assert refused.json()["error"] == "PriceOutsideBand", refused.text
        assert refused.json()["message"] == (
            f"price {price} is outside the band 8.98-10.96 (10% around the last price 9.97)"
        )
    for price in ("10.96", "8.98"):
        taken = maker.place(**limit(instrument.symbol, "sell", price, "1"))
        assert taken.status_code == 201, taken.text


def test_rule_messages_print_plain_numbers(exchange_stack, live_db):
    # They read "lot size 1E+1", "minimum 1E+2", "order value 1E+2 is below the minimum 1E+3".
    instrument = make_instrument(
        lot_size=Decimal("10"), min_quantity=Decimal("100"), min_notional=Decimal("1000.00")
    )
    client = ApiClient(exchange_stack)
    expected = {
        ("10.00", "15"): "quantity 15 is not a multiple of the lot size 10",
        ("10.00", "50"): "quantity 50 is below the minimum 100",
        ("1.00", "100"): "order value 100 is below the minimum 1000 USD",
    }
    for (price, quantity), message in expected.items():
        refused = client.place(**limit(instrument.symbol, "buy", price, quantity))
        assert refused.status_code == 400
        assert refused.json()["message"].startswith(message), refused.json()


def test_market_and_stop_orders_meet_the_minimum_notional(exchange_stack, live_db):
    # Market and stop-loss orders skipped it: single lots worth 0.05 were forced on a resting
    # sell, each charging its maker a whole cent of fee (20 %).
    instrument = make_instrument(min_notional=Decimal("10.00"))
    maker, taker = ApiClient(exchange_stack), ApiClient(exchange_stack)
    symbol = instrument.symbol
    assert maker.place(**limit(symbol, "sell", "5.00", "20")).status_code == 201
    assert maker.place(**limit(symbol, "buy", "4.00", "20")).status_code == 201
    wait_until(lambda: maker.get(f"/api/v1/orderbook/{symbol}").json()["bids"], timeout=10)
    refusals = {
        "market buy of 1 at the best ask 5.00": (
            {"order_type": "market", "side": "buy", "quantity": "1"},
            "quantity",
            "order value 5 is below the minimum 10 USD",
        ),
        "market sell of 2 at the best bid 4.00": (
            {"order_type": "market", "side": "sell", "quantity": "2"},
            "quantity",
            "order value 8 is below the minimum 10 USD",
        ),
        "market buy spending 9.99": (
            {"order_type": "market", "side": "buy", "quote_quantity": "9.99"},
            "quote_quantity",
            "quote_quantity 9.99 is below the minimum 10 USD",
        ),
        "stop-loss of 1 at 6.00": (
            {"order_type": "stop_loss", "side": "buy", "stop_price": "6.00", "quantity": "1"},
            "quantity",
            "order value 6 is below the minimum 10 USD",
        ),
    }
    for what, (body, field, message) in refusals.items():
        refused = taker.place(symbol=symbol, **body)
        assert refused.status_code == 400, (what, refused.text)
        answer = refused.json()
        assert (answer["error"], answer["field"], answer["message"]) == (
            "NotionalTooSmall",
            field,
            message,
        ), what
    assert not Order.objects.filter(instrument=instrument, user=taker.user).exists()
    # At the minimum they are taken.
    bought = taker.place(symbol=symbol, order_type="market", side="buy", quantity="2")
    assert bought.status_code == 201 and bought.json()["status"] == "filled", bought.text


def test_an_amend_meets_the_minimums_a_new_order_must(exchange_stack, live_db):
    # A new price below the minimum notional was taken (a quantity amend was checked).
    instrument = make_instrument(min_notional=Decimal("100.00"))
    client = ApiClient(exchange_stack)
    placed = client.place(**limit(instrument.symbol, "sell", "60.00", "2")).json()
    path = f"/api/v1/orders/{placed['order_id']}"
    refused = client.patch(path, {"price": "45.00"})
    assert refused.status_code == 400
    body = refused.json()
    assert (body["error"], body["field"]) == ("NotionalTooSmall", "price")
    assert body["message"] == "order value 90 is below the minimum 100 USD"
    assert client.get(path).json()["price"] == "60.00"
    assert client.patch(path, {"price": "55.00"}).status_code == 200


def test_prices_and_quantities_of_a_cheap_coin_are_fixed_point_everywhere(exchange_stack, live_db):
    # The worker wrote str(Decimal): the book, the socket and the audit trail read "8.5E-7"
    # where REST's orders read "0.00000085", and a client matched neither to the other.
    # Assets of their own: an asset's precision is its instruments' (USD at 8 places would
    # change every other test's balances on this stack).
    instrument = make_instrument(
        base_asset="SAT",
        quote_asset="MIC",
        quote_precision=8,
        tick_size=Decimal("0.00000001"),
        base_precision=8,
        lot_size=Decimal("0.00000001"),
        min_quantity=Decimal("0.00000001"),
        min_notional=Decimal("0"),
    )
    # 10 MIC: the hold of the buy below had been a million MIC (a cent-like reserve per lot).
    funds = {"SAT": Decimal("5000000"), "MIC": Decimal("10")}
    maker = ApiClient(exchange_stack, user=make_user(funds=funds))
    taker = ApiClient(exchange_stack, user=make_user(funds=funds))
    symbol = instrument.symbol
    placed = maker.place(**limit(symbol, "buy", "0.00000085", "1000000.00000005"))
    assert placed.status_code == 201, placed.text
    book = wait_until(
        lambda: (b := maker.get(f"/api/v1/orderbook/{symbol}").json())["bids"] and b, timeout=10
    )
    assert book["bids"] == [{"price": "0.00000085", "quantity": "1000000.00000005", "orders": 1}]
    assert taker.place(**limit(symbol, "sell", "0.00000085", "0.00000007")).status_code == 201
    ticker = wait_until(
        lambda: (t := maker.get(f"/api/v1/ticker/{symbol}").json())["last_price"] and t,
        timeout=10,
    )
    assert ticker["last_price"] == "0.00000085"
    snapshot = maker.get(f"/api/v1/orderbook/{symbol}").json()
    assert snapshot["bids"][0]["quantity"] == "999999.99999998"
    records = {
        r.event_type: r.payload
        for r in AuditRecord.objects.filter(order_id=placed.json()["order_id"])
    }
    accepted, traded = records["order.accepted"], records["trade.executed"]
    assert (accepted["price"], accepted["remaining"]) == ("0.00000085", "1000000.00000005")
    assert (traded["price"], traded["quantity"]) == ("0.00000085", "0.00000007")


def test_a_refused_body_type_accept_header_or_format_names_what_to_send(market):
    # DRF's answers named nothing to send: 'Unsupported media type "application/x-www-form-
    # urlencoded" in request.' (curl -d's default), 'Could not satisfy the request Accept
    # header.', and a bare 404 'Not found.' for ?format=xml.
    instrument, maker, _ = market
    for content_type in ("application/x-www-form-urlencoded", "text/plain"):
        refused = maker.http.post(
            "/api/v1/orders",
            content=f"symbol={instrument.symbol}&side=buy",
            headers={"Content-Type": content_type},
        )
        assert (refused.status_code, refused.json()["error"]) == (415, "UnsupportedMediaType")
        assert refused.json()["message"] == (
            f"send the body as Content-Type application/json, not '{content_type}'"
        )
    refused = maker.http.get("/api/v1/orders", headers={"Accept": "application/xml"})
    assert (refused.status_code, refused.json()["error"]) == (406, "NotAcceptable"), refused.text
    assert "send Accept: application/json" in refused.json()["message"]
    refused = maker.http.get("/api/v1/orders", params={"format": "xml"})
    assert refused.status_code == 400, refused.text
    answer = refused.json()
    assert (answer["error"], answer["field"]) == ("InvalidParameter", "format")
    assert answer["message"] == "format must be json (or leave it out); got 'xml'"
    assert maker.http.get("/api/v1/orders", params={"format": "json"}).status_code == 200
    assert not Order.objects.filter(user=maker.user).exists()


def test_a_web_sessions_mass_cancel_with_a_body_that_reads_as_nothing_cancels_nothing(market):
    # `[]`, `{}` or `null` in the body of DELETE /orders (falsy once parsed) had been read as
    # no body: every open order on every symbol cancelled, where a body is refused.
    instrument, maker, _ = market
    resting = maker.place(**limit(instrument.symbol, "buy", "10.00", "1"))
    assert resting.status_code == 201, resting.text
    with session_client(maker.http.base_url, maker.user) as browser:
        for body in (b"[]", b"{}", b"null", b"[1]", b"{"):
            refused = browser.request(
                "DELETE",
                "/api/v1/orders",
                content=body,
                headers={"Content-Type": "application/json"},
            )
            assert refused.status_code == 400, (body, refused.text)
            assert refused.json()["error"] == "UnexpectedParameter", refused.text
            assert "takes no body" in refused.json()["message"]
        named = browser.request("DELETE", "/api/v1/orders", json={"symbol": instrument.symbol})
        assert named.json()["field"] == "symbol", named.text
    assert not Command.objects.filter(kind=Command.Kind.MASS_CANCEL, user_id=maker.user.pk)
    order = maker.get(f"/api/v1/orders/{resting.json()['order_id']}").json()
    assert order["status"] == "new", order


def test_a_body_sent_without_a_content_length_is_refused_not_read_as_none(market):
    # A chunked body (no Content-Length: Go's client with a streamed body sends one) was taken
    # as no body: the order was refused "symbol: This field is required", and a web session's
    # DELETE /orders with one cancelled every open order.
    instrument, maker, _ = market
    resting = maker.place(**limit(instrument.symbol, "buy", "10.00", "1"))
    assert resting.status_code == 201, resting.text
    body = json.dumps(limit(instrument.symbol, "buy", "10.00", "2")).encode()

    def chunked(data: bytes):
        yield data[:10]
        yield data[10:]

    sent = maker.http.post(
        "/api/v1/orders", content=chunked(body), headers={"Content-Type": "application/json"}
    )
    assert sent.request.headers["Transfer-Encoding"] == "chunked"
    with session_client(maker.http.base_url, maker.user) as browser:
        mass_cancel = browser.request(
            "DELETE",
            "/api/v1/orders",
            content=chunked(b'{"symbol": "%s"}' % instrument.symbol.encode()),
            headers={"Content-Type": "application/json"},
        )
    for refused in (sent, mass_cancel):
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"] == "MalformedRequest"
        assert "send it with its Content-Length" in refused.json()["message"]
    orders = maker.get("/api/v1/orders").json()["results"]
    assert [(o["order_id"], o["status"]) for o in orders] == [(resting.json()["order_id"], "new")]


def test_a_body_with_a_key_twice_and_a_mass_cancel_with_a_body_are_refused(market):
    instrument, maker, _ = market
    symbol = instrument.symbol
    raw = (
        f'{{"symbol": "{symbol}", "side": "buy", "order_type": "limit", "price": "10.00", '
        '"quantity": "1", "quantity": "1000000"}'
    )
    twice = maker.http.post(
        "/api/v1/orders", content=raw, headers={"Content-Type": "application/json"}
    )
    assert twice.status_code == 400, twice.text
    assert twice.json()["error"] == "MalformedRequest"
    assert "'quantity' appears more than once" in twice.json()["message"]
    # The same as a form body took the last value (3): only JSON is read.
    form = maker.http.post(
        "/api/v1/orders",
        content=f"symbol={symbol}&side=buy&order_type=limit&price=10.00&quantity=1&quantity=3",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert (form.status_code, form.json()["error"]) == (415, "UnsupportedMediaType"), form.text
    # A wildcard type was read as JSON, a compressed body as text ("can't decode byte 0x8b").
    body = json.dumps(limit(symbol, "buy", "10.00", "1")).encode()
    for headers, content in (
        ({"Content-Type": "*/*"}, body),
        ({"Content-Type": "application/*"}, body),
        ({"Content-Type": "application/json", "Content-Encoding": "gzip"}, gzip.compress(body)),
        ({"Content-Type": "application/json", "Content-Encoding": "br"}, body),
    ):
        odd = maker.http.post("/api/v1/orders", content=content, headers=headers)
        assert (odd.status_code, odd.json()["error"]) == (415, "UnsupportedMediaType"), odd.text
    assert not Order.objects.filter(instrument=instrument).exists()
    kept = maker.place(**limit(symbol, "buy", "10.00", "1")).json()
    # A bot sending the symbol in the body lost every order on every symbol.
    other = make_instrument()
    elsewhere = maker.place(**limit(other.symbol, "buy", "10.00", "1")).json()
    refused = maker.http.request("DELETE", "/api/v1/orders", json={"symbol": other.symbol})
    assert refused.status_code == 400, refused.text
    # Signed, it is refused before the view (which names the field for a web session's): a
    # signed DELETE carries no body.
    assert refused.json()["error"] == "MalformedRequest", refused.text
    assert "DELETE request carries no body" in refused.json()["message"]
    # A symbol given twice: the last one was taken.
    twice = maker.http.delete(
        "/api/v1/orders", params=[("symbol", symbol), ("symbol", other.symbol)]
    )
    assert twice.status_code == 400, twice.text
    assert (twice.json()["error"], twice.json()["field"]) == ("UnexpectedParameter", "symbol")
    # So was a misspelt filter: `symbols` was no filter at all.
    typo = maker.delete("/api/v1/orders", symbols=other.symbol)
    assert typo.status_code == 400, typo.text
    assert (typo.json()["error"], typo.json()["field"]) == ("UnexpectedParameter", "symbols")
    for order in (kept, elsewhere):
        assert maker.get(f"/api/v1/orders/{order['order_id']}").json()["status"] == "new"
    # A body that is no object: "No data provided", an InvalidParameter, before.
    for raw in ("null", "[]"):
        amend = maker.http.patch(
            f"/api/v1/orders/{kept['order_id']}",
            content=raw,
            headers={"Content-Type": "application/json"},
        )
        assert (amend.status_code, amend.json()["error"]) == (400, "MalformedRequest"), raw


def test_market_data_endpoints(market):
    instrument, maker, taker = market
    maker.place(**limit(instrument.symbol, "sell", "101.00", "5"))
    maker.place(**limit(instrument.symbol, "buy", "99.00", "4"))
    taker.place(**limit(instrument.symbol, "buy", "101.00", "2"))
    symbol = instrument.symbol
    book = wait_until(
        lambda: (
            (b := taker.get(f"/api/v1/orderbook/{symbol}", depth=5).json())["asks"]
            and b["asks"][0]["quantity"] == "3"
            and b
        ),
        timeout=10,
    )
    assert book["bids"] == [{"price": "99.00", "quantity": "4", "orders": 1}]
    assert book["seq"] > 0
    spread = taker.get(f"/api/v1/orderbook/{symbol}/spread").json()
    assert (spread["best_bid"], spread["best_ask"], spread["spread"]) == ("99.00", "101.00", "2.00")
    assert spread["mid"] == "100.000"  # fixed places, one more than a price's (was "100")
    assert spread["spread_bps"] == "200.00"
    trades = taker.get(f"/api/v1/trades/{symbol}").json()["results"]
    assert [(t["price"], t["quantity"], t["taker_side"]) for t in trades] == [
        ("101.00", "2", "buy")
    ]
    ticker = taker.get(f"/api/v1/ticker/{symbol}").json()
    assert (ticker["last_price"], ticker["volume_24h"], ticker["trades_24h"]) == ("101.00", "2", 1)
    # The top of the book, as the socket's ticker carries it (REST's had none).
    assert ticker["status"] == "trading"
    top = [ticker[k] for k in ("best_bid", "best_bid_size", "best_ask", "best_ask_size")]
    assert top == ["99.00", "4", "101.00", "3"]
    empty = make_instrument()
    quiet = taker.get(f"/api/v1/ticker/{empty.symbol}").json()
    assert (quiet["best_bid"], quiet["best_ask_size"], quiet["last_price"]) == (None, None, None)
    symbols = {s["symbol"]: s for s in taker.get("/api/v1/symbols").json()}
    assert symbols[symbol]["tick_size"] == "0.01"
    assert symbols[symbol]["min_notional"] == "1.00"
    assert taker.get("/api/v1/time").json()["server_time"].endswith("Z")
    assert taker.get(f"/api/v1/orderbook/{symbol}", depth=0).status_code == 400
    fills = taker.get("/api/v1/fills", symbol=symbol).json()["results"]
    assert [(f["side"], f["liquidity"], f["fee"]) for f in fills] == [("buy", "taker", "0.41")]


def test_an_expire_at_that_passes_before_the_engine_takes_the_order_is_expire_at_in_past(market):
    # Accepted a few milliseconds ahead, it had passed by the worker's stamp: the answer was
    # OrderRejected -2099 "InvalidExpireAt: rejected by the matching engine: InvalidExpireAt".
    instrument, maker, _ = market
    accepted_at = timezone.now() - dt.timedelta(seconds=10)  # as if the worker was away
    placed = order_place(
        user=maker.user,
        request=OrderRequest(
            symbol=instrument.symbol,
            side="buy",
            order_type="limit",
            price=Decimal("10.00"),
            quantity=Decimal("1"),
            time_in_force="GTD",
            expire_at=accepted_at + dt.timedelta(seconds=5),
        ),
        now=accepted_at,
    )
    with pytest.raises(ApiError) as refused:
        order_placed_answer(placed.order, placed.command_id, created=True)
    assert (refused.value.error, refused.value.error_code) == ("ExpireAtInPast", -1119)
    assert refused.value.message == (
        "expire_at had passed when the matching engine received the order"
    )
    stored = Order.objects.get(pk=placed.order.pk)
    assert (stored.status, stored.reject_code) == ("rejected", "InvalidExpireAt")
    # Its reason is the engine's generic `invalid`; its rejection names the error it got.
    shown = maker.get(f"/api/v1/orders/{stored.pk}").json()
    assert (shown["status"], shown["reason"]) == ("rejected", "invalid")
    assert shown["rejection"] == {
        "error": "ExpireAtInPast",
        "code": -1119,
        "message": "expire_at had passed when the matching engine received the order",
    }


def test_a_gtd_order_past_its_expiry_never_trades_without_the_scheduler(market):
    # Expiry came only with Celery beat's expire_due (this stack runs no beat): a GTD order
    # traded as maker 8 s after its expire_at while the scheduler was down.
    instrument, maker, taker = market
    expire_at = (timezone.now() + dt.timedelta(seconds=1)).isoformat().replace("+00:00", "Z")
    gtd = maker.place(
        **limit(instrument.symbol, "buy", "50.00", "2", time_in_force="GTD", expire_at=expire_at)
    ).json()
    assert gtd["status"] == "new"
    time.sleep(1.5)
    crossing = taker.place(**limit(instrument.symbol, "sell", "50.00", "2"))
    assert crossing.status_code == 201, crossing.text
    assert (crossing.json()["status"], crossing.json()["fills"]) == ("new", [])
    expired = maker.get(f"/api/v1/orders/{gtd['order_id']}").json()
    assert (expired["status"], expired["reason"], expired["held_amount"]) == (
        "expired", "gtd_expired", "100.21"
    )  # fmt: skip
    assert not Trade.objects.filter(maker_order_id=gtd["order_id"]).exists()


def test_a_market_buy_is_priced_from_the_database_when_redis_lost_the_book(market):
    # Its budget comes from the best ask of the worker's Redis snapshot: with the snapshot gone
    # (Redis wiped, or out of reach) it was held nothing and cancelled max_quote, 0 filled,
    # with asks on the book.
    from exchange.redis_connection import redis_client
    from matching.transport import book_snapshot_key

    instrument, maker, taker = market
    maker.place(**limit(instrument.symbol, "sell", "101.00", "5"))
    redis_client().delete(book_snapshot_key(instrument.symbol))
    bought = taker.place(
        symbol=instrument.symbol, side="buy", order_type="market", quantity="2"
    ).json()
    assert (bought["status"], bought["filled_quantity"]) == ("filled", "2"), bought


def test_a_client_order_id_replay_of_an_order_in_flight_waits_for_it(market):
    # The replay answered 202 pending_new at once, while the first request waited for the
    # engine: two answers of the same order, one stale (and 201 or 202 by which came first).
    instrument, maker, _ = market
    request = OrderRequest(
        symbol=instrument.symbol,
        side="buy",
        order_type="limit",
        price=Decimal("10.00"),
        quantity=Decimal("1"),
        client_order_id="replayed-in-flight",
    )
    placed = order_place(user=maker.user, request=request)
    assert placed.order.status == "pending_new"  # as the replay finds it
    status, body = order_placed_answer(placed.order, None, created=False)
    assert (status, body["status"]) == (200, "new")


def test_avg_price_is_the_exact_average_of_the_fill_prices(exchange_stack, live_db):
    # Each fill's notional is rounded down to the cent (0.777 x 101.5 = 78.8655 -> 78.86), and
    # the average came from those: a one-fill order at 101.0 averaged 100.99099.
    instrument = make_instrument(
        base_asset="FRC",
        base_precision=3,
        tick_size=Decimal("0.5"),
        lot_size=Decimal("0.001"),
        min_quantity=Decimal("0.001"),
    )
    funds = {"USD": Decimal("100000"), "FRC": Decimal("1000")}
    first, taker = (ApiClient(exchange_stack, make_user(funds=funds)) for _ in range(2))
    one = first.place(**limit(instrument.symbol, "sell", "101.0", "0.333")).json()
    first.place(**limit(instrument.symbol, "sell", "101.5", "0.777"))
    bought = taker.place(**limit(instrument.symbol, "buy", "101.5", "1.110")).json()
    assert bought["status"] == "filled"
    assert [(f["price"], f["quantity"]) for f in bought["fills"]] == [
        ("101.0", "0.333"),
        ("101.5", "0.777"),
    ]
    assert bought["avg_price"] == "101.35000"  # (33.633 + 78.8655) / 1.110, exactly
    assert bought["cumulative_quote"] == "112.49"  # what was paid: each notional to the cent
    maker = first.get(f"/api/v1/orders/{one['order_id']}").json()
    assert (maker["status"], maker["avg_price"]) == ("filled", "101.00000")


def test_a_query_parameter_an_endpoint_does_not_read_is_refused(market):
    # A misspelt filter was no filter: /fills?symbl=AAPL listed the fills of every symbol.
    instrument, maker, _ = market
    symbol = instrument.symbol
    for path, params in [
        ("/api/v1/fills", {"symbl": symbol}),
        ("/api/v1/orders", {"symbols": symbol, "limit": "5"}),
        ("/api/v1/ledger", {"assets": "USD"}),
        ("/api/v1/balances", {"asset": "USD"}),
        (f"/api/v1/orderbook/{symbol}", {"levels": "5"}),
        (f"/api/v1/trades/{symbol}", {"since": "1"}),
        (f"/api/v1/ticker/{symbol}", {"window": "1h"}),
        (f"/api/v1/candles/{symbol}", {"interval": "1m", "start": "2026-01-01T00:00:00Z"}),
        (f"/api/v1/users/{maker.user.pk}/fee-tier", {"tier": "x"}),
        ("/api/v1/api-keys", {"page": "2"}),
    ]:
        response = maker.get(path, **params)
        assert response.status_code == 400, (path, response.text)
        unread = next(name for name in params if name not in ("limit", "interval"))
        assert (response.json()["error"], response.json()["field"]) == (
            "UnexpectedParameter", unread
        ), path  # fmt: skip
    # What they do read is taken as before.
    for path, params in [
        ("/api/v1/fills", {"symbol": symbol, "limit": "5"}),
        ("/api/v1/orders", {"symbol": symbol, "status": "open", "limit": "5"}),
        ("/api/v1/ledger", {"asset": "USD", "limit": "5"}),
        (f"/api/v1/orderbook/{symbol}", {"depth": "5"}),
        (f"/api/v1/candles/{symbol}", {"interval": "1m", "limit": "5"}),
        ("/api/v1/api-keys", {"limit": "100"}),  # as the account page asks
        ("/api/v1/symbols", {"format": "json"}),  # DRF's own
    ]:
        assert maker.get(path, **params).status_code == 200, path


def test_a_symbol_filter_naming_no_instrument_is_a_400_not_an_empty_list(market):
    instrument, maker, _ = market
    maker.place(**limit(instrument.symbol, "buy", "10.00", "1"))
    for path in ("/api/v1/orders", "/api/v1/fills"):
        for unknown in ("NOPE", instrument.symbol.lower(), ""):
            refused = maker.get(path, symbol=unknown)
            assert refused.status_code == 400, (path, unknown, refused.text)
            assert (refused.json()["error"], refused.json()["field"]) == ("UnknownSymbol", "symbol")
    listed = maker.get("/api/v1/orders", symbol=instrument.symbol).json()["results"]
    assert [o["price"] for o in listed] == ["10.00"]


def test_mid_and_metrics_volume_are_written_at_the_instruments_precision(exchange_stack, live_db):
    # The mid came normalized ("99.9" beside prices like "99.64") and the metrics' volume too
    # ("1.11" where the ticker said "1.110").
    instrument = make_instrument(
        base_asset="FRC", base_precision=3, lot_size=Decimal("0.001"), min_quantity=Decimal("0.001")
    )
    funds = {"USD": Decimal("100000"), "FRC": Decimal("1000")}
    maker = ApiClient(exchange_stack, make_user(funds=funds))
    taker = ApiClient(exchange_stack, make_user(funds=funds))
    assert maker.place(**limit(instrument.symbol, "sell", "100.16", "1.110")).status_code == 201
    assert taker.place(**limit(instrument.symbol, "buy", "100.16", "1.110")).status_code == 201
    assert maker.place(**limit(instrument.symbol, "sell", "100.16", "1")).status_code == 201
    assert taker.place(**limit(instrument.symbol, "buy", "99.64", "1")).status_code == 201
    spread = wait_until(
        lambda: (
            (s := taker.get(f"/api/v1/orderbook/{instrument.symbol}/spread").json())["mid"] and s
        ),
        timeout=10,
    )
    assert (spread["best_bid"], spread["best_ask"], spread["mid"]) == ("99.64", "100.16", "99.900")
    staff = make_user("staff")
    staff.is_staff = True
    staff.save()
    metrics = ApiClient(exchange_stack, staff).get("/api/v1/metrics/exchange").json()
    row = next(r for r in metrics["symbols"] if r["symbol"] == instrument.symbol)
    assert row["volume"] == "1.110"


def test_exchange_metrics_show_fee_revenue_net_of_rebates_for_staff(market, exchange_stack):
    instrument, maker, taker = market
    maker.place(**limit(instrument.symbol, "sell", "100.00", "10"))
    taker.place(**limit(instrument.symbol, "buy", "100.00", "10"))
    assert taker.get("/api/v1/metrics/exchange").status_code == 403
    staff = make_user("staff")
    staff.is_staff = True
    staff.save()
    metrics = ApiClient(exchange_stack, staff).get("/api/v1/metrics/exchange").json()
    row = next(r for r in metrics["symbols"] if r["symbol"] == instrument.symbol)
    assert row["trades"] == 1
    assert (row["volume"], row["quote_volume"]) == ("10", "1000.00")
    assert (row["maker_fees"], row["taker_fees"], row["rebates_paid"]) == ("1.00", "2.00", "0.00")
    assert row["net_fee_revenue"] == "3.00"


def test_cancels_and_amends_refused_at_entry_are_in_the_audit_trail(market):
    """Only refused placements were recorded: a second cancel of an ended order, an amend
    refused, a cancel of another user's order left no trace (helper 50)."""
    instrument, maker, taker = market
    order = maker.place(**limit(instrument.symbol, "sell", "50.00", "2")).json()
    order_id = order["order_id"]
    assert maker.patch(f"/api/v1/orders/{order_id}", {}).json()["error"] == "NothingToAmend"
    assert maker.delete(f"/api/v1/orders/{order_id}").status_code == 200
    again = maker.delete(f"/api/v1/orders/{order_id}")
    assert again.json()["error"] == "OrderNotOpen"
    assert taker.delete(f"/api/v1/orders/{order_id}").status_code == 404

    amend = AuditRecord.objects.get(event_type="order.amend_refused", order_id=order_id)
    assert (amend.payload["status"], amend.payload["error"]["error"]) == (400, "NothingToAmend")
    assert amend.payload["request"] == {"order_id": order_id}
    cancel = AuditRecord.objects.get(
        event_type="order.cancel_refused", order_id=order_id, user_id=maker.user.pk
    )
    assert cancel.payload["error"]["error"] == "OrderNotOpen"
    # Another user's order: under the caller, its id only in the payload.
    probe = AuditRecord.objects.get(event_type="order.cancel_refused", user_id=taker.user.pk)
    assert probe.order_id is None and probe.payload["order_ref"] == order_id
    assert probe.payload["status"] == 404


def test_the_order_book_while_redis_is_out_of_reach_is_a_503_not_an_empty_book(
    processes, process_env, live_db
):
    # The book comes from the worker's snapshot in Redis: out of reach, the order book and its
    # spread answered 200 with no bids and no asks at seq 0, a book a client could act on; the
    # ticker likewise said best bid and ask null ("no bid, no ask"). The 503 carries Retry-After
    # as every ServiceUnavailable does (README): it had none.
    instrument = make_instrument()
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    base_url = start_web(processes, env={**process_env, "REDIS_URL": dead_redis})
    # The markets page shows only figures PostgreSQL holds: it still answers.
    markets = httpx.get(f"{base_url}/", timeout=10)
    assert markets.status_code == 200 and instrument.symbol in markets.text
    symbol = instrument.symbol
    for path in (f"/orderbook/{symbol}", f"/orderbook/{symbol}/spread", f"/ticker/{symbol}"):
        response = httpx.get(f"{base_url}/api/v1{path}", timeout=10)
        assert response.status_code == 503, path
        assert response.json() == {
            "error": "ServiceUnavailable",
            "code": -1001,
            "message": "the order book is out of reach for a moment: retry shortly",
        }
        assert response.headers.get("Retry-After") == "1", path


def test_answers_to_signed_requests_may_not_be_kept_by_shared_caches(market):
    # Balances, orders and fills went out without any Cache-Control: a shared cache or proxy
    # between a client and the exchange was free to keep one user's answers.
    instrument, maker, _ = market
    for path in ("/api/v1/balances", "/api/v1/orders", f"/api/v1/ticker/{instrument.symbol}"):
        response = maker.get(path)
        assert response.status_code == 200, path
        assert "no-store" in response.headers["Cache-Control"], path
        assert "private" in response.headers["Cache-Control"], path
    base_url = str(maker.http.base_url).rstrip("/")
    public = httpx.get(f"{base_url}/api/v1/ticker/{instrument.symbol}", timeout=10)
    assert public.status_code == 200 and "no-store" not in public.headers.get("Cache-Control", "")

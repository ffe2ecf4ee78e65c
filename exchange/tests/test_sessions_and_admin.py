"""Trading sessions at chosen instants; staff halts, resumes, cancels and rule edits through the
admin."""

import datetime as dt
import json
import re
import threading
import time
import uuid
import zoneinfo
from collections.abc import Callable
from decimal import Decimal

import httpx
import pytest
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.db import connection, transaction
from django_otp.plugins.otp_static.models import StaticDevice, StaticToken
from django_otp.plugins.otp_totp.models import TOTPDevice
from websockets.sync.client import connect as ws_connect

from accounts.tests.otp_login import give_totp_device
from audit.models import AuditRecord
from conftest import transaction_held_open, wait_until
from exchange.api_errors import ApiError
from exchange.models import Instrument, Order
from exchange.order_rules import OrderRequest
from exchange.services import instrument_halt, instrument_rules_update, order_amend, order_place
from exchange.tests.admin_http import (
    admin_action,
    admin_action_post,
    admin_client,
    admin_instrument_add,
    admin_instrument_change,
    admin_user_change,
    csrf_token,
)
from exchange.tests.api_client import ApiClient, make_instrument, make_user
from matching.models import Command

NEW_YORK = zoneinfo.ZoneInfo("America/New_York")


def session_instrument() -> Instrument:
    return make_instrument(
        trades_24_7=False,
        session_open=dt.time(9, 30),
        session_close=dt.time(16, 0),
        session_timezone="America/New_York",
    )


def buy(symbol: str, **extra) -> OrderRequest:
    return OrderRequest(
        symbol=symbol,
        side="buy",
        order_type="limit",
        price=Decimal("10.00"),
        quantity=Decimal("1"),
        **extra,
    )


@pytest.mark.django_db
@pytest.mark.parametrize(
    "local_time",
    [
        dt.datetime(2026, 11, 28, 11, 0, tzinfo=NEW_YORK),  # a Saturday
        dt.datetime(2026, 11, 25, 9, 29, tzinfo=NEW_YORK),  # a minute before the open
        dt.datetime(2026, 11, 25, 16, 0, tzinfo=NEW_YORK),  # at the close
    ],
)
def test_orders_outside_the_session_are_refused_with_market_closed(local_time):
    instrument = session_instrument()
    user = make_user()
    with pytest.raises(ApiError) as refused:
        order_place(user=user, request=buy(instrument.symbol), now=local_time)
    assert refused.value.error == "MarketClosed"
    assert "09:30-16:00 America/New_York" in refused.value.message
    assert not Order.objects.filter(user=user).exists()


@pytest.mark.django_db
def test_the_ticker_says_closed_outside_the_session_and_trading_inside_it():
    # It said "trading" while every order was refused MarketClosed.
    from exchange.selectors import ticker_24h

    instrument = session_instrument()
    saturday = dt.datetime(2026, 11, 28, 11, 0, tzinfo=NEW_YORK)
    wednesday = dt.datetime(2026, 11, 25, 11, 0, tzinfo=NEW_YORK)
    assert ticker_24h(instrument=instrument, now=saturday)["status"] == "closed"
    assert ticker_24h(instrument=instrument, now=wednesday)["status"] == "trading"
    instrument.status = Instrument.Status.HALTED
    assert ticker_24h(instrument=instrument, now=saturday)["status"] == "halted"


@pytest.mark.django_db
def test_market_closed_names_a_session_edge_with_seconds_to_the_second():
    instrument = make_instrument(
        trades_24_7=False,
        session_open=dt.time(9, 30),
        session_close=dt.time(20, 48, 45),
        session_timezone="America/New_York",
    )
    with pytest.raises(ApiError) as refused:
        order_place(
            user=make_user(),
            request=buy(instrument.symbol),
            now=dt.datetime(2026, 11, 25, 20, 48, 50, tzinfo=NEW_YORK),
        )
    assert "trades 09:30-20:48:45 America/New_York" in refused.value.message  # was "20:48"


@pytest.mark.django_db
def test_after_the_close_an_amend_may_reduce_an_order_but_not_reprice_or_grow_it():
    # A price amend after the close was taken and traded (a closed market made a trade).
    instrument = session_instrument()
    user = make_user()
    placed = order_place(
        user=user,
        request=OrderRequest(
            symbol=instrument.symbol,
            side="buy",
            order_type="limit",
            price=Decimal("10.00"),
            quantity=Decimal("5"),
        ),
        now=dt.datetime(2026, 11, 25, 15, 59, tzinfo=NEW_YORK),
    )
    after_close = dt.datetime(2026, 11, 25, 16, 0, 1, tzinfo=NEW_YORK)
    for change in ({"price": Decimal("10.50")}, {"quantity": Decimal("6")}):
        with pytest.raises(ApiError) as refused:
            order_amend(order=placed.order, actor=user, now=after_close, **change)
        assert refused.value.error == "MarketClosed"
    assert not Command.objects.filter(order_id=placed.order.pk, kind="amend").exists()
    reduced = order_amend(order=placed.order, actor=user, quantity=Decimal("3"), now=after_close)
    assert reduced.kind == "amend" and reduced.payload["qty"] == 3


@pytest.mark.django_db
def test_day_order_inside_the_session_expires_at_that_days_close():
    instrument = session_instrument()
    placed = order_place(
        user=make_user(),
        request=buy(instrument.symbol, time_in_force="DAY"),
        now=dt.datetime(2026, 11, 25, 10, 0, tzinfo=NEW_YORK),
    )
    assert placed.order.status == "pending_new"
    assert placed.order.expire_at == dt.datetime(2026, 11, 25, 21, 0, tzinfo=dt.UTC)


@pytest.mark.processes
def test_staff_halt_rejects_new_orders_keeps_cancels_and_resume_reopens(exchange_stack, live_db):
    instrument = make_instrument()
    trader = ApiClient(exchange_stack)
    resting = trader.place(
        symbol=instrument.symbol, side="buy", order_type="limit", price="10.00", quantity="1"
    ).json()
    staff = admin_client(exchange_stack)
    admin_action(staff, "/admin/exchange/instrument/", "halt_trading", instrument.pk)

    def halted_answer():
        response = trader.place(
            symbol=instrument.symbol, side="buy", order_type="limit", price="10.00", quantity="1"
        )
        return response.json()["error"] == "InstrumentHalted" and response

    refused = wait_until(halted_answer, timeout=10)
    assert Order.objects.get(pk=refused.json()["order_id"]).status == "rejected"
    halted = "trading is halted: new orders and amends are refused, cancels are taken"
    assert refused.json()["message"] == halted
    # An amend is refused saying why (it had said "the matching engine refused the change").
    amend = trader.patch(f"/api/v1/orders/{resting['order_id']}", {"price": "9.00"})
    assert amend.status_code == 400
    assert (amend.json()["error"], amend.json()["message"]) == ("InstrumentHalted", halted)
    cancelled = trader.delete(f"/api/v1/orders/{resting['order_id']}")
    assert cancelled.json()["status"] == "cancelled"

    admin_action(staff, "/admin/exchange/instrument/", "resume_trading", instrument.pk)
    reopened = wait_until(
        lambda: (
            (
                r := trader.place(
                    symbol=instrument.symbol,
                    side="buy",
                    order_type="limit",
                    price="10.00",
                    quantity="1",
                )
            ).status_code
            == 201
            and r
        ),
        timeout=10,
    )
    assert reopened.json()["status"] == "new"
    instrument.refresh_from_db()
    assert instrument.status == "trading"
    # Each outcome names the command its request (and the staff member) sent.
    for done, asked in (("halted", "halt_requested"), ("resumed", "resume_requested")):
        records = AuditRecord.objects.filter(symbol=instrument.symbol)
        outcome = records.get(event_type=f"instrument.{done}")
        request = records.get(event_type=f"instrument.{asked}")
        assert outcome.payload["command_id"] == request.payload["command_id"]


@pytest.mark.processes
def test_staff_delist_an_instrument_for_good_after_a_confirmation(exchange_stack, live_db):
    # The delisted status existed but nothing set it: a closed instrument stayed halted with
    # its orders, and their holds, open indefinitely.
    instrument = make_instrument()
    trader = ApiClient(exchange_stack)
    usd_before = next(b for b in trader.get("/api/v1/balances").json() if b["asset"] == "USD")[
        "available"
    ]
    resting = trader.place(
        symbol=instrument.symbol, side="buy", order_type="limit", price="10.00", quantity="3"
    ).json()
    stop = trader.place(
        symbol=instrument.symbol, side="buy", order_type="stop_limit", stop_price="12.00",
        limit_price="12.50", quantity="1",
    ).json()  # fmt: skip
    staff = admin_client(exchange_stack)
    changelist = "/admin/exchange/instrument/"
    asked = admin_action_post(staff, changelist, "delist", instrument.pk)
    assert asked.status_code == 200 and "Delisting is final" in asked.text
    assert "2 open orders" in asked.text
    instrument.refresh_from_db()
    assert instrument.status == "trading"  # nothing happens before the confirmation
    confirmed = staff.post(
        changelist,
        data={
            "action": "delist",
            "_selected_action": str(instrument.pk),
            "confirmed": "yes",
            "csrfmiddlewaretoken": csrf_token(staff, changelist),
        },
    )
    assert confirmed.status_code == 302
    for order in (resting, stop):
        ended = wait_until(
            lambda o=order: (
                (r := trader.get(f"/api/v1/orders/{o['order_id']}").json())["status"] == "cancelled"
                and r
            ),
            timeout=10,
        )
        assert ended["reason"] == "staff"
    usd = next(b for b in trader.get("/api/v1/balances").json() if b["asset"] == "USD")
    assert (usd["available"], usd["held"]) == (usd_before, "0.00")
    symbols = [s["symbol"] for s in trader.get("/api/v1/symbols").json()]
    assert instrument.symbol not in symbols
    refused = trader.place(
        symbol=instrument.symbol, side="buy", order_type="limit", price="10.00", quantity="1"
    )
    assert refused.status_code == 400
    assert refused.json()["error"] == "InstrumentHalted"
    assert "delisted" in refused.json()["message"]
    for action in ("resume_trading", "halt_trading", "delist"):
        admin_action(staff, changelist, action, instrument.pk)
        instrument.refresh_from_db()
        # It cannot trade again (a halt had made it "halted": listed, and resumable).
        assert instrument.status == "delisted", action
    requested = AuditRecord.objects.get(
        event_type="instrument.delist_requested", symbol=instrument.symbol
    )
    assert requested.actor_id is not None


def status_frames(ws, count: int) -> list[dict]:
    """The next `count` status frames on the socket (other frames skipped)."""
    frames = []
    deadline = time.monotonic() + 15
    while len(frames) < count:
        frame = json.loads(ws.recv(timeout=max(deadline - time.monotonic(), 0.01)))
        if frame.get("type") == "status":
            frames.append(frame)
    return frames


@pytest.mark.processes
def test_halts_resumes_and_delistings_are_announced_on_the_book_and_ticker_channels(
    exchange_stack, live_db
):
    # No frame said that trading had halted: a market maker learned it from its rejected
    # orders. And a halt took no reason, and a halt of a halted instrument was sent again.
    instrument = make_instrument()
    symbol = instrument.symbol
    channels = {f"book.{symbol}", f"ticker.{symbol}"}
    staff = admin_client(exchange_stack)
    changelist = "/admin/exchange/instrument/"
    ticker_url = f"{exchange_stack}/api/v1/ticker/{symbol}"
    assert httpx.get(ticker_url).json()["status"] == "trading"  # now in the web's cache
    with ws_connect(exchange_stack.replace("http://", "ws://") + "/ws/v1") as ws:
        ws.send(json.dumps({"op": "subscribe", "channels": sorted(channels)}))
        admin_action(staff, changelist, "halt_trading", instrument.pk, reason=" Pending news ")
        # At once (it had said `trading` for up to 2 s: the cache was not told), with the
        # reason for a client that connects later.
        ticker = httpx.get(ticker_url).json()
        assert (ticker["status"], ticker["status_reason"]) == ("halted", "Pending news")
        halted = status_frames(ws, 2)
        assert {f["channel"] for f in halted} == channels
        for frame in halted:
            assert frame["data"] == {
                "symbol": symbol,
                "status": "halted",
                "reason": "Pending news",
                "ts_ns": halted[0]["data"]["ts_ns"],
            }
        # In the instrument's History, as edits there are.
        history = staff.get(f"{changelist}{instrument.pk}/history/").text
        assert "Halt sent (reason: Pending news)" in history
        # Already halted: refused, nothing sent nor recorded.
        admin_action(staff, changelist, "halt_trading", instrument.pk, reason="again")
        page = staff.get(changelist).text
        assert f"{symbol} is already halted: nothing was sent" in page
        assert "Halt sent for 0" not in page  # no success beside the refusal
        assert Command.objects.filter(kind="halt", payload__symbol=symbol).count() == 1
        records = AuditRecord.objects.filter(symbol=symbol)
        [asked] = records.filter(event_type="instrument.halt_requested")
        [done] = records.filter(event_type="instrument.halted")
        assert asked.payload["reason"] == done.payload["reason"] == "Pending news"
        too_long = "x" * 201
        admin_action(staff, changelist, "resume_trading", instrument.pk)
        resumed = status_frames(ws, 2)
        assert [f["data"]["status"] for f in resumed] == ["trading", "trading"]
        assert "reason" not in resumed[0]["data"]
        ticker = httpx.get(ticker_url).json()
        assert (ticker["status"], ticker["status_reason"]) == ("trading", None)
        admin_action(staff, changelist, "halt_trading", instrument.pk, reason=too_long)
        refused = "Nothing was sent: a reason is at most 200 characters (this one has 201)"
        assert refused in staff.get(changelist).text
        # A NUL, which the audit trail's JSON cannot hold: said, not "No action selected".
        admin_action(staff, changelist, "halt_trading", instrument.pk, reason="a\x00b")
        assert "Nothing was sent: a reason cannot hold a NUL" in staff.get(changelist).text
        instrument.refresh_from_db()
        assert instrument.status == "trading"
        admin_action(
            staff, changelist, "delist", instrument.pk, confirmed="yes", reason="Issuer wound up"
        )
        delisted = status_frames(ws, 2)
        assert {(f["data"]["status"], f["data"]["reason"]) for f in delisted} == {
            ("delisted", "Issuer wound up")
        }
    history = staff.get(f"{changelist}{instrument.pk}/history/").text
    assert "Delist sent: delisted; 0 open order(s) cancelled (reason: Issuer wound up)" in history
    assert "Resume sent" in history
    # The engine halts a delisted book as any other; its record says it was a delisting.
    last = AuditRecord.objects.filter(symbol=symbol, event_type="instrument.halted").latest("seq")
    assert last.payload["delist"] is True and last.payload["reason"] == "Issuer wound up"


def frames_until_ack(ws, channel: str) -> list[dict]:
    """Subscribe to `channel`; the frames received before its acknowledgement."""
    ws.send(json.dumps({"op": "subscribe", "channels": [channel]}))
    frames = []
    while True:
        frame = json.loads(ws.recv(timeout=15))
        if frame.get("type") == "subscribed" and frame.get("channel") == channel:
            return frames
        frames.append(frame)


@pytest.mark.processes
def test_a_book_or_ticker_subscribed_while_halted_says_so_right_behind_its_first_frame(
    exchange_stack, live_db
):
    # A client subscribing during a halt got the book and the ticker and nothing that said
    # trading was halted: only GET /ticker told it.
    instrument, trading = make_instrument(), make_instrument()
    symbol = instrument.symbol
    staff = admin_client(exchange_stack)
    changelist = "/admin/exchange/instrument/"
    url = exchange_stack.replace("http://", "ws://") + "/ws/v1"
    admin_action(staff, changelist, "halt_trading", instrument.pk, reason="Pending news")
    wait_until(lambda: not Command.objects.filter(applied_at__isnull=True).exists(), timeout=15)
    with ws_connect(url) as ws, ws_connect(url) as later:
        # Nobody watched it when it halted: the status staff set, without the engine's time.
        ws.send(json.dumps({"op": "subscribe", "channels": [f"book.{symbol}"]}))
        frames = [json.loads(ws.recv(timeout=15)) for _ in range(3)]
        assert [f["type"] for f in frames] == ["subscribed", "snapshot", "status"]
        assert frames[2] == {
            "channel": f"book.{symbol}",
            "type": "status",
            "data": {"symbol": symbol, "status": "halted", "reason": "Pending news"},
        }
        # At another depth: a fresh snapshot, and the status behind it again (it had none).
        ws.send(json.dumps({"op": "subscribe", "channels": [f"book.{symbol}"], "depth": 20}))
        again = [json.loads(ws.recv(timeout=15)) for _ in range(3)]
        assert [f["type"] for f in again] == ["subscribed", "snapshot", "status"], again
        assert again[2] == frames[2]
        # A trading one's subscription has no status frame.
        assert frames_until_ack(ws, f"ticker.{trading.symbol}") == []
        assert frames_until_ack(ws, "heartbeat")[0]["type"] == "ticker"
        admin_action(staff, changelist, "resume_trading", instrument.pk)
        resumed = status_frames(ws, 1)[0]["data"]
        assert resumed["status"] == "trading"
        assert [f["type"] for f in frames_until_ack(later, f"ticker.{symbol}")] == []
        assert [f["type"] for f in frames_until_ack(later, "heartbeat")] == ["ticker"]
        # This process saw the delisting's frame: a later subscriber gets that frame's data.
        admin_action(staff, changelist, "delist", instrument.pk, confirmed="yes", reason="Wound up")
        delisted = status_frames(ws, 1)[0]["data"]
        assert (delisted["status"], delisted["reason"]) == ("delisted", "Wound up")
        frames = frames_until_ack(later, "heartbeat")
        status = [f for f in frames if f["type"] == "status"]
        assert status == [{"channel": f"ticker.{symbol}", "type": "status", "data": delisted}], (
            frames
        )
        frames = frames_until_ack(later, f"book.{symbol}")
        late = [json.loads(later.recv(timeout=15)) for _ in range(2)]
        assert [f["type"] for f in late] == ["snapshot", "status"], (frames, late)
        assert late[1]["data"] == delisted and "ts_ns" in delisted


@pytest.mark.processes
def test_a_session_closing_or_opening_is_told_on_the_book_and_ticker_channels(
    exchange_stack, live_db
):
    # No frame said when a session opened or closed (the ticker's `closed` was computed per
    # request). Here staff change the hours: closed but for one second a weekday at midnight
    # UTC, then 24/7 again.
    instrument = make_instrument()
    symbol = instrument.symbol
    staff = admin_client(exchange_stack)
    url = exchange_stack.replace("http://", "ws://") + "/ws/v1"
    closed_hours = {
        "trades_24_7": "",
        "session_open": "00:00:00",
        "session_close": "00:00:01",
        "session_timezone": "UTC",
    }
    with ws_connect(url) as ws, ws_connect(url) as later:
        assert frames_until_ack(ws, f"ticker.{symbol}") == []
        assert [f["type"] for f in frames_until_ack(ws, f"book.{symbol}")] == ["ticker"]
        assert admin_instrument_change(staff, instrument, **closed_hours).status_code == 302
        closed = status_frames(ws, 2)
        assert {f["channel"] for f in closed} == {f"book.{symbol}", f"ticker.{symbol}"}
        assert {(f["data"]["symbol"], f["data"]["status"]) for f in closed} == {(symbol, "closed")}
        later.send(json.dumps({"op": "subscribe", "channels": [f"ticker.{symbol}"]}))
        frames = [json.loads(later.recv(timeout=15)) for _ in range(3)]
        assert [f["type"] for f in frames] == ["subscribed", "ticker", "status"]
        assert frames[2]["data"]["status"] == "closed"
        instrument.refresh_from_db()
        reopened = admin_instrument_change(staff, instrument, trades_24_7="on")
        assert reopened.status_code == 302, reopened.text[:2000]
        opened = status_frames(ws, 2)
        assert {f["data"]["status"] for f in opened} == {"trading"}
        assert all(f["data"]["ts_ns"] > 0 for f in opened)


@pytest.mark.processes
def test_staff_cancel_on_a_users_behalf_and_tick_size_frozen_once_traded(exchange_stack, live_db):
    instrument = make_instrument()
    trader = ApiClient(exchange_stack)
    order = trader.place(
        symbol=instrument.symbol, side="sell", order_type="limit", price="12.00", quantity="3"
    ).json()
    staff = admin_client(exchange_stack)
    admin_action(staff, "/admin/exchange/order/", "cancel_orders", order["order_id"])
    cancelled = wait_until(
        lambda: (o := Order.objects.get(pk=order["order_id"])).status == "cancelled" and o,
        timeout=10,
    )
    # Its end says who cancelled it (it had said "user", as if the user had).
    assert cancelled.reason == "staff"
    final = AuditRecord.objects.get(order_id=order["order_id"], event_type="order.cancelled")
    assert (final.payload["who"], final.payload["why"]) == ("staff", "staff")
    assert trader.get(f"/api/v1/orders/{order['order_id']}").json()["reason"] == "staff"
    history = staff.get(f"/admin/exchange/order/{order['order_id']}/history/").text
    assert "Cancel sent on the user&#x27;s behalf" in history
    # Cancelling it again is refused, and recorded as a trader's refused cancel is (it had
    # left no record), under the order's owner with staff as the actor.
    admin_action(staff, "/admin/exchange/order/", "cancel_orders", order["order_id"])
    said = staff.get("/admin/exchange/order/").text
    assert f"Order {order['order_id']}: order {order['order_id']} is cancelled" in said
    assert "Cancel sent for 0 order(s)" not in said  # beside the refusal
    refusal = AuditRecord.objects.get(order_id=order["order_id"], event_type="order.cancel_refused")
    assert refusal.user_id == trader.user.pk and refusal.channel == "admin"
    assert refusal.payload["error"]["error"] == "OrderNotOpen"
    assert refusal.actor_label != f"user:{trader.user.pk}"
    change_page = staff.get(f"/admin/exchange/instrument/{instrument.pk}/change/").text
    assert 'name="tick_size"' not in change_page
    assert 'name="lot_size"' not in change_page
    assert 'name="min_notional"' in change_page
    order_page = staff.get(f"/admin/exchange/order/{order['order_id']}/change/").text
    assert 'name="price"' not in order_page  # orders are read-only in the admin


@pytest.mark.processes
def test_staff_see_and_cancel_orders_only_with_the_permissions_for_it(exchange_stack, live_db):
    # Any staff member had seen every user's orders and could cancel them.
    instrument = make_instrument()
    trader = ApiClient(exchange_stack)
    order = trader.place(
        symbol=instrument.symbol, side="sell", order_type="limit", price="12.00", quantity="3"
    ).json()
    changelist = "/admin/exchange/order/"
    bare = admin_client(exchange_stack, permissions=())
    assert bare.get(changelist).status_code == 403
    assert bare.get(f"{changelist}{order['order_id']}/change/").status_code == 403
    viewer = admin_client(exchange_stack, permissions=("exchange.view_order",))
    page = viewer.get(changelist)
    assert page.status_code == 200 and "cancel_orders" not in page.text
    # Not an action of theirs: the list comes back (200), nothing is cancelled.
    refused = admin_action_post(viewer, changelist, "cancel_orders", order["order_id"])
    assert refused.status_code == 200
    assert not Command.objects.filter(order_id=order["order_id"], kind="cancel").exists()
    canceller = admin_client(exchange_stack, permissions=("exchange.change_order",))
    admin_action(canceller, changelist, "cancel_orders", order["order_id"])
    assert Command.objects.filter(order_id=order["order_id"], kind="cancel").exists()


@pytest.mark.processes
def test_staff_who_may_only_view_instruments_cannot_halt_resume_or_delist_them(
    exchange_stack, live_db
):
    # The actions were offered to (and run for) anyone who could see the list: a viewer
    # halted a book, and could have delisted it.
    instrument = make_instrument()
    changelist = "/admin/exchange/instrument/"
    viewer = admin_client(exchange_stack, permissions=("exchange.view_instrument",))
    page = viewer.get(changelist)
    assert page.status_code == 200
    for action in ("halt_trading", "resume_trading", "delist"):
        assert f'value="{action}"' not in page.text, action
        refused = admin_action_post(
            viewer, changelist, action, instrument.pk, reason="x", confirmed="yes"
        )
        assert refused.status_code == 200, action  # the list again, nothing run
        instrument.refresh_from_db()
        assert instrument.status == "trading", action
    assert not Command.objects.filter(kind="halt", payload__symbol=instrument.symbol).exists()
    assert not AuditRecord.objects.filter(
        symbol=instrument.symbol, event_type__startswith="instrument.", actor_id__isnull=False
    ).exists()
    editor = admin_client(exchange_stack, permissions=("exchange.change_instrument",))
    admin_action(editor, changelist, "halt_trading", instrument.pk)
    instrument.refresh_from_db()
    assert instrument.status == "halted"


@pytest.mark.processes
def test_an_orders_admin_page_cannot_save_it(exchange_stack, live_db):
    # Every field was read-only, yet "Save" wrote the row back as read: over a fill the worker
    # committed meanwhile (the order open again, and refilled after the worker's rebuild).
    instrument = make_instrument()
    trader = ApiClient(exchange_stack)
    order = trader.place(
        symbol=instrument.symbol, side="sell", order_type="limit", price="12.00", quantity="3"
    ).json()
    canceller = admin_client(exchange_stack, permissions=("exchange.change_order",))
    page_url = f"/admin/exchange/order/{order['order_id']}/change/"
    page = canceller.get(page_url)
    assert page.status_code == 200 and 'name="_save"' not in page.text
    before = Order.objects.get(pk=order["order_id"]).updated_at
    saved = canceller.post(
        page_url, data={"csrfmiddlewaretoken": csrf_token(canceller, page_url), "_save": "Save"}
    )
    assert saved.status_code == 403
    assert Order.objects.get(pk=order["order_id"]).updated_at == before
    assert "cancel_orders" in canceller.get("/admin/exchange/order/").text  # the action stays


@pytest.mark.processes
def test_the_admin_never_shows_a_second_factors_secret(exchange_stack, live_db):
    # django-otp's admin showed each device's key, its otpauth:// URI and its QR code.
    device = give_totp_device(make_user())
    staff = admin_client(exchange_stack)
    base = f"/admin/otp_totp/totpdevice/{device.pk}"
    page = staff.get(f"{base}/change/")
    assert page.status_code == 200 and "Authenticator app" in page.text
    for path in (f"{base}/change/", f"{base}/config/", f"{base}/qrcode/"):
        response = staff.get(path, follow_redirects=True)
        assert device.key not in response.text and "otpauth://" not in response.text, path
        assert "svg" not in response.headers.get("content-type", ""), path
    assert staff.get("/admin/otp_totp/totpdevice/").status_code == 200


@pytest.mark.processes
def test_the_admin_never_shows_or_takes_recovery_codes(exchange_stack, live_db):
    # django-otp's admin listed every user's recovery codes in editable fields.
    device = StaticDevice.objects.create(user=make_user(), name="Recovery codes", confirmed=True)
    codes = [device.token_set.create(token=StaticToken.random_token()) for _ in range(10)]
    staff = admin_client(exchange_stack)
    base = "/admin/otp_static/staticdevice/"
    page = staff.get(f"{base}{device.pk}/change/")
    assert page.status_code == 200 and "Codes left" in page.text
    stored = [token.token for token in device.token_set.all()]
    assert len(stored) == len(codes)
    for token in stored:
        assert token not in page.text
    assert 'name="_save"' not in page.text and 'name="token_set-0-token"' not in page.text
    assert staff.get(f"{base}add/").status_code == 403
    refused = staff.post(
        f"{base}{device.pk}/change/",
        data={
            "csrfmiddlewaretoken": csrf_token(staff, base),
            "token_set-TOTAL_FORMS": "1",
            "token_set-INITIAL_FORMS": "0",
            "token_set-0-token": "mychosen",
        },
    )
    assert refused.status_code == 403
    assert not device.token_set.filter(token="mychosen").exists()
    assert staff.get(base).status_code == 200


@pytest.mark.processes
def test_only_a_superuser_resets_another_staff_members_second_factor(exchange_stack, live_db):
    # Staff with the device permissions deleted a superuser's authenticator and recovery codes
    # (their 2FA reset: the password alone then enrols a new one), which the user admin keeps
    # them from doing to the account itself.
    boss = make_user("boss")
    boss.is_staff = boss.is_superuser = True
    boss.save()
    customer = make_user()
    support = admin_client(
        exchange_stack,
        permissions=(
            "otp_totp.view_totpdevice",
            "otp_totp.change_totpdevice",
            "otp_totp.delete_totpdevice",
            "otp_static.view_staticdevice",
            "otp_static.delete_staticdevice",
        ),
    )
    for owner, allowed in ((boss, False), (customer, True)):
        totp = give_totp_device(owner)
        codes = StaticDevice.objects.create(user=owner, name="Recovery codes", confirmed=True)
        token = csrf_token(support, "/admin/")
        renamed = support.post(
            f"/admin/otp_totp/totpdevice/{totp.pk}/change/",
            data={"csrfmiddlewaretoken": token, "name": "renamed", "_save": "Save"},
        )
        assert renamed.status_code == (302 if allowed else 403), owner
        for model, device in (("otp_totp.totpdevice", totp), ("otp_static.staticdevice", codes)):
            deleted = support.post(
                f"/admin/{model.replace('.', '/')}/{device.pk}/delete/",
                data={"csrfmiddlewaretoken": token, "post": "yes"},
            )
            assert deleted.status_code == (302 if allowed else 403), (owner, model)
            assert type(device).objects.filter(pk=device.pk).exists() is not allowed
    assert TOTPDevice.objects.filter(user=boss, name="renamed").count() == 0


@pytest.mark.processes
def test_staff_add_and_edit_users_only_with_an_email_no_one_else_has(exchange_stack, live_db):
    # A second user added without an email was a 500 (the empty email already taken); one
    # whose email differed from another's only in case was kept, and could never sign in.
    staff = admin_client(exchange_stack)
    existing = make_user()
    add_url = "/admin/accounts/user/add/"

    def add(username: str, email: str) -> httpx.Response:
        return staff.post(
            add_url,
            data={
                "csrfmiddlewaretoken": csrf_token(staff, add_url),
                "username": username,
                "email": email,
                "usable_password": "true",
                "password1": "a-long-password-42",
                "password2": "a-long-password-42",
            },
        )

    for email in ("", existing.email.upper()):
        refused = add(f"new-{uuid.uuid4().hex[:8]}", email)
        assert refused.status_code == 200, email  # the form again, with the error
        assert "This field is required." in refused.text or "already exists" in refused.text
    created = add(f"new-{uuid.uuid4().hex[:8]}", "  New.Person@Example.COM ")
    assert created.status_code == 302
    new_user = get_user_model().objects.get(email="new.person@example.com")
    change_url = f"/admin/accounts/user/{new_user.pk}/change/"
    form = staff.get(change_url).text
    assert 'name="email"' in form
    clash = admin_user_change(staff, new_user, email=existing.email.upper(), is_active="on")
    assert clash.status_code == 200 and "already exists" in clash.text
    new_user.refresh_from_db()
    assert new_user.email == "new.person@example.com"


@pytest.mark.processes
def test_a_user_staff_deactivate_has_every_open_order_cancelled_on_their_behalf(
    exchange_stack, live_db
):
    # The orders stayed on the book, able to fill, while their owner could no longer sign in.
    staff = admin_client(exchange_stack)
    instrument = make_instrument()
    trader = ApiClient(exchange_stack)
    placed = [
        trader.place(symbol=instrument.symbol, side="buy", order_type="limit", price=price,
                     quantity="1").json()
        for price in ("10.00", "10.01")
    ]  # fmt: skip
    assert [order["status"] for order in placed] == ["new", "new"]
    user = trader.user
    saved = admin_user_change(staff, user)  # is_active left out: unticked
    assert saved.status_code == 302, saved.text[-2000:]
    user.refresh_from_db()
    assert not user.is_active

    def all_cancelled():
        orders = Order.objects.filter(user=user)
        return all(o.status == "cancelled" for o in orders) and list(orders)

    orders = wait_until(all_cancelled, timeout=20)
    assert {(o.status, o.reason) for o in orders} == {("cancelled", "staff")}
    assert all(o.hold_remaining == 0 for o in orders)


@pytest.mark.processes
def test_a_user_made_staff_loses_the_api_keys_made_before(exchange_stack, live_db):
    # A key made before the promotion, without the second factor staff need, carried the new
    # powers: crediting deposits over it never asked for a one-time code.
    trader = ApiClient(exchange_stack)
    assert trader.get("/api/v1/balances").status_code == 200
    boss = admin_client(exchange_stack)
    user = trader.user
    saved = admin_user_change(boss, user, is_active="on", is_staff="on")
    assert saved.status_code == 302, saved.text[:2000]
    trader.api_key.refresh_from_db()
    assert trader.api_key.revoked_at is not None
    refused = trader.http.post(
        f"/api/v1/users/{user.pk}/deposit", json={"asset": "USD", "amount": "1"}
    )
    assert (refused.status_code, refused.json()["error"]) == (401, "InvalidApiKey")
    record = AuditRecord.objects.get(event_type="auth.api_key_revoked", user_id=user.pk)
    assert record.payload["api_key_id"] == trader.api_key.pk and record.channel == "admin"
    # Another change of a staff member revokes nothing more (only a promotion does).
    again = ApiClient(exchange_stack, user=user)
    assert admin_user_change(boss, user, is_active="on", is_staff="on").status_code == 302
    again.api_key.refresh_from_db()
    assert again.api_key.revoked_at is None


@pytest.mark.processes
def test_staff_revoke_a_traders_api_key_in_the_admin(exchange_stack, live_db):
    # The key admin was read-only: stopping a leaked key took deactivating its whole user.
    staff = admin_client(exchange_stack)
    trader = ApiClient(exchange_stack)
    assert trader.get("/api/v1/balances").status_code == 200
    admin_action(staff, "/admin/accounts/apikey/", "revoke_keys", trader.api_key.pk)
    trader.api_key.refresh_from_db()
    assert trader.api_key.revoked_at is not None
    refused = trader.get("/api/v1/balances")
    assert (refused.status_code, refused.json()["error"]) == (401, "InvalidApiKey")
    record = AuditRecord.objects.get(event_type="auth.api_key_revoked", user_id=trader.user.pk)
    assert record.payload["api_key_id"] == trader.api_key.pk
    assert record.actor_label != f"user:{trader.user.pk}" and record.channel == "admin"


@pytest.mark.processes
def test_a_user_edit_saved_while_its_owner_changes_the_password_keeps_the_new_one(
    exchange_stack, live_db
):
    # The edit wrote back the whole row as read, the password hash too: a password changed
    # meanwhile (say, after a leak) was undone, the old one valid again.
    customer = make_user()
    customer.set_password("old-password-1")
    customer.save()
    support = admin_client(exchange_stack, permissions=("accounts.change_user",))

    def change_password() -> None:
        owner = get_user_model().objects.select_for_update().get(pk=customer.pk)
        owner.set_password("new-password-2")
        owner.save(update_fields=["password"])

    email = f"moved-{customer.email}"
    edited = saved_behind(
        change_password,
        lambda: admin_user_change(support, customer, email=email, is_active="on"),
    )
    assert edited.status_code == 302, edited.text[:2000]
    customer.refresh_from_db()
    assert customer.email == email
    assert customer.check_password("new-password-2")


@pytest.mark.processes
def test_an_authenticator_renamed_while_its_owner_signs_in_keeps_its_replay_guard(
    exchange_stack, live_db
):
    # The rename wrote back the whole row as read: the time step of a code used meanwhile (the
    # guard against using it twice) and the failed-code count went back to their old values.
    customer = make_user()
    device = give_totp_device(customer)
    support = admin_client(
        exchange_stack,
        permissions=("otp_totp.view_totpdevice", "otp_totp.change_totpdevice"),
    )

    def sign_in() -> None:
        used = TOTPDevice.objects.select_for_update().get(pk=device.pk)
        used.last_t, used.throttling_failure_count = 12345, 2
        used.save(update_fields=["last_t", "throttling_failure_count"])

    token = csrf_token(support, "/admin/")
    renamed = saved_behind(
        sign_in,
        lambda: support.post(
            f"/admin/otp_totp/totpdevice/{device.pk}/change/",
            data={"csrfmiddlewaretoken": token, "name": "phone", "_save": "Save"},
        ),
    )
    assert renamed.status_code == 302, renamed.text[:2000]
    device.refresh_from_db()
    assert (device.name, device.last_t, device.throttling_failure_count) == ("phone", 12345, 2)


@pytest.mark.processes
def test_staff_who_may_change_users_cannot_grant_powers_or_touch_a_superuser(
    exchange_stack, live_db
):
    # Support staff with only change_user ticked is_superuser on their own account.
    support = admin_client(
        exchange_stack, permissions=("accounts.change_user", "accounts.view_user")
    )
    me = get_user_model().objects.filter(is_staff=True).latest("pk")
    change_url = f"/admin/accounts/user/{me.pk}/change/"
    form = support.get(change_url).text
    assert 'name="email"' in form and 'name="is_superuser"' not in form
    saved = admin_user_change(
        support,
        me,
        is_active="on",
        is_staff="on",
        is_superuser="on",
        user_permissions=[str(p.pk) for p in Permission.objects.all()[:5]],
    )
    assert saved.status_code == 302  # the other fields are saved; the powers are not
    me.refresh_from_db()
    assert not me.is_superuser and me.user_permissions.count() == 2
    superuser = make_user("root")
    superuser.is_staff = superuser.is_superuser = True
    superuser.save()
    # Another staff member with a power support lacks: resetting its password took it over
    # (support then credited itself a million USD).
    treasurer = make_user("treasurer")
    treasurer.is_staff = True
    treasurer.save()
    treasurer.user_permissions.add(
        Permission.objects.get(content_type__app_label="accounts", codename="add_ledgerentry")
    )
    for above in (superuser, treasurer):
        pages = {
            url: support.get(f"/admin/accounts/user/{above.pk}/{url}/")
            for url in ("change", "password", "delete")
        }
        # A view only: no form, no password reset, no deletion.
        seen = {url: (page.status_code, 'name="email"' in page.text) for url, page in pages.items()}
        assert seen == {"change": (200, False), "password": (403, False), "delete": (403, False)}
        reset = support.post(
            f"/admin/accounts/user/{above.pk}/password/",
            data={
                "csrfmiddlewaretoken": csrf_token(support, change_url),
                "password1": "taken-over-42!",
                "password2": "taken-over-42!",
            },
        )
        assert reset.status_code == 403
        above.refresh_from_db()
        assert not above.check_password("taken-over-42!")
    # An ordinary user's account support does manage.
    customer = make_user()
    assert 'name="email"' in support.get(f"/admin/accounts/user/{customer.pk}/change/").text


@pytest.mark.processes
def test_the_audit_admins_id_filters_take_ascii_digits_only(exchange_stack, live_db):
    staff = admin_client(exchange_stack)
    for name in ("user", "order"):  # "²" is a digit to str.isdigit, not to int(): a 500
        response = staff.get("/admin/audit/auditrecord/", params={name: "\u00b2"})
        assert response.status_code == 200, (name, response.status_code)


@pytest.mark.processes
def test_the_audit_admins_filter_boxes_never_list_the_whole_trail_for_a_value_they_cannot_use(
    exchange_stack, live_db
):
    # An id that was not plain digits (" 42" pasted with a space, "alice") was ignored: the
    # whole trail was listed under a filter box that showed the value as applied.
    trader = ApiClient(exchange_stack)
    mine, other = make_instrument(), make_instrument()
    ids = [
        trader.place(
            symbol=instrument.symbol, side="sell", order_type="limit", price="12.00", quantity="1"
        ).json()["order_id"]
        for instrument in (mine, other)
    ]
    staff = admin_client(exchange_stack)

    def orders_listed(**params) -> list[bool]:
        page = staff.get("/admin/audit/auditrecord/", params=params)
        assert page.status_code == 200, page.status_code
        return [f"/order-history/{order_id}/" in page.text for order_id in ids]

    assert orders_listed() == [True, True]
    assert orders_listed(order=f" {ids[0]} ") == [True, False]
    assert orders_listed(symbol=f" {mine.symbol.lower()} ") == [True, False]
    assert orders_listed(user=f" {trader.user.pk}") == [True, True]
    for params in ({"order": "abc"}, {"order": f"#{ids[0]}"}, {"user": "alice"}):
        assert orders_listed(**params) == [False, False], params


@pytest.mark.processes
def test_an_instrument_listed_in_the_admin_is_audited_with_its_rules(exchange_stack, live_db):
    # Only the admin's generic record ("Added.", no symbol) had said it; a listing by the
    # system none at all.
    staff = admin_client(exchange_stack)
    symbol = f"L{uuid.uuid4().hex[:6].upper()}"
    assert admin_instrument_add(staff, symbol, min_notional="5.00").status_code == 302
    listed = AuditRecord.objects.get(event_type="instrument.listed", symbol=symbol)
    assert listed.actor_id is not None and listed.actor_id != 0
    assert (listed.payload["tick_size"], listed.payload["quote_asset"]) == ("0.01", "USD")
    assert listed.payload["rules"]["min_notional"] == 500
    command = Command.objects.get(pk=listed.payload["command_id"])
    assert command.kind == "add_instrument"
    by_system = make_instrument()
    assert AuditRecord.objects.filter(
        event_type="instrument.listed", symbol=by_system.symbol, actor_id__isnull=True
    ).exists()


@pytest.mark.processes
def test_the_admin_lists_an_instrument_only_of_two_distinct_asset_codes(exchange_stack, live_db):
    # "usd" (or "U SD") typed for USD listed a new asset beside it that no one held, and a
    # pair of USD for USD was listed too.
    staff = admin_client(exchange_stack)
    for assets, field, message in (
        ({"quote_asset": "usd"}, "quote_asset", "Upper-case letters and digits only"),
        ({"base_asset": "T T"}, "base_asset", "Upper-case letters and digits only"),
        ({"base_asset": "USD"}, "quote_asset", "Must differ from the base asset."),
    ):
        symbol = f"A{uuid.uuid4().hex[:6].upper()}"
        refused = admin_instrument_add(staff, symbol, **assets)
        assert refused.status_code == 200, assets
        assert re.search(
            rf'<div class="[^"]*field-{field}[^"]*">\s*<ul class="errorlist[^>]*><li>{message}',
            refused.text,
        ), (assets, refused.text[:3000])
        assert not Instrument.objects.filter(symbol=symbol).exists()
    symbol = f"A{uuid.uuid4().hex[:6].upper()}"
    assert admin_instrument_add(staff, symbol, base_asset="TST2").status_code == 302


@pytest.mark.processes
def test_rules_staff_change_in_the_admin_reach_the_matching_engine(exchange_stack, live_db):
    """The engine kept the rules an instrument was listed with: order entry took a lowered
    minimum, and then the engine rejected the order; a new default STP mode never applied."""
    instrument = make_instrument(min_quantity=Decimal("5"))
    trader = ApiClient(exchange_stack)
    resting = trader.place(
        symbol=instrument.symbol, side="sell", order_type="limit", price="12.00", quantity="5"
    ).json()
    staff = admin_client(exchange_stack)
    changed = admin_instrument_change(
        staff, instrument, min_quantity="1", default_stp_mode="cancel_incoming"
    )
    assert changed.status_code == 302, changed.text[:2000]
    command = Command.objects.get(kind="update_rules", payload__symbol=instrument.symbol)
    assert (command.payload["min_qty"], command.payload["stp_default"]) == (1, 3)

    # Order entry reads the new row within its 2 s cache; the engine got the rules first.
    def small_order_taken():
        response = trader.place(
            symbol=instrument.symbol, side="buy", order_type="limit", price="11.00", quantity="2"
        )
        assert response.json().get("error") in (None, "QuantityBelowMinimum"), response.text
        return response.status_code == 201 and response

    assert wait_until(small_order_taken, timeout=10).json()["status"] == "new"
    crossing = trader.place(
        symbol=instrument.symbol, side="buy", order_type="limit", price="12.00", quantity="1"
    ).json()
    assert (crossing["status"], crossing["reason"]) == ("cancelled", "stp")
    assert trader.get(f"/api/v1/orders/{resting['order_id']}").json()["status"] == "new"
    audited = AuditRecord.objects.filter(symbol=instrument.symbol)
    requested = audited.get(event_type="instrument.rules_change_requested")
    assert requested.payload["from"]["min_qty"] == 5 and requested.payload["to"]["min_qty"] == 1
    assert audited.filter(event_type="instrument.rules_changed").count() == 1


def a_session_waits_on_a_lock() -> bool:
    """Whether a session of the test database (the web process's admin request) waits for a
    row lock the test holds; one of another database (a parallel run) does not count."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE wait_event_type = 'Lock' AND datname = current_database()"
        )
        return cursor.fetchone()[0] > 0


def saved_behind(change: Callable[[], None], save: Callable[[], httpx.Response]) -> httpx.Response:
    """The answer to `save` (an admin form posted to the web process) made while `change` has
    not committed: `change` runs in a transaction of another thread, left open with its row
    locks until the form's save waits on them, then committed."""
    answers: list[httpx.Response] = []
    saving = threading.Thread(target=lambda: answers.append(save()))
    with transaction_held_open(change, seconds=15):
        saving.start()
        wait_until(a_session_waits_on_a_lock, timeout=10)  # the save, behind the change
    saving.join(15)
    return answers[0]


@pytest.mark.processes
def test_an_instrument_edit_saved_while_a_halt_commits_keeps_the_halt(exchange_stack, live_db):
    # The edit wrote back the whole row as read, its status too: a halt that committed
    # meanwhile was undone in the database (trading there, halted in the engine).
    instrument = make_instrument()
    staff = admin_client(exchange_stack)
    edited = saved_behind(
        lambda: instrument_halt(
            instrument=Instrument.objects.get(pk=instrument.pk), actor=None, reason="Pending news"
        ),
        lambda: admin_instrument_change(staff, instrument, min_notional="2"),
    )
    assert edited.status_code == 302, edited.text[:2000]
    instrument.refresh_from_db()
    assert (instrument.status, instrument.status_reason) == ("halted", "Pending news")
    assert instrument.min_notional == Decimal("2")


@pytest.mark.processes
def test_two_staff_edits_of_an_instrument_saved_together_both_reach_the_engine(
    exchange_stack, live_db
):
    # The later save sent the engine every rule as its form had read them: another staff
    # member's band, committed meanwhile, was kept in the database and order entry but undone
    # in the engine (which then rejected orders order entry took, or took ones it refused).
    instrument = make_instrument(price_band_pct=Decimal("10"))
    staff = admin_client(exchange_stack)

    def other_staff_widen_the_band():
        previous = Instrument.objects.get(pk=instrument.pk)
        edited = Instrument.objects.get(pk=instrument.pk)
        edited.price_band_pct = Decimal("20")
        edited.save(update_fields=["price_band_pct"])
        instrument_rules_update(instrument=edited, previous=previous, actor=None)

    saved = saved_behind(
        other_staff_widen_the_band,
        lambda: admin_instrument_change(staff, instrument, min_notional="2"),
    )
    assert saved.status_code == 302, saved.text[:2000]
    instrument.refresh_from_db()
    assert (instrument.price_band_pct, instrument.min_notional) == (Decimal("20"), Decimal("2"))
    sent = Command.objects.filter(kind="update_rules", payload__symbol=instrument.symbol)
    last = sent.order_by("pk").last().payload
    assert (last["band_ppm"], last["min_notional"]) == (200_000, 200)


@pytest.mark.processes
def test_the_admin_refuses_rules_order_entry_cannot_use_and_freezes_the_scale(
    exchange_stack, live_db
):
    instrument = make_instrument()
    staff = admin_client(exchange_stack)
    page = staff.get(f"/admin/exchange/instrument/{instrument.pk}/change/").text
    for fixed in ("symbol", "base_asset", "quote_asset", "tick_size", "lot_size"):
        assert f'name="{fixed}"' not in page, f"{fixed} is editable"
    # Deleting a listed instrument left its book in the engine: the shard could not recover.
    assert staff.get(f"/admin/exchange/instrument/{instrument.pk}/delete/").status_code == 403
    # A minimum off the lot size made every order of the instrument a 500.
    refused = admin_instrument_change(
        staff,
        instrument,
        min_quantity="0.5",
        price_band_pct="-1",
        trades_24_7="",
        session_open="16:00",
        session_close="09:30",
        session_timezone="Mars/Olympus",
    )
    assert refused.status_code == 200
    for message in (
        "Must be a multiple of the lot size 1.",
        "Cannot be negative (0 turns the band off).",
        "Must be after the session open.",
        "Not a time zone name",
    ):
        assert message in refused.text
    # Said at each field: they had read 'Constraint "instrument_min_qty_gt_0" is violated.'.
    refused = admin_instrument_change(staff, instrument, min_quantity="0", min_notional="-1",
                                      trades_24_7="")  # fmt: skip
    assert refused.status_code == 200 and "Constraint" not in refused.text
    for message in (
        "Must be more than 0.",
        "Cannot be negative (0: no minimum).",
        "Set the session&#x27;s open and close, or tick trades 24/7.",
    ):
        assert message in refused.text
    instrument.refresh_from_db()
    assert (instrument.min_quantity, instrument.trades_24_7) == (Decimal("1"), True)
    assert not Command.objects.filter(kind="update_rules", payload__symbol=instrument.symbol)
    # A tick finer than the quote asset's precision: a fill of 1 at 0.0099 settled for 0.00.
    symbol = f"FINE{instrument.symbol[-4:]}"
    added = admin_instrument_add(staff, symbol, tick_size="0.0001")
    assert added.status_code == 200 and "At most 2 decimal places" in added.text
    assert not Instrument.objects.filter(symbol=symbol).exists()
    trader = ApiClient(exchange_stack)
    placed = trader.place(
        symbol=instrument.symbol, side="buy", order_type="limit", price="10.00", quantity="1"
    )
    assert placed.status_code == 201, placed.text


@pytest.mark.processes
def test_staff_actions_keep_the_request_the_values_changed_and_whose_object_it_was(
    exchange_stack, live_db
):
    # staff.action records had no client address or session, said only "Changed Session open"
    # (not from what to what), had no symbol; and a staff reset of a user's 2FA did not appear
    # in that user's activity.
    instrument = make_instrument()
    staff = admin_client(exchange_stack)
    changed = admin_instrument_change(
        staff,
        instrument,
        trades_24_7="",
        session_open="09:30",
        session_close="16:00",
        min_notional="2.50",
    )
    assert changed.status_code == 302, changed.text[:2000]
    record = AuditRecord.objects.filter(
        event_type="staff.action", payload__model="exchange.instrument"
    ).latest("seq")
    assert record.ip == "127.0.0.1" and record.session_hash
    assert record.symbol == instrument.symbol
    changes = record.payload["changes"]
    assert changes["session_open"] == {"before": None, "after": "09:30:00"}
    assert changes["trades_24_7"] == {"before": True, "after": False}
    assert changes["min_notional"] == {"before": "1", "after": "2.5"}

    user = make_user()
    device = give_totp_device(user)
    page = f"/admin/otp_totp/totpdevice/{device.pk}/delete/"
    deleted = staff.post(page, data={"post": "yes", "csrfmiddlewaretoken": csrf_token(staff, page)})
    assert deleted.status_code == 302, deleted.text[:2000]
    reset = AuditRecord.objects.get(event_type="auth.2fa_disabled", user_id=user.pk)
    assert reset.payload["method"] == "staff_reset" and reset.ip == "127.0.0.1"
    assert AuditRecord.objects.get(
        event_type="staff.action", payload__model="otp_totp.totpdevice", user_id=user.pk
    )


@pytest.mark.processes
def test_session_hours_staff_set_end_the_day_orders_their_close_has_passed(exchange_stack, live_db):
    """A DAY order placed while the book traded 24/7 kept its UTC-midnight expiry when staff
    gave the book hours: after their close it still rested on the closed market, its funds
    held, and would have traded into the next session had the book gone 24/7 again."""
    instrument = make_instrument()
    trader = ApiClient(exchange_stack)
    order = {"symbol": instrument.symbol, "side": "buy", "order_type": "limit", "quantity": "1"}
    day = trader.place(**order, price="10.00", time_in_force="DAY").json()
    gtc = trader.place(**order, price="9.00").json()
    assert (day["status"], gtc["status"]) == ("new", "new")

    staff = admin_client(exchange_stack)
    changed = admin_instrument_change(
        staff, instrument, trades_24_7="", session_open="00:00:00", session_close="00:00:01",
        session_timezone="UTC",
    )  # fmt: skip
    assert changed.status_code == 302, changed.text[:2000]
    # At once: for 2 s the web processes' copy of the instrument had taken DAY orders with the
    # old expiry (80 rested on the closed book), and any order MarketClosed should refuse.
    late = trader.place(**order, price="10.00", time_in_force="DAY")
    assert (late.status_code, late.json()["error"]) == (400, "MarketClosed"), late.text

    def ended():
        state = trader.get(f"/api/v1/orders/{day['order_id']}").json()
        return state["status"] != "new" and state

    ended_day = wait_until(ended, timeout=15)
    assert (ended_day["status"], ended_day["reason"]) == ("expired", "day_expired")
    assert trader.get(f"/api/v1/orders/{gtc['order_id']}").json()["status"] == "new"
    usd = next(b for b in trader.get("/api/v1/balances").json() if b["asset"] == "USD")
    assert Decimal(usd["held"]) == Decimal(gtc["held_amount"])  # the DAY order's went back
    requested = AuditRecord.objects.get(
        event_type="instrument.rules_change_requested", symbol=instrument.symbol
    )
    assert requested.payload["session"]["to"] == {
        "trades_24_7": False, "open": "00:00:00", "close": "00:00:01", "timezone": "UTC"
    }  # fmt: skip
    assert AuditRecord.objects.filter(event_type="order.expired", order_id=day["order_id"]).exists()


def test_admin_labels_say_what_an_order_trade_and_fee_tier_are():
    # An order's label put its instrument's id where its quantity reads ("order 7 buy 3 new"),
    # and the base fee tier's minimum volume read "0E-12".
    from accounts.admin import FeeTierAdmin
    from accounts.models import FeeTier
    from exchange.models import Trade

    aapl = Instrument(pk=3, symbol="AAPL")
    order = Order(pk=42, side="buy", quantity=Decimal("10.000000000000"), status="new")
    order.instrument = aapl
    assert str(order) == "order 42: buy 10 AAPL (new)"
    by_quote = Order(pk=43, side="buy", instrument_id=3, quote_quantity=Decimal("250.50"))
    by_quote.status = "pending_new"
    assert str(by_quote) == "order 43: buy instrument 3 for 250.5 (pending_new)"
    trade = Trade(pk=7, quantity=Decimal("2.000000000000"), price=Decimal("101.500000000000"))
    assert str(trade) == "trade 7: 2 @ 101.5"
    tier_admin = FeeTierAdmin(FeeTier, admin.site)
    assert tier_admin.min_volume(FeeTier(min_volume_30d=Decimal("0E-12"))) == "0"
    assert tier_admin.min_volume(FeeTier(min_volume_30d=Decimal("1000000.000000000000"))) == (
        "1000000"
    )


@pytest.mark.processes
def test_an_order_or_amend_reaching_the_engine_after_the_close_is_refused_and_trades_nothing(
    exchange_stack, live_db
):
    # Order entry checked the session; the engine knows none: an order accepted before the
    # close but applied after it (behind a stopped worker, or in flight at the close) traded on
    # the closed book. Here both are accepted "on Wednesday" and reach the engine now.
    instrument = make_instrument()  # 24/7 while the maker's orders rest
    maker, taker = ApiClient(exchange_stack), ApiClient(exchange_stack)
    resting = {
        side: maker.place(symbol=instrument.symbol, side=side, order_type="limit",
                          price=price, quantity="2").json()
        for side, price in (("sell", "10.00"), ("buy", "9.00"))
    }  # fmt: skip
    assert {order["status"] for order in resting.values()} == {"new"}
    with transaction.atomic():
        previous = Instrument.objects.select_for_update().get(pk=instrument.pk)
        instrument.trades_24_7 = False
        instrument.session_open, instrument.session_close = dt.time(9, 30), dt.time(16, 0)
        instrument.session_timezone = "America/New_York"
        instrument.save()
        instrument_rules_update(instrument=instrument, previous=previous, actor=None)
    in_session = dt.datetime(2026, 11, 25, 15, 59, 59, tzinfo=NEW_YORK)
    crossing = order_place(user=taker.user, request=buy(instrument.symbol), now=in_session)
    assert crossing.order.status == "pending_new"
    bid = Order.objects.get(pk=resting["buy"]["order_id"])
    held_before = bid.held_amount
    repriced = order_amend(order=bid, actor=maker.user, price=Decimal("10.00"), now=in_session)

    def both_applied():
        return not Command.objects.filter(
            pk__in=[crossing.command_id, repriced.pk], applied_at__isnull=True
        ).exists()

    wait_until(both_applied, timeout=20)
    crossing.order.refresh_from_db()
    assert (crossing.order.status, crossing.order.reason, crossing.order.reject_code) == (
        "rejected", "market_closed", "MarketClosed"
    )  # fmt: skip
    assert crossing.order.hold_remaining == 0
    refused = taker.get(f"/api/v1/orders/{crossing.order.pk}").json()
    assert refused["rejection"]["error"] == "MarketClosed"
    repriced.refresh_from_db()
    assert repriced.reject_code == "MarketClosed"
    bid.refresh_from_db()
    assert (bid.status, bid.price, bid.held_amount) == ("new", Decimal("9.00"), held_before)
    assert not taker.get("/api/v1/fills").json()["results"]
    book = taker.get(f"/api/v1/orderbook/{instrument.symbol}").json()
    assert (book["bids"][0]["price"], book["asks"][0]["price"]) == ("9.00", "10.00")
    balances = {b["asset"]: b for b in taker.get("/api/v1/balances").json()}
    assert Decimal(balances["USD"]["held"]) == 0
    assert AuditRecord.objects.filter(
        order_id=crossing.order.pk, event_type="order.rejected", payload__code="MarketClosed"
    ).exists()

"""The streaming WebSocket (/ws/v1) against the real web process, worker and Redis."""

import asyncio
import itertools
import json
import random
import time
from decimal import Decimal

import httpx
import pytest
import websockets
from django.db import connection
from django.test import Client

from accounts.ledger import funds_deposit
from accounts.signing import ws_login_message
from audit.models import AuditRecord
from conftest import start_web, wait_until
from exchange import wsclient
from exchange.tests.api_client import ApiKeyAuth, limit, make_api_key, make_instrument, make_user
from exchange.wsclient import BookClient

pytestmark = [pytest.mark.processes]


@pytest.fixture(scope="module")
def process_env(process_env):
    """Short limits and timeouts for this module's web process."""
    return {
        **process_env,
        "WS_MAX_SUBSCRIPTIONS": "6",
        "WS_MAX_MESSAGES_PER_SECOND": "20",
        "WS_ABUSE_CLOSE_AFTER": "5",
        "WS_PING_INTERVAL_SECONDS": "0.5",
        "WS_PING_TIMEOUT_SECONDS": "5",
    }


@pytest.fixture
def market(exchange_stack, live_db):
    """A fresh symbol, two traders with API keys (read, trade), and the socket URL."""
    instrument = make_instrument(price_band_pct=Decimal("50"))
    users = [make_user(), make_user()]
    keys = [make_api_key(u) for u in users]
    ws_url = exchange_stack.replace("http://", "ws://") + "/ws/v1"
    return {
        "base": exchange_stack,
        "ws": ws_url,
        "symbol": instrument.symbol,
        "users": users,
        "keys": keys,
    }


def rest(base: str, key) -> httpx.AsyncClient:
    """An HTTP client signing with `key` (a CreatedApiKey)."""
    return httpx.AsyncClient(
        base_url=base, auth=ApiKeyAuth(key.api_key.key, key.secret), timeout=15
    )


def login_op(key, *, at_ms: int | None = None, recv_window: int | None = None, **extra) -> dict:
    """The signed `login` op of `key`, for the instant `at_ms` (default now)."""
    at_ms = time.time_ns() // 1_000_000 if at_ms is None else at_ms
    signed = ws_login_message(
        api_key=key.api_key.key, secret=key.secret, timestamp_ms=at_ms, recv_window_ms=recv_window
    )
    return {**signed, **extra}


async def send(ws, message) -> None:
    await ws.send(message if isinstance(message, str) else json.dumps(message))


async def recv_until(ws, predicate, *, timeout: float = 10.0, seen: list | None = None) -> dict:
    """Read frames (answering pings) until one satisfies `predicate`; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no matching frame within {timeout}s; seen {seen}")
        frame = json.loads(await asyncio.wait_for(ws.recv(), remaining))
        if frame.get("type") == "ping":
            await send(ws, {"op": "pong", "id": frame["id"]})
            continue
        if seen is not None:
            seen.append(frame)
        if predicate(frame):
            return frame


async def frames_for(ws, seconds: float):
    """The frames that arrive within `seconds` (the server's pings answered, not yielded)."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            frame = json.loads(await asyncio.wait_for(ws.recv(), left))
        except TimeoutError:
            return
        if frame.get("type") == "ping":
            await send(ws, {"op": "pong", "id": frame["id"]})
        else:
            yield frame


async def order_frame(ws, order_id: int) -> dict:
    """The next `orders` frame of the order `order_id` (other frames are read past)."""
    return await recv_until(
        ws, lambda f: f.get("type") == "order" and f["data"]["order_id"] == order_id
    )


async def log_in(ws, key, **fields) -> dict:
    """Send the signed `login` op of `key` (with `fields`); the login frame."""
    await send(ws, login_op(key, **fields))
    return await recv_until(ws, lambda f: f.get("type") == "login")


async def responses_by_id(ws, count: int) -> dict:
    """The next `count` op answers (other frames are read past), by their `id`."""
    answers = {}
    while len(answers) < count:
        frame = await recv_until(ws, lambda f: f.get("type") == "response")
        answers[frame["id"]] = frame
    return answers


async def watch_own_orders(ws, key) -> dict:
    """Log the socket in with `key` and subscribe it to its `orders` channel; the login frame."""
    login = await log_in(ws, key, id=1)
    await send(ws, {"op": "subscribe", "channels": ["orders"]})
    await recv_until(ws, lambda f: f.get("type") == "subscribed")
    return login


async def until_closed(ws, *, timeout: float = 10.0) -> tuple[int, list[dict]]:
    """Read frames (answering pings, as a live client does) until the server closes the socket;
    fail at the deadline. Returns the close code and the frames other than pings."""
    frames = []
    deadline = time.monotonic() + timeout
    with pytest.raises(websockets.ConnectionClosed) as closed:
        while time.monotonic() < deadline:
            frame = json.loads(await asyncio.wait_for(ws.recv(), timeout))
            if frame.get("type") == "ping":
                await send(ws, {"op": "pong", "id": frame["id"]})
            else:
                frames.append(frame)
    return closed.value.rcvd.code, frames


async def until(predicate, *, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.05)


async def random_burst(http: list[httpx.AsyncClient], symbol: str, count: int, seed: int) -> None:
    rng = random.Random(seed)

    async def one(n: int) -> None:
        side = rng.choice(("buy", "sell"))
        offset = rng.randint(-3, 15)
        price = 100 - offset if side == "buy" else 100 + offset
        response = await http[n % len(http)].post(
            "/api/v1/orders",
            json=limit(symbol, side, f"{price}.{rng.randint(0, 99):02d}", str(rng.randint(1, 9))),
        )
        assert response.status_code in (201, 202), response.text

    for start in range(0, count, 8):  # bursts of 8 concurrent orders: multi-order batches
        await asyncio.gather(*(one(n) for n in range(start, min(count, start + 8))))


async def assert_book_equals_rest(client: BookClient, base: str, symbol: str) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=15) as http:

        async def rest_book() -> dict:
            return (await http.get(f"/api/v1/orderbook/{symbol}", params={"depth": 50})).json()

        book = await rest_book()
        await until(lambda: client.book.seq is not None and client.book.seq >= book["seq"])
        book = await rest_book()  # the last batch may have landed meanwhile
        await until(lambda: client.book.seq == book["seq"])
        bids, asks = client.book.top(50)
        assert bids == [(level["price"], level["quantity"]) for level in book["bids"]]
        assert asks == [(level["price"], level["quantity"]) for level in book["asks"]]


def test_book_snapshot_and_updates_stay_equal_to_the_rest_book(market):
    async def scenario():
        client = BookClient(market["ws"], market["symbol"])
        stop = asyncio.Event()
        runner = asyncio.create_task(client.run(stop=stop))
        http = [rest(market["base"], t) for t in market["keys"]]
        try:
            # Some resting orders first, so the snapshot is not empty.
            await random_burst(http, market["symbol"], 16, seed=1)
            await asyncio.wait_for(client.ready.wait(), 10)
            await random_burst(http, market["symbol"], 120, seed=2)
            await assert_book_equals_rest(client, market["base"], market["symbol"])
        finally:
            stop.set()
            await runner
            for h in http:
                await h.aclose()
        assert client.updates > 10
        assert client.checksum_errors == 0
        assert client.gaps == 0
        assert client.snapshots == 1

    asyncio.run(scenario())


def test_a_missed_update_is_detected_and_resynced_by_a_fresh_snapshot(market):
    async def scenario():
        client = BookClient(market["ws"], market["symbol"])
        stop = asyncio.Event()
        runner = asyncio.create_task(client.run(stop=stop))
        http = [rest(market["base"], t) for t in market["keys"]]
        try:
            await asyncio.wait_for(client.ready.wait(), 10)
            client.drop_next_updates = 1
            await random_burst(http, market["symbol"], 40, seed=3)
            await until(lambda: client.gaps >= 1 and client.snapshots >= 2)
            await random_burst(http, market["symbol"], 16, seed=4)
            await assert_book_equals_rest(client, market["base"], market["symbol"])
        finally:
            stop.set()
            await runner
            for h in http:
                await h.aclose()
        assert client.checksum_errors == 0

    asyncio.run(scenario())


def test_levels_behind_the_top_50_come_into_view_when_the_top_is_taken(market):
    symbol = market["symbol"]

    async def scenario():
        maker, taker = (rest(market["base"], t) for t in market["keys"])
        orders = [limit(symbol, "buy", f"{90 - i * 0.1:.2f}", "1") for i in range(70)]
        orders += [limit(symbol, "sell", f"{110 + i * 0.1:.2f}", "1") for i in range(70)]
        for start in range(0, len(orders), 10):
            # Ten at a time, 0.12 s apart: under the key's 100 orders/s limit (a faster burst
            # gets 429s for the orders past it, and the book misses them).
            await asyncio.sleep(0.12)
            placed = await asyncio.gather(
                *(maker.post("/api/v1/orders", json=o) for o in orders[start : start + 10])
            )
            assert all(r.status_code in (201, 202) for r in placed), [r.text for r in placed]
        client = BookClient(market["ws"], symbol, depth=20)
        stop = asyncio.Event()
        runner = asyncio.create_task(client.run(stop=stop))
        try:
            await asyncio.wait_for(client.ready.wait(), 10)
            assert len(client.book.bids) == 20
            # Take 35 levels of each side, a few at a time: 21 of the 70 come into view.
            for _ in range(7):
                for side, price in (("sell", "80.00"), ("buy", "120.00")):
                    taken = await taker.post("/api/v1/orders", json=limit(symbol, side, price, "5"))
                    assert taken.status_code in (201, 202), taken.text
            async with httpx.AsyncClient(base_url=market["base"], timeout=15) as http:
                book = (await http.get(f"/api/v1/orderbook/{symbol}", params={"depth": 20})).json()
            await until(lambda: client.book.seq == book["seq"])
            bids, asks = client.book.top(50)
            assert bids == [(level["price"], level["quantity"]) for level in book["bids"]]
            assert asks == [(level["price"], level["quantity"]) for level in book["asks"]]
            assert bids[0][0] == "86.50" and asks[0][0] == "113.50"
        finally:
            stop.set()
            await runner
            await maker.aclose()
            await taker.aclose()
        assert client.checksum_errors == 0 and client.gaps == 0 and client.snapshots == 1

    asyncio.run(scenario())


def test_trades_and_ticker_channels_report_each_trade_and_the_top_of_book(market):
    symbol = market["symbol"]

    async def scenario():
        http = [rest(market["base"], t) for t in market["keys"]]
        async with websockets.connect(market["ws"], ping_interval=None) as ws:
            await send(
                ws, {"op": "subscribe", "channels": [f"trades.{symbol}", f"ticker.{symbol}"]}
            )
            first = await recv_until(ws, lambda f: f.get("type") == "ticker")
            assert first["data"]["best_bid"] is None
            await http[0].post("/api/v1/orders", json=limit(symbol, "sell", "101.00", "5"))
            taker = await http[1].post("/api/v1/orders", json=limit(symbol, "buy", "101.00", "2"))
            seen: list[dict] = []

            def traded_ticker(f: dict) -> bool:
                return f.get("type") == "ticker" and f["data"]["last_price"] == "101.00"

            def both(_f: dict) -> bool:
                kinds = {f["type"] for f in seen if f["type"] == "trades" or traded_ticker(f)}
                return kinds == {"trades", "ticker"}

            await recv_until(ws, both, seen=seen)
            [trades] = [f for f in seen if f["type"] == "trades"]
            assert trades["channel"] == f"trades.{symbol}"
            [trade] = trades["data"]
            assert trade["price"] == "101.00" and trade["quantity"] == "2"
            assert trade["taker_side"] == "buy"
            assert trade["trade_id"] == taker.json()["fills"][0]["trade_id"]
            assert isinstance(trade["ts_ns"], int)
            [ticker] = [f for f in seen if traded_ticker(f)]
            assert ticker["data"]["best_ask"] == "101.00"
            assert ticker["data"]["best_ask_size"] == "3"
        for h in http:
            await h.aclose()

    asyncio.run(scenario())


def test_the_orders_channel_shows_only_the_subscribers_own_orders(market):
    symbol = market["symbol"]
    key_a, key_b = market["keys"]

    async def scenario():
        http_a, http_b = rest(market["base"], key_a), rest(market["base"], key_b)
        seen_a: list[dict] = []
        async with websockets.connect(market["ws"], ping_interval=None) as ws:
            login = await watch_own_orders(ws, key_a)
            assert login["user_id"] == market["users"][0].pk
            own = await http_a.post("/api/v1/orders", json=limit(symbol, "sell", "99.00", "5"))
            other = await http_b.post("/api/v1/orders", json=limit(symbol, "buy", "99.00", "3"))
            other_rest = await http_b.post(
                "/api/v1/orders", json=limit(symbol, "buy", "90.00", "1")
            )
            own_id, other_ids = (
                own.json()["order_id"],
                {
                    other.json()["order_id"],
                    other_rest.json()["order_id"],
                },
            )
            await http_b.delete(f"/api/v1/orders/{other_rest.json()['order_id']}")
            fill = await recv_until(
                ws,
                lambda f: f.get("type") == "order" and f["data"]["event"] == "partial_fill",
                seen=seen_a,
            )
            assert fill["data"]["order_id"] == own_id
            assert fill["data"]["filled"] == "3" and fill["data"]["remaining"] == "2"
            cancel = await http_a.delete(f"/api/v1/orders/{own_id}")
            assert cancel.status_code == 200
            cancelled = await recv_until(
                ws, lambda f: f.get("type") == "order" and f["data"]["event"] == "cancelled",
                seen=seen_a,
            )  # fmt: skip
            assert cancelled["data"]["order_id"] == own_id
            assert cancelled["data"]["reason"]
        orders = [f["data"] for f in seen_a if f.get("type") == "order"]
        assert {o["order_id"] for o in orders} == {own_id}
        assert not other_ids & {o["order_id"] for o in orders}
        assert all("user_id" not in o for o in orders)
        await http_a.aclose()
        await http_b.aclose()

    asyncio.run(scenario())


def test_a_resting_order_filled_to_the_end_says_its_price_on_the_orders_channel(market):
    # The maker's last frame ("fill") came without `price`, which its "accepted" and
    # "partial_fill" frames carry (only market and stop-loss orders go without one).
    symbol = market["symbol"]
    key_a, key_b = market["keys"][0], market["keys"][1]

    async def scenario():
        http_a, http_b = rest(market["base"], key_a), rest(market["base"], key_b)
        async with websockets.connect(market["ws"], ping_interval=None) as ws:
            await watch_own_orders(ws, key_a)
            own = await http_a.post("/api/v1/orders", json=limit(symbol, "sell", "99.00", "2"))
            await http_b.post("/api/v1/orders", json=limit(symbol, "buy", "99.00", "2"))
            fill = await recv_until(
                ws, lambda f: f.get("type") == "order" and f["data"]["event"] == "fill"
            )
        assert fill["data"]["order_id"] == own.json()["order_id"]
        assert (fill["data"]["filled"], fill["data"]["price"]) == ("2", "99.00")
        await http_a.aclose()
        await http_b.aclose()

    asyncio.run(scenario())


def test_order_frames_say_side_client_order_id_and_each_fill_as_rest_does(market):
    # Frames named the order by id only, with no fill's price, fee or trade: a market maker
    # read GET /fills after every frame to learn what it had traded.
    symbol = market["symbol"]
    key_a, key_b = market["keys"]

    async def scenario():
        http_a, http_b = rest(market["base"], key_a), rest(market["base"], key_b)
        async with (
            websockets.connect(market["ws"], ping_interval=None) as ws_a,
            websockets.connect(market["ws"], ping_interval=None) as ws_b,
        ):
            await watch_own_orders(ws_a, key_a)
            await watch_own_orders(ws_b, key_b)
            cheap = await http_a.post(
                "/api/v1/orders",
                json={**limit(symbol, "sell", "99.00", "2"), "client_order_id": "mm-1"},
            )
            dear = await http_a.post("/api/v1/orders", json=limit(symbol, "sell", "99.50", "3"))
            taker = await http_b.post(
                "/api/v1/orders",
                json={**limit(symbol, "buy", "100.00", "4"), "client_order_id": "t-1"},
            )
            assert taker.status_code == 201, taker.text
            taker_frame = await recv_until(
                ws_b, lambda f: f.get("type") == "order" and f["data"]["event"] == "fill"
            )
            maker_frames = {}
            while len(maker_frames) < 2:
                frame = await recv_until(
                    ws_a,
                    lambda f: (
                        f.get("type") == "order" and f["data"]["event"] in ("fill", "partial_fill")
                    ),
                )
                maker_frames[frame["data"]["order_id"]] = frame["data"]
        answer = taker.json()
        data = taker_frame["data"]
        assert (data["order_id"], data["side"], data["client_order_id"]) == (
            answer["order_id"], "buy", "t-1"
        )  # fmt: skip
        assert data["fills"] == answer["fills"]  # trade ids, prices, quantities, fees: REST's
        assert [f["liquidity"] for f in data["fills"]] == ["taker", "taker"]
        assert [(f["price"], f["quantity"]) for f in data["fills"]] == [
            ("99.00", "2"), ("99.50", "2")
        ]  # fmt: skip
        cheap_frame = maker_frames[cheap.json()["order_id"]]
        dear_frame = maker_frames[dear.json()["order_id"]]
        assert (cheap_frame["event"], dear_frame["event"]) == ("fill", "partial_fill")
        assert (cheap_frame["side"], cheap_frame["client_order_id"]) == ("sell", "mm-1")
        assert (dear_frame["side"], dear_frame["client_order_id"]) == ("sell", None)
        rest_fills = {
            f["trade_id"]: f for f in (await http_a.get("/api/v1/fills")).json()["results"]
        }
        for frame in (cheap_frame, dear_frame):
            [fill] = frame["fills"]
            assert fill["liquidity"] == "maker"
            assert {k: rest_fills[fill["trade_id"]][k] for k in fill} == fill
        await http_a.aclose()
        await http_b.aclose()

    asyncio.run(scenario())


def test_a_stop_triggered_in_a_batch_says_so_on_the_orders_channel(market):
    # A stop turns into a limit or market order in the command that triggers it: its frame
    # showed what it became (accepted) and nothing told the client it had triggered.
    symbol = market["symbol"]
    key_a, key_b = market["keys"]

    async def scenario():
        http_a, http_b = rest(market["base"], key_a), rest(market["base"], key_b)
        async with websockets.connect(market["ws"], ping_interval=None) as ws:
            await watch_own_orders(ws, key_a)
            stop = {"symbol": symbol, "side": "buy", "order_type": "stop_limit",
                    "stop_price": "105.00", "limit_price": "95.00", "quantity": "1"}  # fmt: skip
            placed = await http_a.post("/api/v1/orders", json=stop)
            assert placed.json()["status"] == "untriggered", placed.text
            stop_id = placed.json()["order_id"]
            first = await order_frame(ws, stop_id)
            assert first["data"]["event"] == "accepted" and "triggered" not in first["data"]
            # A trade at 105.00 (its owner sells to the other trader) triggers it.
            assert (await http_a.post("/api/v1/orders", json=limit(symbol, "sell", "105.00", "1"))
                    ).status_code == 201  # fmt: skip
            assert (await http_b.post("/api/v1/orders", json=limit(symbol, "buy", "105.00", "1"))
                    ).status_code == 201  # fmt: skip
            frame = await order_frame(ws, stop_id)
            assert frame["data"]["triggered"] is True, frame
            assert (frame["data"]["status"], frame["data"]["event"]) == ("new", "accepted")
        await http_a.aclose()
        await http_b.aclose()

    asyncio.run(scenario())


def test_a_rejected_order_frame_says_it_filled_nothing(market):
    # Its frame had no `filled`, where REST shows filled_quantity "0".
    symbol = market["symbol"]

    async def scenario():
        http = rest(market["base"], market["keys"][0])
        async with websockets.connect(market["ws"], ping_interval=None) as ws:
            await watch_own_orders(ws, market["keys"][0])
            fok = {**limit(symbol, "buy", "100.00", "1"), "time_in_force": "FOK"}
            refused = await http.post("/api/v1/orders", json=fok)  # nothing to fill it
            assert refused.json()["error"] == "FokUnfillable", refused.text
            frame = await recv_until(ws, lambda f: f.get("type") == "order")
            assert frame["data"]["order_id"] == int(refused.json()["order_id"])
            assert (frame["data"]["event"], frame["data"]["filled"]) == ("rejected", "0")
            # And why, as the placement's 400 said it (the frame had only reason fok_unfillable).
            assert frame["data"]["rejection"] == {
                key: refused.json()[key] for key in ("error", "code", "message")
            }
        await http.aclose()

    asyncio.run(scenario())


def test_an_amend_shows_on_the_orders_channel_with_the_new_price(market):
    # Its frame had been a plain `accepted` without a price: a price-only amend looked like
    # the order's first frame again.
    symbol = market["symbol"]

    async def scenario():
        http = rest(market["base"], market["keys"][0])
        async with websockets.connect(market["ws"], ping_interval=None) as ws:
            await watch_own_orders(ws, market["keys"][0])
            order_id = (await http.post("/api/v1/orders", json=limit(symbol, "buy", "95.00", "4"))
                        ).json()["order_id"]  # fmt: skip
            placed = await recv_until(ws, lambda f: f.get("type") == "order")
            assert placed["data"]["price"] == "95.00" and "amended" not in placed["data"]
            amended = await http.patch(f"/api/v1/orders/{order_id}", json={"price": "96.00"})
            assert amended.status_code == 200, amended.text
            frame = await recv_until(ws, lambda f: f.get("type") == "order")
            data = frame["data"]
            assert (data["order_id"], data["amended"], data["price"], data["remaining"]) == (
                int(order_id), True, "96.00", "4"
            )  # fmt: skip
            assert data["event"] == "amended"  # it read "accepted", as if placed again
            # Partly filled, then amended: not news of a fill (it read "partial_fill").
            seller = rest(market["base"], market["keys"][1])
            sold = await seller.post("/api/v1/orders", json=limit(symbol, "sell", "96.00", "1"))
            assert sold.status_code == 201, sold.text
            filled = await order_frame(ws, int(order_id))
            assert filled["data"]["event"] == "partial_fill"
            again = await http.patch(f"/api/v1/orders/{order_id}", json={"price": "95.50"})
            assert again.status_code == 200, again.text
            frame = await recv_until(ws, lambda f: f.get("type") == "order")
            assert (frame["data"]["status"], frame["data"]["event"]) == (
                "partially_filled", "amended"
            )  # fmt: skip
            await seller.aclose()
        await http.aclose()

    asyncio.run(scenario())


def test_an_amend_the_engine_refuses_sends_no_order_frame(market):
    # A refused amend (here: post-only, it would match) left the order as it was, yet its
    # owner got an order frame reading `accepted` again.
    symbol = market["symbol"]

    async def scenario():
        http = rest(market["base"], market["keys"][0])
        seller = rest(market["base"], market["keys"][1])
        async with websockets.connect(market["ws"], ping_interval=None) as ws:
            await watch_own_orders(ws, market["keys"][0])
            assert (await seller.post("/api/v1/orders", json=limit(symbol, "sell", "99.00", "1"))
                    ).status_code == 201  # fmt: skip
            body = {**limit(symbol, "buy", "95.00", "2"), "post_only": True}
            order_id = (await http.post("/api/v1/orders", json=body)).json()["order_id"]
            await order_frame(ws, order_id)
            refused = await http.patch(f"/api/v1/orders/{order_id}", json={"price": "99.00"})
            assert refused.json()["error"] == "PostOnlyWouldMatch", refused.text
            later = await http.patch(f"/api/v1/orders/{order_id}", json={"quantity": "1"})
            assert later.status_code == 200, later.text
            frame = await order_frame(ws, order_id)
            # The next frame is the accepted amend's, not a repeat of the first.
            assert (frame["data"]["event"], frame["data"]["remaining"]) == ("amended", "1")
        await http.aclose()
        await seller.aclose()

    asyncio.run(scenario())


def test_a_resting_order_self_trade_prevention_reduces_says_so(market):
    symbol = market["symbol"]

    async def scenario():
        http = rest(market["base"], market["keys"][0])
        async with websockets.connect(market["ws"], ping_interval=None) as ws:
            await watch_own_orders(ws, market["keys"][0])
            sell = (await http.post("/api/v1/orders", json=limit(symbol, "sell", "99.50", "10"))
                    ).json()["order_id"]  # fmt: skip
            await order_frame(ws, sell)
            body = {**limit(symbol, "buy", "99.50", "4"), "stp_mode": "decrement_both"}
            assert (await http.post("/api/v1/orders", json=body)).status_code in (200, 201)
            frame = await order_frame(ws, sell)
            data = frame["data"]
            # It read `accepted` again: remaining lower, no fill, no reason.
            assert (data["event"], data["reason"], data["remaining"]) == ("reduced", "stp", "6")
        await http.aclose()

    asyncio.run(scenario())


def test_an_op_the_sockets_key_may_not_make_is_audited_as_rest_audits_it(market):
    # Refused over REST, such a request is audited (auth.api_key_denied); over the socket the
    # refusal had left no record.
    user = market["users"][0]
    read_only, trade_only = (make_api_key(user, permissions=(p,)) for p in ("read", "trade"))

    order = limit(market["symbol"], "buy", "1.00", "1")

    async def scenario():
        for key, message in (
            (read_only, {"op": "order.place", "id": 1, **order}),
            (trade_only, {"op": "subscribe", "id": 1, "channels": ["orders"]}),
        ):
            async with websockets.connect(market["ws"], ping_interval=None) as ws:
                await log_in(ws, key, id=0)
                await send(ws, message)
                refused = await recv_until(ws, lambda f: f.get("id") == 1)
                assert "ApiKeyPermissionMissing" in json.dumps(refused), refused

    asyncio.run(scenario())
    denied = wait_until(
        lambda: len(found := list(AuditRecord.objects.filter(
            event_type="auth.api_key_denied", user_id=user.pk))) == 2 and found,
        timeout=10,
    )  # fmt: skip
    assert sorted((r.payload["method"], r.payload["permission"]) for r in denied) == [
        ("order.place", "trade"), ("subscribe", "read")
    ]  # fmt: skip


def test_a_login_with_a_key_without_read_ends_the_orders_subscription(market):
    # Subscribed under a read key, the socket kept receiving the channel after logging in
    # again with a trade-only key, which may not subscribe to it.
    user = market["users"][0]
    read_only, trade_only = (make_api_key(user, permissions=(p,)) for p in ("read", "trade"))

    async def scenario():
        http = rest(market["base"], trade_only)
        async with websockets.connect(market["ws"], ping_interval=None) as ws:
            await watch_own_orders(ws, read_only)
            await send(ws, login_op(trade_only, id=5))
            seen: list[dict] = []
            await recv_until(ws, lambda f: f.get("type") == "unsubscribed", seen=seen)
            refused = next(f for f in seen if f.get("type") == "error")
            assert (refused["error"], refused["channel"], refused["id"]) == (
                "ApiKeyPermissionMissing", "orders", 5
            )  # fmt: skip
            placed = await http.post("/api/v1/orders", json=limit(market["symbol"], "buy",
                                                                  "1.00", "1"))  # fmt: skip
            assert placed.status_code == 201, placed.text
            late: list[dict] = []
            with pytest.raises((TimeoutError, AssertionError)):  # nothing is expected
                await recv_until(ws, lambda f: False, timeout=1.5, seen=late)
            assert not [f for f in late if f.get("type") in ("order", "balance")], late
        await http.aclose()

    asyncio.run(scenario())


def test_subscribing_again_at_another_depth_sends_a_snapshot_at_it(market):
    # It was acknowledged without a depth and the view stayed at the first one.
    channel = f"book.{market['symbol']}"

    async def scenario():
        async with websockets.connect(market["ws"], ping_interval=None) as ws:
            await send(ws, {"op": "subscribe", "channels": [channel], "depth": 20, "id": 1})
            first = await recv_until(ws, lambda f: f.get("type") == "snapshot")
            assert first["depth"] == 20
            await send(ws, {"op": "subscribe", "channels": [channel], "depth": 10, "id": 2})
            ack = await recv_until(ws, lambda f: f.get("type") == "subscribed")
            assert (ack["id"], ack["depth"]) == (2, 10)
            again = await recv_until(ws, lambda f: f.get("type") == "snapshot")
            assert again["depth"] == 10
            # At the same depth: acknowledged with it too (it had no depth), and no snapshot.
            await send(ws, {"op": "subscribe", "channels": [channel], "depth": 10, "id": 3})
            ack = await recv_until(ws, lambda f: f.get("type") == "subscribed")
            assert (ack["id"], ack["depth"]) == (3, 10)
            await send(ws, {"op": "ping", "id": 4})
            after = await recv_until(ws, lambda f: f.get("type") in ("snapshot", "pong"))
            assert after["type"] == "pong"

    asyncio.run(scenario())


def test_a_browser_from_another_origin_is_refused_at_the_handshake(market):
    # Refused through Channels' denier, a consumer of the Redis channel layer: each refusal
    # opened a Redis receive, and some left a traceback in the log when it timed out.
    async def scenario():
        for _ in range(3):
            with pytest.raises(websockets.InvalidStatus) as refused:
                async with websockets.connect(market["ws"], origin="http://evil.example"):
                    pass
            assert refused.value.response.status_code == 403
        own = market["ws"].replace("ws://", "http://").split("/ws/")[0]
        async with websockets.connect(market["ws"], origin=own, ping_interval=None) as ws:
            await send(ws, {"op": "ping", "id": 1})
            assert (await recv_until(ws, lambda f: f.get("type") == "pong"))["id"] == 1

    asyncio.run(scenario())


def test_a_page_of_another_origin_on_an_allowed_host_cannot_open_a_session_socket(market):
    # Only the Origin's host name was checked against ALLOWED_HOSTS: a page served on another
    # port of the same host (same-site, so its handshake carries the SameSite=Lax session
    # cookie) opened a socket signed in as its visitor and could trade, where Django's CSRF
    # check refuses that origin's POSTs.
    browser = Client()
    browser.force_login(market["users"][1])
    cookie = f"sessionid={browser.cookies['sessionid'].value}"
    port = int(market["base"].rsplit(":", 1)[1])
    foreign = [f"http://127.0.0.1:{port + 1}", f"http://localhost:{port}"]

    async def scenario():
        for origin in foreign:
            with pytest.raises(websockets.InvalidStatus) as refused:
                async with websockets.connect(
                    market["ws"], origin=origin, additional_headers={"Cookie": cookie}
                ):
                    pass
            assert refused.value.response.status_code == 403, origin
        async with websockets.connect(
            market["ws"],
            origin=f"http://127.0.0.1:{port}",
            additional_headers={"Cookie": cookie},
            ping_interval=None,
        ) as ws:
            await send(ws, {"op": "subscribe", "channels": ["orders"]})
            ack = await recv_until(ws, lambda f: f.get("type") in ("subscribed", "error"))
            assert ack["type"] == "subscribed"

    asyncio.run(scenario())


@pytest.mark.django_db(transaction=True)
def test_an_origin_of_csrf_trusted_origins_may_open_a_socket(processes, process_env):
    # Behind a proxy that sends another Host, the page's origin is named in
    # CSRF_TRUSTED_ORIGINS, as for the session's POSTs.
    base = start_web(
        processes,
        env={
            **process_env,
            "CSRF_TRUSTED_ORIGINS": "https://exchange.example,https://*.trusted.example",
        },
        name="web-ws-trusted-origin",
    )
    ws_url = base.replace("http://", "ws://") + "/ws/v1"

    async def scenario():
        for origin in ("https://exchange.example", "https://desk.trusted.example"):
            async with websockets.connect(ws_url, origin=origin, ping_interval=None) as ws:
                await send(ws, {"op": "ping", "id": 1})
                assert (await recv_until(ws, lambda f: f.get("type") == "pong"))["id"] == 1
        for origin in ("http://exchange.example", "https://exchange.example:8443"):
            with pytest.raises(websockets.InvalidStatus) as refused:
                async with websockets.connect(ws_url, origin=origin):
                    pass
            assert refused.value.response.status_code == 403, origin

    asyncio.run(scenario())


@pytest.mark.django_db(transaction=True)
def test_a_handshake_on_another_path_is_refused_without_an_error_in_the_log(processes, process_env):
    # Channels found no route: a 500 and a traceback in the log for each (a trailing slash, a
    # v2, a scanner).
    base = start_web(processes, env={**process_env, "DEBUG": "false"}, name="web-ws-paths")
    ws_base = base.replace("http://", "ws://")

    async def scenario():
        for wrong in ("/ws/v1/", "/ws/v2", "/ws", "/api/v1/time", "/"):
            with pytest.raises(websockets.InvalidStatus) as refused:
                async with websockets.connect(ws_base + wrong):
                    pass
            assert refused.value.response.status_code == 403, wrong
        async with websockets.connect(ws_base + "/ws/v1", ping_interval=None) as ws:
            await send(ws, {"op": "ping", "id": 1})
            assert (await recv_until(ws, lambda f: f.get("type") == "pong"))["id"] == 1

    asyncio.run(scenario())
    log = (processes.log_dir / "web-ws-paths.log").read_text()
    entries = [json.loads(line) for line in log.splitlines() if line.strip()]
    assert not [e for e in entries if e["level"] == "error"], log[-3000:]


def test_the_orders_channel_needs_a_login(market):
    async def scenario():
        async with websockets.connect(market["ws"], ping_interval=None) as ws:
            await send(ws, {"op": "subscribe", "channels": ["orders"], "id": 7})
            refused = await recv_until(ws, lambda f: f.get("type") == "error")
            assert refused["error"] == "NotAuthenticated" and refused["code"] == -1002
            assert refused["channel"] == "orders" and refused["id"] == 7
            await send(ws, {"op": "login", "token": "a-drf-token"})
            failed = await recv_until(ws, lambda f: f.get("type") == "error")
            assert failed["error"] == "AuthenticationFailed"
            forged = login_op(market["keys"][0])
            forged["signature"] = "0" * 64
            await send(ws, forged)
            failed = await recv_until(ws, lambda f: f.get("type") == "error")
            assert failed["error"] == "InvalidSignature" and failed["code"] == -1022
            await send(
                ws, {"op": "order.place", "id": 8, **limit(market["symbol"], "buy", "1", "1")}
            )
            answer = await recv_until(ws, lambda f: f.get("type") == "response")
            assert answer["status"] == 401 and answer["error"]["error"] == "NotAuthenticated"

    asyncio.run(scenario())


def test_the_web_session_cookie_authenticates_the_socket(market):
    browser = Client()
    browser.force_login(market["users"][1])
    cookie = f"sessionid={browser.cookies['sessionid'].value}"

    async def scenario():
        async with websockets.connect(
            market["ws"], ping_interval=None, additional_headers={"Cookie": cookie}
        ) as ws:
            await send(ws, {"op": "subscribe", "channels": ["orders"]})
            ack = await recv_until(ws, lambda f: f.get("type") in ("subscribed", "error"))
            assert ack["type"] == "subscribed" and ack["channel"] == "orders"

    asyncio.run(scenario())


def test_the_reference_client_ends_when_its_book_is_refused(market, capsys):
    # It had waited for a snapshot that never came, printing nothing, until interrupted.
    started = time.monotonic()
    argv = ["--url", market["ws"], "--symbol", "NOPE123", "--seconds", "30"]
    assert wsclient.main(argv) == 1
    assert time.monotonic() - started < 10
    assert "subscription of book.NOPE123 refused: UnknownSymbol (-1121)" in capsys.readouterr().err


def test_a_field_an_op_does_not_read_is_refused_as_rest_refuses_it(market):
    # A misspelt depth ("depht") had been ignored and the book sent at 50 levels.
    symbol, key = market["symbol"], market["keys"][0]

    async def scenario():
        async with websockets.connect(market["ws"]) as ws:
            for message in [
                {"op": "subscribe", "channels": [f"book.{symbol}"], "depht": 10, "id": 5},
                {"op": "unsubscribe", "channels": [f"book.{symbol}"], "symbol": symbol, "id": 5},
                {**login_op(key), "recvWindow": 6000, "id": 5},
            ]:
                await send(ws, message)
                refused = await recv_until(ws, lambda f: True)
                assert (refused["error"], refused["code"], refused["id"]) == (
                    "UnexpectedParameter",
                    -1106,
                    5,
                )
                assert refused["field"] in ("depht", "symbol", "recvWindow")
            await send(ws, {"op": "ping", "id": 6})  # nothing came between: not subscribed
            assert await recv_until(ws, lambda f: True) == {"type": "pong", "op": "ping", "id": 6}

    asyncio.run(scenario())


def test_bad_input_and_unknown_channels_get_errors_not_a_crash(market):
    symbol = market["symbol"]

    async def scenario():
        async with websockets.connect(market["ws"], ping_interval=None) as ws:
            await send(ws, "{not json")
            assert (await recv_until(ws, lambda f: True))["error"] == "MalformedRequest"
            await send(ws, "[1, 2]")
            assert (await recv_until(ws, lambda f: True))["error"] == "MalformedRequest"
            # The same key twice: the last one won (json's way), whatever a log showed.
            await send(ws, '{"op": "subscribe", "id": 4, "channels": ["x"], "channels": []}')
            twice = await recv_until(ws, lambda f: True)
            assert (twice["error"], twice["op"], twice["id"]) == (
                "MalformedRequest",
                "subscribe",
                4,
            )
            assert "'channels' appears more than once" in twice["message"]
            await send(ws, {"op": "dance"})
            assert (await recv_until(ws, lambda f: True))["error"] == "UnknownOp"
            await send(ws, {"op": "subscribe", "channels": "book.X"})
            assert (await recv_until(ws, lambda f: True))["error"] == "MalformedRequest"
            await send(ws, {"op": "subscribe", "channels": ["candles.X", "book"]})
            assert (await recv_until(ws, lambda f: True))["error"] == "UnknownChannel"
            assert (await recv_until(ws, lambda f: True))["error"] == "UnknownChannel"
            await send(ws, {"op": "subscribe", "channels": ["book.NOPE123"]})
            unknown = await recv_until(ws, lambda f: True)
            assert unknown["error"] == "UnknownSymbol" and unknown["code"] == -1121
            await send(ws, {"op": "subscribe", "channels": [f"book.{symbol}"], "depth": 0})
            assert (await recv_until(ws, lambda f: True))["error"] == "InvalidParameter"
            await send(ws, {"op": "unsubscribe", "channels": [f"book.{symbol}"]})
            assert (await recv_until(ws, lambda f: True))["error"] == "NotSubscribed"
            # Nested deeper than the JSON decoder goes: was a RecursionError closing the socket.
            await send(ws, "[" * 60_000)
            assert (await recv_until(ws, lambda f: True))["error"] == "MalformedRequest"
            # A NUL character anywhere: PostgreSQL refuses it in text, so the refused login's
            # audit record and the cancel's client_order_id lookup failed (logged errors, a 500).
            key = market["keys"][0]
            for message in [
                {**login_op(key), "api_key": "a\x00", "id": 7},
                {"op": "subscribe", "channels": [f"book.{symbol}\x00"], "id": 7},
                {"op": "ping", "id": 7, "x": [{"y": ["\x00"]}]},
            ]:
                await send(ws, message)
                assert await recv_until(ws, lambda f: True) == {
                    "type": "error",
                    "op": message["op"],
                    "id": 7,
                    "error": "MalformedRequest",
                    "code": -1100,
                    "message": "a message holds a NUL character (\\u0000)",
                }
            await send(ws, login_op(key))
            assert (await recv_until(ws, lambda f: True))["type"] == "login"
            await send(ws, {"op": "order.cancel", "client_order_id": "x\x00", "id": 8})
            assert (await recv_until(ws, lambda f: True))["error"] == "MalformedRequest"
            # "²" is a digit to str.isdigit but not to int (was a 500).
            await send(ws, {"op": "order.cancel", "order_id": "\u00b2", "id": 10})
            answer = await recv_until(ws, lambda f: f.get("id") == 10)
            assert (answer["status"], answer["error"]["error"]) == (400, "InvalidParameter")
            # A backslash and "u0000" as text is no NUL.
            await send(ws, {"op": "ping", "x": "\\u0000", "id": 9})
            assert (await recv_until(ws, lambda f: True))["type"] == "pong"
            # The connection still works.
            await send(ws, {"op": "subscribe", "channels": [f"book.{symbol}"], "depth": 10})
            assert (await recv_until(ws, lambda f: True))["type"] == "subscribed"
            snapshot = await recv_until(ws, lambda f: True)
            assert snapshot["type"] == "snapshot" and snapshot["bids"] == []

    asyncio.run(scenario())


def test_an_order_id_of_thousands_of_digits_is_a_404_not_a_crash(market):
    # Over the 4,300 digits int() reads (CPython's limit): each was a 500.
    async def scenario():
        async with websockets.connect(market["ws"], ping_interval=None) as ws:
            await log_in(ws, market["keys"][0])
            for n, (op, order_id) in enumerate(
                [("order.cancel", "9" * 5000), ("order.amend", "0" * 5000 + "9")]
            ):
                extra = {"quantity": "1"} if op == "order.amend" else {}
                await send(ws, {"op": op, "order_id": order_id, "id": n, **extra})
                answer = await recv_until(ws, lambda f, n=n: f.get("id") == n)
                assert (answer["status"], answer["error"]["error"]) == (404, "OrderNotFound")

    asyncio.run(scenario())


def test_a_lone_surrogate_anywhere_in_a_message_is_refused_not_a_crash(market):
    async def scenario():
        async with websockets.connect(market["ws"], ping_interval=None) as ws:
            key = market["keys"][0]
            # A lone surrogate ("\\ud800" in the JSON text): no field takes it and the text
            # cannot be encoded, so the login's checks, the symbol lookup and the cancel's
            # lookup each failed (tracebacks; a 500 for the cancel).
            lone = "\ud800"
            for message in [
                {**login_op(key), "api_key": lone, "id": 7},
                {"op": "subscribe", "channels": [f"book.{lone}"], "id": 7},
                {"op": "order.cancel", "client_order_id": lone, "id": 7},
                {"op": "ping", "id": 7, lone: 1},
            ]:
                if message["op"] == "order.cancel":  # logged in: the cancel looks the id up
                    await send(ws, login_op(key))
                    assert (await recv_until(ws, lambda f: True))["type"] == "login"
                await send(ws, message)
                refused = await recv_until(ws, lambda f: True)
                assert (refused["type"], refused["id"]) == ("error", 7), refused
                assert (refused["error"], refused["code"]) == ("MalformedRequest", -1100)
                assert "lone UTF-16 surrogate" in refused["message"]
            # A surrogate pair (an escaped emoji) is text like any other.
            await send(ws, {"op": "ping", "id": 9, "x": "\ud83d\ude00"})
            assert (await recv_until(ws, lambda f: True))["type"] == "pong"

    asyncio.run(scenario())


def test_an_answer_never_echoes_a_lone_surrogate_back(market):
    # The refusal of a message whose `id` or `op` held a lone surrogate repeated it ("\ud800"
    # in the frame), which strict JSON parsers refuse (as NaN was refused): a client lost the
    # frame that said what was wrong, or its connection.
    def strict_text(value) -> bool:
        if isinstance(value, str):
            return not any(0xD800 <= ord(c) <= 0xDFFF for c in value)
        if isinstance(value, dict):
            return all(strict_text(k) and strict_text(v) for k, v in value.items())
        if isinstance(value, list):
            return all(strict_text(v) for v in value)
        return True

    async def scenario():
        async with websockets.connect(market["ws"], ping_interval=None) as ws:
            for text in (
                '{"op": "ping", "id": "\\ud800"}',
                '{"op": "ping\\udfff", "id": 7}',
                '{"op": "ping", "id": [{"\\udc00": 1}]}',
            ):
                await send(ws, text)
                refused = await recv_until(ws, lambda f: True)
                assert (refused["type"], refused["error"]) == ("error", "MalformedRequest")
                assert "lone UTF-16 surrogate" in refused["message"]
                assert strict_text(refused), refused
            await send(ws, '{"op": "ping\\udfff", "id": 7}')
            assert (await recv_until(ws, lambda f: True))["id"] == 7  # what is clean is repeated
        # Over the message rate too (this module allows a burst of 20, and 4 refusals).
        async with websockets.connect(market["ws"], ping_interval=None) as ws:
            for _ in range(23):
                await send(ws, '{"op": "ping", "id": "\\ud800"}')
            frames = [await recv_until(ws, lambda f: True) for _ in range(23)]
            assert any(f.get("error") == "TooManyRequests" for f in frames)
            assert all(strict_text(f) for f in frames), frames

    asyncio.run(scenario())


def test_a_binary_frame_is_checked_for_nul_and_lone_surrogates_as_a_text_frame_is(market):
    # A binary frame is read as JSON in whatever encoding json detects (UTF-8, -16, -32), and
    # UTF-8 bytes may carry a surrogate unescaped: the checks looked for the escapes in the
    # raw bytes, so a UTF-16 frame's "\\u0000" or a UTF-8 frame's raw surrogate went through
    # to the lookups (tracebacks; a 500 for the cancel).
    async def scenario():
        async with websockets.connect(market["ws"], ping_interval=None) as ws:
            await send(ws, login_op(market["keys"][0]))
            assert (await recv_until(ws, lambda f: True))["type"] == "login"
            symbol = market["symbol"]
            utf16 = [  # json.dumps writes both as escapes
                {"op": "subscribe", "channels": [f"book.{symbol}\x00"], "id": 7},
                {"op": "order.cancel", "client_order_id": "a\x00", "id": 7},
                {"op": "subscribe", "channels": [f"book.{symbol}\ud800"], "id": 7},
                {"op": "order.cancel", "client_order_id": "a\ud800", "id": 7},
            ]
            frames = [json.dumps(message).encode("utf-16") for message in utf16] + [
                b'{"op": "order.cancel", "client_order_id": "a\xed\xa0\x80", "id": 7}',
                b'{"op": "ping", "id": 7, "x": "\xed\xa0\x80"}',
            ]
            for frame in frames:
                await ws.send(frame)
                refused = await recv_until(ws, lambda f: True)
                assert (refused["type"], refused["id"]) == ("error", 7), (frame, refused)
                assert (refused["error"], refused["code"]) == ("MalformedRequest", -1100)
                assert "NUL" in refused["message"] or "surrogate" in refused["message"]
            # Bytes that are no text at all, and a good binary frame.
            await ws.send(b'{"op": "ping", "id": "\x80"}')
            assert (await recv_until(ws, lambda f: True))["error"] == "MalformedRequest"
            await ws.send('{"op": "ping", "id": 8}'.encode("utf-16"))
            assert await recv_until(ws, lambda f: True) == {"type": "pong", "op": "ping", "id": 8}

    asyncio.run(scenario())


def test_subscribing_or_unsubscribing_an_empty_channel_list_is_answered(market):
    # Each channel is answered on its own: an empty list had no answer at all.
    async def scenario():
        async with websockets.connect(market["ws"], ping_interval=None) as ws:
            for op in ("subscribe", "unsubscribe"):
                await send(ws, {"op": op, "channels": [], "id": op})
                refused = await recv_until(ws, lambda f: True)
                assert (refused["type"], refused["id"], refused["error"]) == (
                    "error", op, "MalformedRequest"
                )  # fmt: skip
                assert refused["message"] == "channels must be a non-empty list of strings"

    asyncio.run(scenario())


def test_a_cancel_by_a_client_order_id_that_is_not_a_string_names_that_field(market):
    async def scenario():
        async with websockets.connect(market["ws"], ping_interval=None) as ws:
            await send(ws, login_op(market["keys"][0]))
            assert (await recv_until(ws, lambda f: True))["type"] == "login"
            # Was "order_id or client_order_id is required", naming order_id.
            await send(ws, {"op": "order.cancel", "client_order_id": 5, "id": 1})
            answer = await recv_until(ws, lambda f: f.get("id") == 1)
            assert answer["status"] == 400
            assert (answer["error"]["error"], answer["error"]["field"]) == (
                "InvalidParameter", "client_order_id"
            )  # fmt: skip

    asyncio.run(scenario())


def test_a_message_over_64_kib_closes_the_socket_with_1009(market):
    # Decoding is on the event loop that feeds every subscriber: the server's 16 MiB default
    # let one client stall everyone's market data with each message.
    async def scenario():
        async with websockets.connect(market["ws"], ping_interval=None, max_size=None) as ws:
            await send(ws, {"op": "ping", "id": 1, "pad": "x" * 60_000})  # under the limit
            assert (await recv_until(ws, lambda f: True))["type"] == "pong"
            await send(ws, {"op": "ping", "id": 2, "pad": "x" * 70_000})
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 10)
            assert closed.value.rcvd.code == 1009  # message too big

    asyncio.run(scenario())


def test_too_many_subscriptions_are_refused(market, live_db):
    symbols = [market["symbol"], make_instrument().symbol]

    async def scenario():
        channels = [f"{kind}.{s}" for s in symbols for kind in ("book", "trades", "ticker")]
        channels.append("heartbeat")  # the seventh: over the limit of 6
        async with websockets.connect(market["ws"], ping_interval=None) as ws:
            await send(ws, {"op": "subscribe", "channels": channels})
            seen: list[dict] = []
            await recv_until(ws, lambda f: f.get("type") == "error", seen=seen)
            acks = [f["channel"] for f in seen if f.get("type") == "subscribed"]
            assert acks == channels[:6]
            assert (
                seen[-1]["error"] == "TooManySubscriptions" and seen[-1]["channel"] == "heartbeat"
            )

    asyncio.run(scenario())


def test_a_subscribe_naming_too_many_channels_is_refused_whole(market):
    # Unknown symbols are never subscribed, so the subscription limit never stopped a list of
    # thousands: each got its own UnknownSymbol answer after its own database query.
    async def scenario():
        channels = [f"book.NOPE{n}" for n in range(101)]
        async with websockets.connect(market["ws"], ping_interval=None) as ws:
            await send(ws, {"op": "subscribe", "id": 1, "channels": channels})
            seen: list[dict] = []
            refused = await recv_until(ws, lambda f: f.get("type") == "error", seen=seen)
            assert (refused["error"], refused["id"]) == ("InvalidParameter", 1)
            assert "at most 100" in refused["message"]
            await send(ws, {"op": "ping", "id": 2})
            await recv_until(ws, lambda f: f.get("type") == "pong", seen=seen)
            assert [f["type"] for f in seen] == ["error", "pong"]  # one answer, nothing else
            # Within the limit, each name counts against the message rate (20 a second here):
            # 19 names and one more message in the same second are over it.
            names = {"op": "subscribe", "id": 3, "channels": [f"book.NOPE{n}" for n in range(19)]}
            await send(ws, names)
            await send(ws, {"op": "ping", "id": 4})
            limited = await recv_until(ws, lambda f: f.get("error") == "TooManyRequests", seen=seen)
            assert limited["code"] == -1015

    asyncio.run(scenario())


def test_message_flood_is_refused_then_the_socket_is_closed(market):
    async def scenario():
        async with websockets.connect(market["ws"], ping_interval=None) as ws:
            for n in range(24):
                await send(ws, {"op": "ping", "id": n})
            refused = await recv_until(ws, lambda f: f.get("type") == "error")
            assert refused["error"] == "TooManyRequests" and refused["code"] == -1015
            # Naming the refused op, as every answer does (a refused order.place could not be
            # told from the others in flight).
            assert refused["op"] == "ping" and refused["id"] in range(24)
            with pytest.raises(websockets.ConnectionClosed) as closed:
                for n in range(20):
                    await send(ws, {"op": "ping", "id": n})
                await recv_until(ws, lambda f: False, timeout=10)
            assert closed.value.rcvd.code == 4029

    asyncio.run(scenario())


def test_brief_overshoots_far_apart_do_not_close_the_socket_and_every_refusal_is_answered(
    market,
):
    # Refusals added up over the connection's life (three short bursts a few seconds apart
    # closed it), and the refusal that closed it got no answer.
    async def burst(ws, count: int) -> int:
        for n in range(count):
            await send(ws, {"op": "ping", "id": n})
        return await read_for(ws, 1.5)

    async def read_for(ws, seconds: float) -> int:
        """Read (answering the server's pings) for `seconds`; the refusals seen."""
        refusals = 0
        async for frame in frames_for(ws, seconds):
            refusals += frame.get("error") == "TooManyRequests"
        return refusals

    async def scenario():
        async with websockets.connect(market["ws"], ping_interval=None) as ws:
            # Here 20 messages a second, and the close after 5 refusals.
            first = await burst(ws, 23)
            assert 2 <= first < 5
            await read_for(ws, 10.5)  # past the window of the first refusal
            second = await burst(ws, 23)
            assert 2 <= second < 5 and first + second >= 5
            await send(ws, {"op": "ping", "id": "alive"})
            assert (await recv_until(ws, lambda f: True))["type"] == "pong"
        async with websockets.connect(market["ws"], ping_interval=None) as ws:
            for n in range(60):
                await send(ws, {"op": "ping", "id": n})
            refusals = 0
            with pytest.raises(websockets.ConnectionClosed) as closed:
                while True:
                    frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
                    refusals += frame.get("error") == "TooManyRequests"
            assert closed.value.rcvd.code == 4029
            assert refusals == 5  # the one that closed it too

    asyncio.run(scenario())


def test_a_silent_connection_is_closed_after_the_ping_timeout(market):
    async def scenario():
        async with websockets.connect(market["ws"], ping_interval=None) as ws:
            pings = 0
            with pytest.raises(websockets.ConnectionClosed) as closed:
                while True:  # read without ever answering
                    frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
                    pings += frame.get("type") == "ping"
            assert closed.value.rcvd.code == 4000
            assert pings >= 2

    asyncio.run(scenario())


def test_heartbeats_come_every_second_without_a_skip(market):
    # A fixed one-second sleep that woke a hair early skipped a beat: 35 heartbeats in 40 s.
    async def scenario():
        async with websockets.connect(market["ws"], ping_interval=None) as ws:
            await send(ws, {"op": "subscribe", "channels": ["heartbeat"]})
            times = [
                frame["server_time_ns"] / 1e9
                async for frame in frames_for(ws, 12)
                if frame.get("type") == "heartbeat"
            ]
            gaps = [b - a for a, b in itertools.pairwise(times)]
            assert len(times) >= 11 and max(gaps) < 1.25, gaps

    asyncio.run(scenario())


def test_heartbeats_keep_their_beat_while_order_ops_take_every_view_thread(
    processes, process_env, live_db
):
    # The login check made with each ping ran on the API view threads and the heartbeat loop
    # waited for it: with the threads busy (order ops waiting for the engine's answer), a
    # logged-in socket's heartbeats stopped until they were free. Here: one view thread, no
    # matching worker, so each place holds it for ORDER_REPLY_TIMEOUT_SECONDS.
    symbol = make_instrument().symbol
    key = make_api_key(make_user())
    env = {**process_env, "API_VIEW_THREADS": "1", "ORDER_REPLY_TIMEOUT_SECONDS": "1"}
    url = start_web(processes, env=env).replace("http://", "ws://") + "/ws/v1"

    async def scenario():
        async with websockets.connect(url, ping_interval=None) as ws:
            await log_in(ws, key)
            await send(ws, {"op": "subscribe", "channels": ["heartbeat"]})
            for n in range(6):
                order = limit(symbol, "buy", f"{10 + n}.00", "1")
                await send(ws, {"op": "order.place", "id": n, **order})
            times, answers = [], 0
            async for frame in frames_for(ws, 8):
                if frame.get("type") == "heartbeat":
                    times.append(time.monotonic())
                answers += frame.get("type") == "response"
            gaps = [b - a for a, b in itertools.pairwise(times)]
            assert answers >= 5  # the ops took the thread for as long as the test looked
            assert len(times) >= 6 and max(gaps) < 1.5, gaps

    asyncio.run(scenario())


def test_heartbeat_carries_the_server_time_and_each_books_seq(market):
    symbol = market["symbol"]

    async def scenario():
        http = rest(market["base"], market["keys"][0])
        await http.post("/api/v1/orders", json=limit(symbol, "buy", "98.00", "1"))
        async with websockets.connect(market["ws"], ping_interval=None) as ws:
            await send(ws, {"op": "subscribe", "channels": [f"book.{symbol}", "heartbeat"]})
            snapshot = await recv_until(ws, lambda f: f.get("type") == "snapshot")
            beat = await recv_until(ws, lambda f: f.get("type") == "heartbeat")
            assert beat["books"] == {symbol: snapshot["seq"]}
            assert snapshot["seq"] > 0
            assert beat["server_time"].endswith("Z")
            assert abs(beat["server_time_ns"] - time.time_ns()) < 60e9
        await http.aclose()

    asyncio.run(scenario())


def test_order_entry_over_the_socket_answers_like_rest(market):
    symbol = market["symbol"]

    async def scenario():
        http = rest(market["base"], market["keys"][0])
        by_rest = await http.post("/api/v1/orders", json=limit(symbol, "buy", "95.00", "2"))
        invalid_rest = await http.post(
            "/api/v1/orders", json={"symbol": symbol, "side": "buy", "order_type": "limit",
                                    "quantity": "1"}
        )  # fmt: skip
        async with websockets.connect(market["ws"], ping_interval=None) as ws:
            await log_in(ws, market["keys"][0])
            await send(ws, {"op": "order.place", "id": "a1", **limit(symbol, "buy", "96.00", "3")})
            placed = await recv_until(ws, lambda f: f.get("type") == "response")
            assert placed["id"] == "a1" and placed["op"] == "order.place"
            assert placed["status"] == by_rest.status_code == 201
            assert placed["data"].keys() == by_rest.json().keys()
            assert placed["data"]["status"] == "new" and placed["data"]["price"] == "96.00"
            await send(ws, {"op": "order.place", "id": "a2", "symbol": symbol, "side": "buy",
                            "order_type": "limit", "quantity": "1"})  # fmt: skip
            invalid = await recv_until(ws, lambda f: f.get("type") == "response")
            assert invalid["status"] == invalid_rest.status_code == 400
            assert invalid["error"] == invalid_rest.json()
            await send(ws, {"op": "order.cancel", "id": 3, "order_id": placed["data"]["order_id"]})
            cancelled = await recv_until(ws, lambda f: f.get("type") == "response")
            assert cancelled["status"] == 200 and cancelled["data"]["status"] == "cancelled"
            await send(ws, {"op": "order.cancel", "id": 4, "order_id": 10**12})
            missing = await recv_until(ws, lambda f: f.get("type") == "response")
            assert missing["status"] == 404 and missing["error"]["error"] == "OrderNotFound"
        await http.aclose()

    asyncio.run(scenario())
    # Both refusals are in the audit trail, each by its channel.
    refusals = AuditRecord.objects.filter(event_type="order.refused", user_id=market["users"][0].pk)
    assert sorted(refusals.values_list("channel", "payload__error__field")) == [
        ("rest", "price"), ("ws", "price")
    ]  # fmt: skip


def test_amends_and_cancel_all_over_the_socket_answer_like_rest(market):
    # A quoting engine requotes and pulls everything in one op; both had to go through REST.
    symbol = market["symbol"]

    async def scenario():
        http = rest(market["base"], market["keys"][0])
        rest_id = (await http.post("/api/v1/orders", json=limit(symbol, "buy", "94.00", "5"))
                   ).json()["order_id"]  # fmt: skip
        by_rest = await http.patch(f"/api/v1/orders/{rest_id}", json={"quantity": "4"})
        async with websockets.connect(market["ws"], ping_interval=None) as ws:
            await log_in(ws, market["keys"][0])
            order = {**limit(symbol, "buy", "95.00", "5"), "client_order_id": "q1"}
            await send(ws, {"op": "order.place", "id": "p", **order})
            # Sent behind the place without waiting: it finds the order all the same.
            await send(ws, {"op": "order.amend", "id": "a", "client_order_id": "q1",
                            "quantity": "4"})  # fmt: skip
            answers = await responses_by_id(ws, 2)
            amended = answers["a"]
            assert (amended["op"], amended["status"]) == ("order.amend", by_rest.status_code)
            assert amended["data"].keys() == by_rest.json().keys()
            assert (amended["data"]["quantity"], amended["data"]["price"]) == ("4", "95.00")
            order_id = amended["data"]["order_id"]
            await send(ws, {"op": "order.amend", "id": "b", "order_id": order_id,
                            "price": "96.00"})  # fmt: skip
            repriced = await recv_until(ws, lambda f: f.get("id") == "b")
            assert (repriced["status"], repriced["data"]["price"]) == (200, "96.00")
            for op, bad, error in (
                ("order.amend", {"order_id": order_id}, "NothingToAmend"),
                ("order.amend", {"order_id": order_id, "quantity": "4", "side": "sell"},
                 "UnexpectedParameter"),
                ("order.amend", {"quantity": "4"}, "MissingParameter"),
                ("order.amend", {"order_id": 10**12, "quantity": "4"}, "OrderNotFound"),
                # Two names: one was used, the other ignored.
                ("order.amend", {"order_id": order_id, "client_order_id": "other",
                                 "quantity": "3"}, "InvalidParameter"),
                # A field a cancel does not take: it was ignored, the order cancelled.
                ("order.cancel", {"order_id": order_id, "symbol": "ZZZ"}, "UnexpectedParameter"),
                ("order.cancel_all", {"side": "buy"}, "UnexpectedParameter"),
                # An unset symbol: it cancelled every order on every symbol.
                ("order.cancel_all", {"symbol": None}, "InvalidParameter"),
            ):  # fmt: skip
                await send(ws, {"op": op, "id": "bad", **bad})
                refused = await recv_until(ws, lambda f: f.get("id") == "bad")
                status = 404 if error == "OrderNotFound" else 400
                assert (refused["status"], refused["error"]["error"]) == (status, error), refused
            await send(ws, {"op": "order.cancel_all", "id": "x", "symbol": "NOPE"})
            refused = await recv_until(ws, lambda f: f.get("id") == "x")
            assert refused["error"]["error"] == "UnknownSymbol", refused
            await send(ws, {"op": "order.place", "id": "p2", **limit(symbol, "sell", "99", "1")})
            await send(ws, {"op": "order.cancel_all", "id": "all", "symbol": symbol})
            pulled = await recv_until(ws, lambda f: f.get("id") == "all")
            assert pulled["status"] == 202 and len(pulled["data"]["command_ids"]) == 1
        opened = await http.get("/api/v1/orders", params={"symbol": symbol, "status": "open"})
        assert opened.json()["results"] == []  # the REST one, the amended one and the late sell
        await http.aclose()

    asyncio.run(scenario())
    # The refused amends are in the audit trail, as REST's are.
    refused = AuditRecord.objects.filter(
        event_type="order.amend_refused", user_id=market["users"][0].pk
    )
    assert {"NothingToAmend", "OrderNotFound", "MissingParameter"} <= {
        r.payload["error"]["error"] for r in refused
    }
    assert {r.channel for r in refused} == {"ws"}


def test_ops_pipelined_on_one_order_apply_in_the_order_sent(market):
    # The ops ran side by side: a cancel sent behind an amend overtook it, and the amend was
    # refused OrderNotOpen (4 runs of 4).
    symbol = market["symbol"]

    async def scenario():
        async with websockets.connect(market["ws"], ping_interval=None) as ws:
            await log_in(ws, market["keys"][0])
            for n in range(3):
                coid = f"turn-{n}-{time.monotonic_ns()}"
                order = {**limit(symbol, "buy", "90.00", "5"), "client_order_id": coid}
                await send(ws, {"op": "order.place", "id": "p", **order})
                await send(ws, {"op": "order.amend", "id": "a", "client_order_id": coid,
                                "quantity": "3"})  # fmt: skip
                await send(ws, {"op": "order.cancel", "id": "c", "client_order_id": coid})
                answers = await responses_by_id(ws, 3)
                assert answers["a"]["status"] in (200, 202), answers["a"]
                assert answers["c"]["status"] in (200, 202), answers["c"]
                assert answers["c"]["data"]["quantity"] == "3"  # cancelled after the amend

    asyncio.run(scenario())


def test_nan_and_infinity_are_not_json_and_never_come_back(market):
    # Python's json reads them: answers echoed them in `id`, frames strict parsers refuse.
    async def scenario():
        async with websockets.connect(market["ws"], ping_interval=None) as ws:
            for raw in ('{"op": "ping", "id": NaN}', '{"op": "x", "id": 1e999}'):
                await send(ws, raw)
                refused = {"type": "ping"}
                while refused.get("type") == "ping":  # the server's pings come meanwhile
                    text = await asyncio.wait_for(ws.recv(), 10)
                    # Strictly JSON: a NaN or Infinity value would raise here.
                    refused = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} sent"))
                assert refused["error"] == "MalformedRequest" and "id" not in refused, raw

    asyncio.run(scenario())


def test_a_cancel_sent_right_behind_its_place_on_the_socket_cancels_it(market):
    # The ops ran side by side: a cancel by client_order_id sent without waiting for the
    # place's answer was looked up first (404 OrderNotFound), and the order then rested.
    symbol = market["symbol"]

    async def scenario():
        async with websockets.connect(market["ws"], ping_interval=None) as ws:
            await log_in(ws, market["keys"][0])
            for n in range(5):
                coid = f"behind-{n}-{time.monotonic_ns()}"
                order = {**limit(symbol, "buy", "90.00", "1"), "client_order_id": coid}
                await send(ws, {"op": "order.place", "id": f"p{n}", **order})
                await send(ws, {"op": "order.cancel", "id": f"c{n}", "client_order_id": coid})
                answers = await responses_by_id(ws, 2)
                cancel = answers[f"c{n}"]
                assert cancel["status"] in (200, 202), cancel
                assert cancel["data"]["status"] in ("cancelled", "new", "pending_new")
        http = rest(market["base"], market["keys"][0])
        opened = await http.get("/api/v1/orders", params={"symbol": symbol, "status": "open"})
        left = [
            o for o in opened.json()["results"] if (o["client_order_id"] or "")[:7] == "behind-"
        ]
        assert left == []
        await http.aclose()

    asyncio.run(scenario())


def test_an_api_key_login_is_refused_when_stale_revoked_or_unknown(market):
    from accounts.api_keys import api_key_revoke
    from audit.events import AuditEvent
    from audit.models import AuditRecord

    user = make_user()
    key = make_api_key(user)
    revoked = make_api_key(user)
    api_key_revoke(api_key=revoked.api_key, actor=user)

    async def scenario():
        async with websockets.connect(market["ws"], ping_interval=None) as ws:
            now = time.time_ns() // 1_000_000
            await send(ws, login_op(key, at_ms=now - 6_000, id=1))
            stale = await recv_until(ws, lambda f: f.get("type") == "error")
            assert stale["error"] == "TimestampOutsideRecvWindow" and stale["code"] == -1021
            await send(ws, login_op(key, at_ms=now + 3_000, id=2))
            future = await recv_until(ws, lambda f: f.get("type") == "error")
            assert future["error"] == "TimestampOutsideRecvWindow" and future["id"] == 2
            await send(ws, login_op(revoked, id=3))
            gone = await recv_until(ws, lambda f: f.get("type") == "error")
            assert gone["error"] == "InvalidApiKey" and gone["id"] == 3
            # A receive window added to a signed login it did not sign: a captured login had
            # been replayable for 60 s this way.
            await send(ws, {**login_op(key, at_ms=now - 6_000), "recv_window": 10_000, "id": 5})
            stretched = await recv_until(ws, lambda f: f.get("type") == "error")
            assert (stretched["error"], stretched["id"]) == ("InvalidSignature", 5)
            late_but_allowed = await log_in(ws, key, at_ms=now - 6_000, recv_window=10_000, id=4)
            assert late_but_allowed["user_id"] == user.pk and late_but_allowed["id"] == 4

    asyncio.run(scenario())
    failures = AuditRecord.objects.filter(
        event_type=AuditEvent.API_KEY_AUTH_FAILED, user_id=user.pk
    ).order_by("seq")
    assert [(r.payload["reason"], r.channel) for r in failures] == [
        ("stale_timestamp", "ws"),
        ("future_timestamp", "ws"),
        ("revoked_key", "ws"),
        ("bad_signature", "ws"),
    ]
    assert failures[2].api_key_id == revoked.api_key.pk


def test_login_fields_of_the_wrong_type_are_named_in_the_sockets_terms(market):
    # A float timestamp read "missing X-API-TIMESTAMP" (an HTTP header), and a float
    # recv_window was ignored for the default.
    key = make_api_key(make_user())

    async def scenario():
        async with websockets.connect(market["ws"], ping_interval=None) as ws:
            good = login_op(key)
            for n, (change, error, words) in enumerate(
                [
                    ({"timestamp": float(good["timestamp"])}, "InvalidTimestamp", "timestamp"),
                    ({"recv_window": 1.5}, "InvalidRecvWindow", "recv_window"),
                    ({"api_key": [good["api_key"]]}, "MissingAuthHeader", "api_key"),
                    ({"signature": 7}, "MissingAuthHeader", "signature"),
                    # The right types, refused by the signature check itself, which named the
                    # REST headers.
                    ({"recv_window": 70_000}, "InvalidRecvWindow", "recv_window"),
                    ({"timestamp": "soon"}, "InvalidTimestamp", "timestamp"),
                    ({"signature": ""}, "MissingAuthHeader", "signature"),
                ]
            ):
                await send(ws, {**good, **change, "id": n})
                refused = await recv_until(ws, lambda f: f.get("type") in ("error", "login"))
                assert (refused.get("error"), refused["id"]) == (error, n), refused
                assert words in refused["message"] and "X-API" not in refused["message"]

    asyncio.run(scenario())


def test_a_login_without_a_timestamp_is_missing_one_as_without_a_signature(market):
    # docs/websocket.md: MissingAuthHeader is a login without timestamp or signature; one
    # without a timestamp was told InvalidTimestamp ("not whole milliseconds").
    key = make_api_key(make_user())

    async def scenario():
        async with websockets.connect(market["ws"], ping_interval=None) as ws:
            good = login_op(key)
            for n, missing in enumerate(("timestamp", "signature")):
                for absent in (
                    {k: v for k, v in good.items() if k != missing},
                    {**good, missing: None},
                ):
                    await send(ws, {**absent, "id": n})
                    refused = await recv_until(ws, lambda f: f.get("type") in ("error", "login"))
                    assert (refused.get("error"), refused.get("code"), refused["id"]) == (
                        "MissingAuthHeader", -1013, n
                    ), refused  # fmt: skip
                    assert missing in refused["message"]

    asyncio.run(scenario())


def test_a_socket_whose_key_is_revoked_after_the_login_can_no_longer_trade_and_is_closed(
    market,
):
    # The login's credentials were kept for the socket's life: a revoked key kept trading and
    # seeing its private channel over a socket opened before the revocation.
    from django.db import connection

    from accounts.api_keys import api_key_revoke
    from exchange.models import Order

    user = make_user()
    key = make_api_key(user)

    def revoke() -> None:
        try:
            api_key_revoke(api_key=key.api_key, actor=user)
        finally:
            connection.close()

    async def closed_with(ws) -> int:
        code, answers = await until_closed(ws)
        # An order op that got in before the close was refused like a REST request.
        for answer in answers:
            if answer.get("type") == "response":
                assert (answer["status"], answer["error"]["error"]) == (401, "InvalidApiKey")
        return code

    async def scenario():
        async with (
            websockets.connect(market["ws"], ping_interval=None) as trading,
            websockets.connect(market["ws"], ping_interval=None) as watching,
        ):
            for ws in (trading, watching):
                await send(ws, login_op(key))
                assert (await recv_until(ws, lambda f: True))["type"] == "login"
            await send(watching, {"op": "subscribe", "channels": ["orders"]})
            assert (await recv_until(watching, lambda f: True))["type"] == "subscribed"
            await asyncio.to_thread(revoke)
            await send(
                trading, {"op": "order.place", **limit(market["symbol"], "buy", "1.00", "1")}
            )
            assert await closed_with(trading) == 4001
            assert await closed_with(watching) == 4001  # idle: closed with a ping

    asyncio.run(scenario())
    assert not Order.objects.filter(user=user).exists()


def test_a_web_session_socket_of_a_user_deactivated_since_is_closed(market):
    # As the next REST request of the session is refused once staff deactivate the user.
    from django.db import connection

    user = make_user()
    browser = Client()
    browser.force_login(user)
    cookie = f"sessionid={browser.cookies['sessionid'].value}"

    def deactivate() -> None:
        try:
            user.is_active = False
            user.save(update_fields=["is_active"])
        finally:
            connection.close()

    async def scenario():
        async with websockets.connect(
            market["ws"], ping_interval=None, additional_headers={"Cookie": cookie}
        ) as ws:
            await send(ws, {"op": "subscribe", "channels": ["orders"]})
            assert (await recv_until(ws, lambda f: True))["type"] == "subscribed"
            await asyncio.sleep(0.6)  # a ping's check saw the user active
            await asyncio.to_thread(deactivate)
            assert (await until_closed(ws))[0] == 4001

    asyncio.run(scenario())


def test_a_web_session_socket_is_closed_when_that_session_logs_out(market):
    """Logging out ended the session's HTTP requests but not its open sockets: a browser tab
    kept streaming the private orders channel and could still place orders."""
    from accounts.tests.otp_login import PASSWORD, csrf_token, http_sign_in, make_person
    from exchange.models import Order

    person = make_person()
    browsers = [httpx.Client(base_url=market["base"], timeout=15) for _ in range(2)]
    for browser in browsers:  # two sessions of one person: two browsers
        signed_in = http_sign_in(
            browser, email=person.email, password=PASSWORD, device=None, next_url="/"
        )
        assert signed_in.status_code == 302, signed_in.text[:500]
    cookies = [f"sessionid={browser.cookies['sessionid']}" for browser in browsers]

    def log_out() -> None:
        page = browsers[0].get("/")
        response = browsers[0].post("/accounts/logout/", data={
            "csrfmiddlewaretoken": csrf_token(page.text)})  # fmt: skip
        assert response.status_code == 302

    async def scenario():
        async with (
            websockets.connect(
                market["ws"], ping_interval=None, additional_headers={"Cookie": cookies[0]}
            ) as leaving,
            websockets.connect(
                market["ws"], ping_interval=None, additional_headers={"Cookie": cookies[1]}
            ) as staying,
        ):
            for ws in (leaving, staying):
                await send(ws, {"op": "subscribe", "channels": ["orders"]})
                assert (await recv_until(ws, lambda f: True))["type"] == "subscribed"
            await asyncio.sleep(0.6)  # a ping's check saw both sessions signed in
            await asyncio.to_thread(log_out)
            await send(
                leaving, {"op": "order.place", **limit(market["symbol"], "buy", "1.00", "1")}
            )
            code, answers = await until_closed(leaving)
            assert code == 4001
            for answer in answers:  # the order op was refused like a REST request
                if answer.get("type") == "response":
                    assert (answer["status"], answer["error"]["error"]) == (401, "NotAuthenticated")
            # The person's other session is not logged out: its socket stays, pings and all.
            pings = 0
            while pings < 3:
                frame = json.loads(await asyncio.wait_for(staying.recv(), 5))
                if frame.get("type") == "ping":
                    pings += 1
                    await send(staying, {"op": "pong", "id": frame["id"]})

    asyncio.run(scenario())
    assert not Order.objects.filter(user=person).exists()


def test_socket_order_entry_needs_a_key_with_trade_and_carries_the_key_in_the_audit(market):
    from audit.events import AuditEvent
    from audit.models import AuditRecord

    symbol = market["symbol"]
    reader = make_api_key(market["users"][0], permissions=("read",))
    trader_only = make_api_key(market["users"][1], permissions=("trade",))

    async def scenario():
        async with websockets.connect(market["ws"], ping_interval=None) as ws:
            logged_in = await log_in(ws, reader)
            assert logged_in["permissions"] == ["read"]
            await send(ws, {"op": "subscribe", "channels": ["orders"]})
            await recv_until(ws, lambda f: f.get("type") == "subscribed")
            await send(ws, {"op": "order.place", "id": 1, **limit(symbol, "buy", "90.00", "1")})
            refused = await recv_until(ws, lambda f: f.get("type") == "response")
            assert refused["status"] == 403
            assert refused["error"]["error"] == "ApiKeyPermissionMissing"
        async with websockets.connect(market["ws"], ping_interval=None) as ws:
            await log_in(ws, trader_only)
            await send(ws, {"op": "subscribe", "channels": ["orders"], "id": 5})
            no_read = await recv_until(ws, lambda f: f.get("type") == "error")
            assert no_read["error"] == "ApiKeyPermissionMissing" and no_read["id"] == 5
            await send(ws, {"op": "order.place", "id": 2, **limit(symbol, "buy", "90.00", "1")})
            placed = await recv_until(ws, lambda f: f.get("type") == "response")
            assert placed["status"] in (201, 202), placed
            return placed["data"]["order_id"]

    order_id = asyncio.run(scenario())
    [submitted] = AuditRecord.objects.filter(
        event_type=AuditEvent.ORDER_SUBMITTED, order_id=order_id
    )
    assert submitted.api_key_id == trader_only.api_key.pk and submitted.channel == "ws"


def test_the_orders_channel_carries_the_subscribers_balance_changes(market):
    symbol = market["symbol"]
    key_a, key_b = market["keys"]

    async def scenario():
        http_a, http_b = rest(market["base"], key_a), rest(market["base"], key_b)
        seen: list[dict] = []
        async with websockets.connect(market["ws"], ping_interval=None) as ws:
            await watch_own_orders(ws, key_a)

            def balance(asset, **expected):
                return lambda f: (
                    f.get("type") == "balance"
                    and f["data"]["asset"] == asset
                    and all(f["data"][k] == v for k, v in expected.items())
                )

            # Placing holds the money at once (the web process's commit)...
            buy = await http_a.post("/api/v1/orders", json=limit(symbol, "buy", "100.00", "10"))
            assert buy.status_code == 201, buy.text
            held = await recv_until(ws, balance("USD", held="1002.09"), seen=seen)
            assert held["channel"] == "orders"
            version = held["data"].pop("version")
            assert held["data"] == {"asset": "USD", "available": "9998997.91",
                                    "held": "1002.09", "total": "10000000.00"}  # fmt: skip
            # ...and the worker's batch settles the fill: TST arrives, the hold is spent.
            sell = await http_b.post("/api/v1/orders", json=limit(symbol, "sell", "100.00", "10"))
            assert sell.status_code == 201, sell.text
            await recv_until(ws, balance("TST", available="10000010"), seen=seen)
            # It made the buy (maker fee 0.10%): 1,001.00 spent, the rest of the hold released.
            settled = await recv_until(
                ws, balance("USD", held="0.00", total="9998999.00"), seen=seen
            )
            assert settled["data"]["version"] > version  # the worker's commit came later
        assert all(f["data"]["asset"] in ("USD", "TST") for f in seen if f["type"] == "balance")
        await http_a.aclose()
        await http_b.aclose()

    asyncio.run(scenario())


def test_rest_balances_carry_the_version_of_the_last_balance_event_of_each_asset(market):
    # GET /balances said nothing of how new it was: a page that read it before a balance
    # event, the answer arriving after the event, showed the older balance until the next one.
    symbol = market["symbol"]
    key_a, key_b = market["keys"]

    def deposit_a_cent() -> None:  # in a thread of its own: its connection closed after
        try:
            funds_deposit(user=market["users"][0], asset="USD", amount=Decimal("0.01"))
        finally:
            connection.close()

    async def scenario():
        http_a, http_b = rest(market["base"], key_a), rest(market["base"], key_b)
        last: dict[str, dict] = {}

        async def rest_versions() -> dict[str, int]:
            answer = (await http_a.get("/api/v1/balances")).json()
            return {row["asset"]: row["version"] for row in answer}

        async def until(asset: str, **expected) -> None:
            def matches(frame: dict) -> bool:
                if frame.get("type") == "balance":
                    last[frame["data"]["asset"]] = frame["data"]
                    data = frame["data"]
                    return data["asset"] == asset and all(data[k] == v for k, v in expected.items())
                return False

            await recv_until(ws, matches)

        async with websockets.connect(market["ws"], ping_interval=None) as ws:
            await watch_own_orders(ws, key_a)
            # A hold (the web process's commit)...
            buy = await http_a.post("/api/v1/orders", json=limit(symbol, "buy", "100.00", "10"))
            assert buy.status_code == 201, buy.text
            await until("USD", held="1002.09")
            assert (await rest_versions())["USD"] == last["USD"]["version"]
            # ...a fill settled by the worker (both assets)...
            sell = await http_b.post("/api/v1/orders", json=limit(symbol, "sell", "100.00", "10"))
            assert sell.status_code == 201, sell.text
            await until("TST", available="10000010")
            await until("USD", held="0.00", total="9998999.00")
            versions = await rest_versions()
            assert versions["USD"] == last["USD"]["version"]
            assert versions["TST"] == last["TST"]["version"]
            # ...and a deposit (a ledger post of its own).
            await asyncio.to_thread(deposit_a_cent)
            await until("USD", available="9998999.01")
            assert (await rest_versions())["USD"] == last["USD"]["version"] > versions["USD"]
        await http_a.aclose()
        await http_b.aclose()

    asyncio.run(scenario())


def test_ops_sent_before_a_close_still_run_in_order(market):
    """A close right behind a burst of places and a cancel-all cancelled the ops still waiting
    their turn: places already running were stored, the cancel-all was dropped, and orders
    rested that the client believed pulled (helper 44: 34 left open over 10 rounds)."""
    symbol = market["symbol"]

    async def scenario():
        http = rest(market["base"], market["keys"][0])

        async def orders(status: str) -> list[dict]:
            params = {"symbol": symbol, "status": status, "limit": 100}
            return (await http.get("/api/v1/orders", params=params)).json()["results"]

        for round_ in range(3):
            async with websockets.connect(market["ws"], ping_interval=None) as ws:
                await log_in(ws, market["keys"][0])
                for n in range(10):
                    order = {**limit(symbol, "buy", "95.00", "1"),
                             "client_order_id": f"close-{round_}-{n}"}  # fmt: skip
                    await send(ws, {"op": "order.place", "id": n, **order})
                await send(ws, {"op": "order.cancel_all", "id": "all", "symbol": symbol})
            # Closed at once: every place, then the cancel-all, ran in the order sent.
            deadline = time.monotonic() + 20
            while True:
                ended = [o for o in await orders("closed")
                         if o["client_order_id"].startswith(f"close-{round_}-")]  # fmt: skip
                if len(ended) == 10 and await orders("open") == []:
                    break
                assert time.monotonic() < deadline, f"round {round_}: {len(ended)} of 10 ended"
                await asyncio.sleep(0.2)
            assert {(o["status"], o["reason"]) for o in ended} == {("cancelled", "user")}
        await http.aclose()

    asyncio.run(scenario())


def test_a_heartbeats_server_time_is_its_server_time_ns_in_milliseconds():
    # Made from the float ns / 1e9, rounded to the microsecond: .999999800 s read .000 of the
    # next second, and .123999700 read .124, whereas GET /time floors.
    from exchange.consumers import heartbeat_time

    assert heartbeat_time(1764084001999999800) == "2025-11-25T15:20:01.999Z"
    assert heartbeat_time(1764084001123999700) == "2025-11-25T15:20:01.123Z"
    assert heartbeat_time(1764084001000000000) == "2025-11-25T15:20:01.000Z"


def test_a_heartbeat_names_a_book_whose_snapshot_is_on_its_way_without_a_seq():
    # The hub marks such a book -1 until the update it is processing sends the snapshot; the
    # heartbeat had sent -1 as the book's last seq.
    from exchange.consumers import heartbeat_frame
    from exchange.market_hub import Subscriber

    sub = Subscriber(maxsize=10)
    sub.channels.update({"book.AAPL", "book.MSFT", "heartbeat"})
    sub.book_seq.update({"AAPL": 1042, "MSFT": -1, "TSLA": 7})  # TSLA: unsubscribed since
    frame = heartbeat_frame(sub, 1764084001123456789)
    assert frame["books"] == {"AAPL": 1042, "MSFT": None}
    assert (frame["server_time"], frame["server_time_ns"]) == (
        "2025-11-25T15:20:01.123Z",
        1764084001123456789,
    )


@pytest.mark.django_db
def test_a_repeated_api_key_login_reads_its_key_from_the_process_cache_as_rest_does():
    # Each socket login read the key from the database: at a socket's message rate, hundreds of
    # queries a second per connection that a signed REST request (process cache) never costs.
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from exchange.consumers import SocketRequest, _api_key_login

    user = make_user()
    key = make_api_key(user)
    request = SocketRequest({"client": ("198.51.100.7", 4242)})
    first, _ = _api_key_login(login_op(key), request, time.time_ns() // 1_000_000)
    assert first.pk == user.pk
    with CaptureQueriesContext(connection) as queries:
        again, credentials = _api_key_login(login_op(key), request, time.time_ns() // 1_000_000)
    assert (again.pk, credentials.id) == (user.pk, key.api_key.pk)
    assert len(queries) == 0, [q["sql"] for q in queries]

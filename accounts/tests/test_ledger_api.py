"""Money over HTTP against the real web process and shard worker: holds, settlement, releases,
deposits, withdrawals, and the ledger's invariants after trading."""

import random
import uuid
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import psycopg
import pytest
from django.contrib.auth.models import Permission
from django.db import transaction
from django.utils import timezone

from accounts.ledger import funds_deposit, funds_withdraw
from accounts.models import FeeTierAssignment, LedgerAccount
from accounts.selectors import ledger_discrepancies
from accounts.tests.fee_tier_data import ensure_shipped_tiers
from conftest import wait_until
from exchange.models import Order, Trade
from exchange.tests.api_client import ApiClient, make_instrument, make_user
from matching.models import Command

pytestmark = [pytest.mark.processes]


def limit(symbol, side, price, quantity, **extra):
    return {"symbol": symbol, "side": side, "order_type": "limit", "price": price,
            "quantity": quantity, **extra}  # fmt: skip


def stop_loss_buy(symbol, stop_price, quantity):
    return {"symbol": symbol, "side": "buy", "order_type": "stop_loss",
            "stop_price": stop_price, "quantity": quantity}  # fmt: skip


def trade_then_rest_ask(symbol, seller, buyer, *, last, ask, quantity) -> None:
    """A trade of 1 at `last` (the last price stops trigger on), then `quantity` offered at
    `ask`, all applied."""
    assert seller.place(**limit(symbol, "sell", last, "1")).status_code == 201
    assert buyer.place(**limit(symbol, "buy", last, "1")).status_code == 201
    assert seller.place(**limit(symbol, "sell", ask, quantity)).status_code == 201
    all_applied()


def balances(client: ApiClient) -> dict[str, dict]:
    response = client.get("/api/v1/balances")
    assert response.status_code == 200, response.text
    # The amounts: a row's `version` (which orders it against the live balance events) is
    # exchange/tests/test_websocket.py's.
    rows = response.json()
    assert all(isinstance(row.pop("version"), int) for row in rows)
    return {row["asset"]: row for row in rows}


def all_applied() -> None:
    wait_until(lambda: not Command.objects.filter(applied_at__isnull=True).exists(), timeout=60)


def exchange_balance(kind: str, asset: str) -> Decimal:
    account = LedgerAccount.objects.filter(kind=kind, user=None, asset=asset).first()
    return account.balance if account else Decimal(0)


@pytest.fixture
def market(exchange_stack, live_db):
    return make_instrument(), exchange_stack


def test_buy_beyond_available_funds_is_refused_and_nothing_is_stored(market):
    instrument, base_url = market
    poor = ApiClient(base_url, make_user(funds={"USD": Decimal("100.00")}))
    response = poor.place(**limit(instrument.symbol, "buy", "10.00", "10"))
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error"] == "InsufficientBalance" and body["code"] == -2018
    assert body["field"] == "quantity"
    # 10 x 10.00, the 0.20% taker fee, and 0.09 of fee rounding reserve (one cent for each of
    # up to nine more fills, each of whose fee the engine rounds up).
    # At the precision balances read ("100", not "100.00", before).
    assert "100.29 needed, 100.00 available" in body["message"] and body["asset"] == "USD"
    assert not Order.objects.filter(user=poor.user).exists()
    assert balances(poor)["USD"] == {
        "asset": "USD", "available": "100.00", "held": "0.00", "total": "100.00"
    }  # fmt: skip


def test_resting_order_holds_its_funds_and_a_cancel_releases_them(market):
    instrument, base_url = market
    trader = ApiClient(base_url, make_user(funds={"USD": Decimal("5000.00"), "TST": Decimal(7)}))
    buy = trader.place(**limit(instrument.symbol, "buy", "100.00", "10")).json()
    sell = trader.place(**limit(instrument.symbol, "sell", "120.00", "7")).json()
    held = balances(trader)
    assert held["USD"]["held"] == "1002.09" and held["USD"]["available"] == "3997.91"
    assert held["TST"]["held"] == "7" and held["TST"]["available"] == "0"
    for order in (buy, sell):
        assert trader.delete(f"/api/v1/orders/{order['order_id']}").status_code == 200
    all_applied()
    released = balances(trader)
    assert released["USD"]["available"] == "5000.00" and released["USD"]["held"] == "0.00"
    assert released["TST"]["available"] == "7" and released["TST"]["held"] == "0"
    kinds = [row["kind"] for row in trader.get("/api/v1/ledger", asset="USD").json()["results"]]
    assert kinds == ["release", "release", "hold", "hold", "deposit"]  # both sides are yours
    # An asset that does not exist listed nothing, an empty one everything.
    for asset in ("ZZZ", ""):
        refused = trader.get("/api/v1/ledger", asset=asset)
        assert refused.status_code == 400, refused.text
        assert (refused.json()["error"], refused.json()["field"]) == ("UnknownAsset", "asset")


def test_trade_moves_both_assets_and_books_both_fees(market):
    instrument, base_url = market
    seller = ApiClient(base_url, make_user(funds={"TST": Decimal(10)}))
    buyer = ApiClient(base_url, make_user(funds={"USD": Decimal("2000.00")}))
    fees_before = exchange_balance("fee_revenue", "USD")
    sell = seller.place(**limit(instrument.symbol, "sell", "150.45", "10")).json()
    # Price improvement: the buy may pay 151.00 but trades at 150.45; the rest goes back.
    response = buyer.place(**limit(instrument.symbol, "buy", "151.00", "4"))
    assert response.json()["status"] == "filled", response.text
    buy = response.json()
    all_applied()
    # 4 x 150.45 = 601.80; fees round up to the cent: the taker pays 0.20% (1.2036 -> 1.21),
    # the maker 0.10% (0.6018 -> 0.61).
    assert balances(buyer)["USD"] == {
        "asset": "USD", "available": "1396.99", "held": "0.00", "total": "1396.99"
    }  # fmt: skip
    assert balances(buyer)["TST"]["available"] == "4"
    assert balances(seller)["USD"]["available"] == "601.19"
    assert balances(seller)["TST"] == {"asset": "TST", "available": "0", "held": "6", "total": "6"}
    assert exchange_balance("fee_revenue", "USD") - fees_before == Decimal("1.82")
    ledger = buyer.get("/api/v1/ledger").json()["results"]
    trade_entries = [r for r in ledger if r["kind"] == "trade"]
    assert sorted((r["asset"], r["amount"]) for r in trade_entries) == [
        ("TST", "4"), ("USD", "-603.01")
    ]  # fmt: skip
    # Each side's postings name its own order (the maker's had named the taker's: another
    # user's order id in the seller's ledger).
    # Integers, as in every other answer (they were strings here).
    assert {r["order_id"] for r in trade_entries} == {buy["order_id"]}
    assert all(isinstance(r["trade_id"], int) for r in trade_entries)
    seller_trade = [
        r for r in seller.get("/api/v1/ledger").json()["results"] if r["kind"] == "trade"
    ]
    assert sorted((r["asset"], r["amount"]) for r in seller_trade) == [
        ("TST", "-4"), ("USD", "601.19")
    ]  # fmt: skip
    assert {r["order_id"] for r in seller_trade} == {sell["order_id"]}
    assert ledger_discrepancies() == {}


def test_amend_up_needs_and_holds_more_and_amend_down_gives_it_back(market):
    instrument, base_url = market
    trader = ApiClient(base_url, make_user(funds={"USD": Decimal("1100.00")}))
    order = trader.place(**limit(instrument.symbol, "buy", "50.00", "10")).json()
    assert balances(trader)["USD"]["held"] == "501.09"  # 500 + 1.00 fee + 0.09 reserve
    too_big = trader.patch(f"/api/v1/orders/{order['order_id']}", {"quantity": "30"})
    assert too_big.status_code == 400 and too_big.json()["error"] == "InsufficientBalance"
    assert balances(trader)["USD"]["held"] == "501.09", "a refused amend holds nothing"
    bigger = trader.patch(f"/api/v1/orders/{order['order_id']}", {"quantity": "20"})
    assert bigger.status_code == 200, bigger.text
    assert balances(trader)["USD"]["held"] == "1002.19"
    all_applied()
    smaller = trader.patch(f"/api/v1/orders/{order['order_id']}", {"quantity": "5"})
    assert smaller.status_code == 200, smaller.text
    all_applied()
    assert balances(trader)["USD"] == {
        "asset": "USD", "available": "849.46", "held": "250.54", "total": "1100.00"
    }  # fmt: skip
    stored = Order.objects.get(pk=order["order_id"])
    assert (stored.quantity, stored.hold_remaining) == (Decimal(5), Decimal("250.54"))
    assert ledger_discrepancies() == {}


def test_amending_a_stop_loss_buy_up_holds_more_and_it_fills_its_new_size(market):
    instrument, base_url = market
    trader = ApiClient(base_url, make_user(funds={"USD": Decimal("700.00")}))
    order = trader.place(**stop_loss_buy(instrument.symbol, "120.00", "1")).json()
    # The quantity at the 5% collar above the stop price, with the taker fee: 126 + 0.26.
    assert balances(trader)["USD"]["held"] == "126.26"
    too_big = trader.patch(f"/api/v1/orders/{order['order_id']}", {"quantity": "6"})
    assert too_big.status_code == 400 and too_big.json()["error"] == "InsufficientBalance"
    bigger = trader.patch(f"/api/v1/orders/{order['order_id']}", {"quantity": "5"})
    assert bigger.status_code == 200, bigger.text
    assert balances(trader)["USD"]["held"] == "631.30"  # 630 + 1.26 fee + 0.04 reserve
    all_applied()
    seller = ApiClient(base_url, make_user())
    assert seller.place(**limit(instrument.symbol, "sell", "120.00", "10")).status_code == 201
    buyer = ApiClient(base_url, make_user())
    assert buyer.place(**limit(instrument.symbol, "buy", "120.00", "1")).status_code == 201
    all_applied()  # that trade at 120.00 triggered the stop: a market buy of 5
    stored = Order.objects.get(pk=order["order_id"])
    assert (stored.status, stored.filled_quantity) == ("filled", Decimal(5)), stored.reason
    assert balances(trader)["USD"]["held"] == "0.00"
    assert ledger_discrepancies() == {}


def test_a_stop_loss_buy_reduced_while_the_asks_are_above_its_stop_keeps_their_budget(market):
    # Reduced to 2, it was budgeted at the collar above its stop (10.69) and not above the best
    # ask (11.55) as when placed: triggered, it bought 1 at 11.00 and ended with max_quote.
    instrument, base_url = market
    seller, buyer = ApiClient(base_url, make_user()), ApiClient(base_url, make_user())
    trader = ApiClient(base_url, make_user(funds={"USD": Decimal("100.00")}))
    trade_then_rest_ask(instrument.symbol, seller, buyer, last="10.18", ask="11.00", quantity="10")
    placed = trader.place(**stop_loss_buy(instrument.symbol, "10.19", "3")).json()
    assert placed["status"] == "untriggered" and placed["held_amount"] == "34.74"  # 3 x 11.55
    amended = trader.patch(f"/api/v1/orders/{placed['order_id']}", {"quantity": "2"})
    assert amended.status_code == 200, amended.text
    all_applied()
    # 2 x 11.55 = 23.10, the 0.20% fee (0.05) and 0.01 of reserve.
    assert balances(trader)["USD"]["held"] == "23.16"
    assert seller.place(**limit(instrument.symbol, "sell", "10.19", "1")).status_code == 201
    assert buyer.place(**limit(instrument.symbol, "buy", "10.19", "1")).status_code == 201
    all_applied()  # that trade at 10.19 triggered the stop: a market buy of 2 from 11.00
    assert order_state(placed["order_id"]) == ("filled", Decimal(2), "")
    assert balances(trader)["USD"] == {
        "asset": "USD", "available": "77.95", "held": "0.00", "total": "77.95"
    }  # fmt: skip
    assert ledger_discrepancies() == {}


def order_state(order_id) -> tuple:
    stored = Order.objects.get(pk=order_id)
    return stored.status, stored.filled_quantity, stored.reason


def test_a_buy_filled_in_many_pieces_fills_whole_though_each_fee_rounds_up(market):
    # The engine rounds each fill's fee up, so five fills of 1 x 11.00 cost 5 x 11.03 = 55.15
    # where the fee on the whole is 0.11: the hold was 55.11 and the fifth fill was refused
    # (max_quote), the FOK was unfillable, a resting bid filled one lot short.
    _, base_url = market
    instrument = make_instrument(price_band_pct=Decimal(95))  # prices far apart
    seller, buyer = ApiClient(base_url, make_user()), ApiClient(base_url, make_user())
    for _ in range(5):
        assert seller.place(**limit(instrument.symbol, "sell", "11.00", "1")).status_code == 201
    taker = buyer.place(**limit(instrument.symbol, "buy", "11.00", "5")).json()
    assert taker["held_amount"] == "55.15"  # 55 + 0.11 fee + 0.04 rounding reserve
    assert (taker["status"], taker["filled_quantity"]) == ("filled", "5"), taker
    for _ in range(5):
        assert seller.place(**limit(instrument.symbol, "sell", "11.00", "1")).status_code == 201
    fok = buyer.place(**limit(instrument.symbol, "buy", "11.00", "5", time_in_force="FOK"))
    assert (fok.status_code, fok.json()["status"]) == (201, "filled"), fok.text
    maker = buyer.place(**limit(instrument.symbol, "buy", "1.00", "10")).json()
    for _ in range(10):  # each maker fill: 1.00 and a 0.001 fee rounded up to 0.01
        assert seller.place(**limit(instrument.symbol, "sell", "1.00", "1")).status_code == 201
    all_applied()
    assert order_state(maker["order_id"]) == ("filled", Decimal(10), "")
    assert balances(buyer)["USD"]["held"] == "0.00"
    assert ledger_discrepancies() == {}


def test_amending_a_partly_filled_buy_budgets_its_rest_at_the_new_price(market):
    # The amend had budgeted the whole quantity at the new price, ignoring what the fills had
    # cost: a lower price left the rest short (it stopped with max_quote), a much lower one was
    # refused (InvalidMaxQuote), a higher one asked for far more money than the rest needed.
    _, base_url = market
    instrument = make_instrument(price_band_pct=Decimal(95))  # prices far apart
    seller = ApiClient(base_url, make_user())
    buyer = ApiClient(base_url, make_user(funds={"USD": Decimal("1000.00")}))
    bid = buyer.place(**limit(instrument.symbol, "buy", "10.00", "10")).json()
    assert seller.place(**limit(instrument.symbol, "sell", "10.00", "5")).status_code == 201
    all_applied()
    lower = buyer.patch(f"/api/v1/orders/{bid['order_id']}", {"price": "8.00"})
    assert lower.status_code == 200, lower.text
    all_applied()
    # Spent 50.05 (5 x 10.00 as maker); the 5 left at 8.00: 40 + 0.08 fee + 0.04 reserve.
    assert Order.objects.get(pk=bid["order_id"]).held_amount == Decimal("90.17")
    assert seller.place(**limit(instrument.symbol, "sell", "8.00", "5")).status_code == 201
    all_applied()
    assert order_state(bid["order_id"]) == ("filled", Decimal(10), "")

    second = buyer.place(**limit(instrument.symbol, "buy", "10.00", "10")).json()
    assert seller.place(**limit(instrument.symbol, "sell", "10.00", "9")).status_code == 201
    all_applied()
    much_lower = buyer.patch(f"/api/v1/orders/{second['order_id']}", {"price": "6.00"})
    assert much_lower.status_code == 200, much_lower.text
    higher = buyer.patch(f"/api/v1/orders/{second['order_id']}", {"price": "10.50"})
    assert higher.status_code == 200, higher.text  # the last one needs 10.53 more, not 5.01
    assert seller.place(**limit(instrument.symbol, "sell", "10.50", "1")).status_code == 201
    all_applied()
    assert order_state(second["order_id"]) == ("filled", Decimal(10), "")
    assert balances(buyer)["USD"]["held"] == "0.00"
    assert ledger_discrepancies() == {}


def held(client: ApiClient, asset: str = "USD") -> tuple[str, str]:
    row = balances(client)[asset]
    return row["held"], row["available"]


def test_a_buy_that_rests_for_less_than_it_was_placed_for_holds_only_what_its_rest_needs(market):
    # Repriced lower (post-only adjust), or resting after fills below its price: the hold had
    # stayed at the price and size it was placed with until the order ended.
    instrument, base_url = market
    seller = ApiClient(base_url, make_user())
    trader = ApiClient(base_url, make_user(funds={"USD": Decimal("2000.00")}))
    assert seller.place(**limit(instrument.symbol, "sell", "100.00", "5")).status_code == 201
    adjusted = trader.place(
        **limit(instrument.symbol, "buy", "101.00", "10", post_only_adjust=True)
    ).json()
    assert (adjusted["status"], adjusted["price"]) == ("new", "99.99"), adjusted
    all_applied()
    # 10 x 99.99 = 999.90, the 0.20% fee (2.00) and 0.09 of reserve; placed, it held
    # 1012.11 (10 x 101.00).
    assert held(trader) == ("1001.99", "998.01")
    assert trader.delete(f"/api/v1/orders/{adjusted['order_id']}").status_code == 200
    all_applied()
    assert held(trader) == ("0.00", "2000.00")

    # 4 bought at 99.00 (396.00 and a 0.80 fee), 6 rest at 99.50: 597 + 1.20 + 0.05 (placed,
    # it held 997.08: 10 x 99.50).
    assert seller.place(**limit(instrument.symbol, "sell", "99.00", "4")).status_code == 201
    improved = trader.place(**limit(instrument.symbol, "buy", "99.50", "10")).json()
    assert (improved["status"], improved["filled_quantity"]) == ("partially_filled", "4")
    all_applied()
    assert held(trader) == ("598.25", "1004.95")
    stored = Order.objects.get(pk=improved["order_id"])
    assert (stored.held_amount, stored.hold_remaining) == (Decimal("995.05"), Decimal("598.25"))
    # 997.08 held, 396.80 spent, 598.25 needed: 2.03 back, in the batch of the trade.
    rows = trader.get("/api/v1/ledger", asset="USD").json()["results"][:3]
    assert [(row["kind"], row["account"], row["amount"]) for row in rows] == [
        ("release", "available", "2.03"), ("release", "held", "-2.03"),
        ("trade", "held", "-396.80"),
    ]  # fmt: skip
    assert ledger_discrepancies() == {}


def test_quantity_self_trade_prevention_takes_off_gives_its_hold_back(market):
    # decrement_both: the resting order, and an incoming one that then rests, each kept the
    # hold of their whole quantity until they ended.
    instrument, base_url = market
    trader = ApiClient(base_url, make_user(funds={"USD": Decimal("2000.00"), "TST": Decimal(10)}))
    stp = {"stp_mode": "decrement_both"}
    bid = trader.place(**limit(instrument.symbol, "buy", "100.00", "10", **stp)).json()
    assert held(trader) == ("1002.09", "997.91")
    offer = trader.place(**limit(instrument.symbol, "sell", "100.00", "4", **stp)).json()
    assert (offer["status"], offer["reason"]) == ("cancelled", "stp"), offer
    all_applied()
    # The bid rests with 6: 600 + 1.20 fee + 0.05 reserve.
    assert held(trader) == ("601.25", "1398.75")
    assert held(trader, "TST") == ("0", "10")
    # Its price amended: budgeted for the 6 it has left, not for the 10 it was placed with.
    amended = trader.patch(f"/api/v1/orders/{bid['order_id']}", {"price": "101.00"})
    assert amended.status_code == 200, amended.text
    all_applied()
    assert held(trader) == ("607.27", "1392.73")  # 606 + 1.22 + 0.05
    # Only the difference was asked for (it had held 410.86 more, then given 404.84 back).
    rows = trader.get("/api/v1/ledger", asset="USD").json()["results"][:2]
    assert [(row["kind"], row["amount"]) for row in rows] == [("hold", "6.02"), ("hold", "-6.02")]
    assert trader.delete(f"/api/v1/orders/{bid['order_id']}").status_code == 200

    ask = trader.place(**limit(instrument.symbol, "sell", "100.00", "4", **stp)).json()
    assert ask["status"] == "new", ask
    bigger_bid = trader.place(**limit(instrument.symbol, "buy", "100.00", "10", **stp)).json()
    assert (bigger_bid["status"], bigger_bid["remaining_quantity"]) == ("new", "6"), bigger_bid
    all_applied()
    assert held(trader) == ("601.25", "1398.75")
    assert held(trader, "TST") == ("0", "10")
    stored = Order.objects.get(pk=bigger_bid["order_id"])
    assert (stored.held_amount, stored.hold_remaining) == (Decimal("601.25"), Decimal("601.25"))

    offer = trader.place(**limit(instrument.symbol, "sell", "120.00", "10", **stp)).json()
    assert (
        trader.place(**limit(instrument.symbol, "buy", "120.00", "3", **stp)).json()["status"]
        == "cancelled"
    )
    all_applied()
    assert held(trader, "TST") == ("7", "3")
    stored = Order.objects.get(pk=offer["order_id"])
    assert (stored.held_amount, stored.hold_remaining) == (Decimal(7), Decimal(7))
    assert ledger_discrepancies() == {}


def test_an_amend_committed_while_a_batch_reducing_its_order_is_written_keeps_its_hold(
    market, process_env
):
    # The batch's need came from the engine before the amend, its UPDATE read the row with the
    # amend's added hold: it gave that back too, and the order, under-held, failed the batch
    # of its next fill (order_hold_remaining_gte_0) with the worker exiting each time.
    instrument, base_url = market
    symbol = instrument.symbol
    trader = ApiClient(base_url, make_user(funds={"USD": Decimal("5000.00"), "TST": Decimal(10)}))
    stp = {"stp_mode": "decrement_both"}
    bid = trader.place(**limit(symbol, "buy", "100.00", "10", **stp)).json()
    all_applied()
    # The worker's next batch waits at its lease check, after the engine applied it.
    with psycopg.connect(process_env["DATABASE_URL"], autocommit=False) as blocker:
        blocker.execute("SELECT FROM matching_shardstate WHERE shard = 0 FOR UPDATE")
        with ThreadPoolExecutor(max_workers=1) as pool:
            decrement = pool.submit(trader.place, **limit(symbol, "sell", "100.00", "4", **stp))
            wait_until(lambda: blocker_waited_on(process_env["DATABASE_URL"]), timeout=15)
            amended = trader.patch(f"/api/v1/orders/{bid['order_id']}", {"quantity": "20"})
            assert amended.status_code in (200, 202), amended.text
            blocker.rollback()
            assert decrement.result().status_code in (201, 202)
    all_applied()
    # 20 x 100.00, the 0.20% fee and 0.19 of reserve: the amend's new total is all left.
    assert held(trader) == ("2004.19", "2995.81")
    seller = ApiClient(base_url, make_user(funds={"TST": Decimal(20)}))
    assert seller.place(**limit(symbol, "sell", "100.00", "20")).status_code in (201, 202)
    all_applied()
    assert order_state(bid["order_id"]) == ("filled", Decimal(20), "")
    assert held(trader) == ("0.00", "2998.00")
    assert ledger_discrepancies() == {}


def test_a_refused_amend_with_no_hold_to_revert_still_gives_back_what_its_order_no_longer_needs(
    market, process_env
):
    # A batch taking quantity off an order gives nothing back while an amend of it waits for
    # the engine; the amend's batch reckons again. A refused price-only amend (nothing to
    # revert) did not, and the order kept the hold of quantity it no longer had until it ended.
    instrument, base_url = market
    symbol = instrument.symbol
    other = ApiClient(base_url, make_user(funds={"USD": Decimal("1000.00")}))
    assert other.place(**limit(symbol, "buy", "99.00", "5")).status_code == 201
    trader = ApiClient(base_url, make_user(funds={"USD": Decimal("1000.00"), "TST": Decimal(10)}))
    stp = {"stp_mode": "decrement_both"}
    offer = trader.place(**limit(symbol, "sell", "100.00", "10", post_only=True, **stp)).json()
    assert offer["status"] == "new", offer
    all_applied()
    with psycopg.connect(process_env["DATABASE_URL"], autocommit=False) as blocker:
        blocker.execute("SELECT FROM matching_shardstate WHERE shard = 0 FOR UPDATE")
        with ThreadPoolExecutor(max_workers=1) as pool:
            decrement = pool.submit(trader.place, **limit(symbol, "buy", "100.00", "4", **stp))
            wait_until(lambda: blocker_waited_on(process_env["DATABASE_URL"]), timeout=15)
            # Post-only at the other's bid: the engine refuses it (PostOnlyWouldMatch).
            amended = trader.patch(f"/api/v1/orders/{offer['order_id']}", {"price": "99.00"})
            assert amended.status_code in (202, 400), amended.text
            blocker.rollback()
            assert decrement.result().status_code in (201, 202)
    all_applied()
    stored = Order.objects.get(pk=offer["order_id"])
    assert (stored.status, stored.price, stored.remaining_quantity) == (
        "new", Decimal("100.00"), Decimal(6)
    )  # fmt: skip
    assert (stored.held_amount, stored.hold_remaining) == (Decimal(6), Decimal(6))
    assert held(trader, "TST") == ("6", "4")
    assert ledger_discrepancies() == {}


def test_a_batch_releasing_the_hold_of_a_user_without_a_trade_locks_the_users_in_id_order(
    market, process_env
):
    # The batch locked only the users of its trades (the check for ended orders read a name
    # the audit trail had reused), then, settling, the user whose order ended: after the
    # others. A ledger writer holding that user and then asking for another (an order entry
    # batch, in user id order) deadlocked with it: the web's orders answered 500, or the
    # worker's batch failed and it rebuilt.
    instrument, base_url = market
    symbol = instrument.symbol
    stopped = ApiClient(base_url, make_user())  # the lowest user id of the three
    seller, buyer = ApiClient(base_url, make_user()), ApiClient(base_url, make_user())
    # A cancel first: the worker has settled for each of them before (it creates the ledger
    # accounts it has not seen, which would wait for the deposit below instead).
    for trader in (stopped, seller, buyer):
        bid = trader.place(**limit(symbol, "buy", "1.00", "1")).json()
        assert trader.delete(f"/api/v1/orders/{bid['order_id']}").status_code == 200
    stop = stopped.place(**stop_loss_buy(symbol, "10.00", "1")).json()
    assert stop["status"] == "untriggered", stop
    assert seller.place(**limit(symbol, "sell", "10.00", "1")).status_code == 201
    all_applied()
    with transaction.atomic(), ThreadPoolExecutor(max_workers=1) as pool:
        funds_deposit(user=stopped.user, asset="USD", amount=Decimal(1))  # holds its user
        # Trading the only ask at 10.00 triggers the stop: a market buy with nothing to buy,
        # cancelled (no_liquidity), its hold released in the batch of that trade.
        crossing = pool.submit(buyer.place, **limit(symbol, "buy", "10.00", "1"))
        wait_until(lambda: waits_for_user_lock(process_env["DATABASE_URL"]), timeout=15)
        funds_deposit(user=seller.user, asset="USD", amount=Decimal(1))
    assert crossing.result().status_code in (201, 202)
    all_applied()
    assert order_state(stop["order_id"]) == ("cancelled", Decimal(0), "no_liquidity")
    users = (stopped.user.pk, seller.user.pk, buyer.user.pk)
    assert not Command.objects.filter(user_id__in=users, attempts__gt=0).exists()
    assert held(stopped) == ("0.00", str(Decimal("10000001.00")))
    assert ledger_discrepancies() == {}


def waits_for_user_lock(url: str) -> bool:
    """Whether a session of the test database waits for a user's ledger lock."""
    with psycopg.connect(url, autocommit=True) as conn:
        waiting = (
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event = 'advisory'"
        )
        return conn.execute(waiting).fetchone()[0] > 0


def blocker_waited_on(url: str) -> bool:
    """Whether a session of this database waits for a lock (the worker's batch, behind the
    test's row lock); one of another database (a parallel run) does not count."""
    with psycopg.connect(url, autocommit=True) as conn:
        waiting = (
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE wait_event_type = 'Lock' AND datname = current_database()"
        )
        return conn.execute(waiting).fetchone()[0] > 0


def test_a_stop_loss_buy_that_triggers_at_once_holds_for_the_best_ask(market):
    # Its stop already below the last trade, it buys from the asks at once: held at the collar
    # above its stop price (9.45), it filled 2 of 3 at 10.40 and stopped (max_quote).
    instrument, base_url = market
    seller, buyer = ApiClient(base_url, make_user()), ApiClient(base_url, make_user())
    trade_then_rest_ask(instrument.symbol, seller, buyer, last="10.00", ask="10.40", quantity="5")
    placed = buyer.place(**stop_loss_buy(instrument.symbol, "9.00", "3")).json()
    # 3 at the 5% collar above the best ask (10.92), the 0.20% fee, and 0.02 of reserve.
    assert placed["held_amount"] == "32.85"
    all_applied()
    assert order_state(placed["order_id"]) == ("filled", Decimal(3), "")
    assert ledger_discrepancies() == {}


def test_parallel_orders_across_two_symbols_never_spend_the_same_money(market):
    instrument, base_url = market
    other = make_instrument()
    trader = ApiClient(base_url, make_user(funds={"USD": Decimal("1002.90")}))
    # Each buy holds 100.29 (10 x 10.00, the 0.20% fee, 0.09 of fee rounding reserve): exactly
    # ten fit in 1002.90.
    bodies = [limit(s.symbol, "buy", "10.00", "10") for s in (instrument, other) * 15]
    with ThreadPoolExecutor(max_workers=8) as pool:
        codes = list(pool.map(lambda body: trader.place(**body).status_code, bodies))
    assert sorted(codes).count(400) == 20 and len([c for c in codes if c in (201, 202)]) == 10
    assert Order.objects.filter(user=trader.user).count() == 10
    assert balances(trader)["USD"] == {
        "asset": "USD", "available": "0.00", "held": "1002.90", "total": "1002.90"
    }  # fmt: skip
    all_applied()
    assert ledger_discrepancies() == {}


def test_deposits_are_credited_by_staff_only_and_withdrawals_need_funds(market):
    _, base_url = market
    user = ApiClient(base_url, make_user(funds={}), permissions=("read", "trade", "withdraw"))
    staff_users = [make_user("staff", funds={}) for _ in range(2)]
    for staff_user in staff_users:
        staff_user.is_staff = True
        staff_user.save(update_fields=["is_staff"])
    staff_users[1].user_permissions.add(
        Permission.objects.get(content_type__app_label="accounts", codename="add_ledgerentry")
    )
    keys = ("read", "trade", "withdraw")
    unpermitted, staff = (ApiClient(base_url, u, permissions=keys) for u in staff_users)
    body = {"asset": "USD", "amount": "250.00"}
    refused = user.http.post(f"/api/v1/users/{user.user.pk}/deposit", json=body)
    assert refused.status_code == 403 and refused.json()["error"] == "DepositNotAllowed"
    # Staff without the permission to credit funds: refused too (any staff member had been
    # able to credit any user).
    refused = unpermitted.http.post(f"/api/v1/users/{user.user.pk}/deposit", json=body)
    assert refused.status_code == 403 and refused.json()["error"] == "DepositNotAllowed"
    # A staff member's key without `withdraw` (which moves funds) cannot: it had fallen back to
    # `trade`, and a trading bot's key could create money.
    trading_key = ApiClient(base_url, staff_users[1], permissions=("read", "trade"))
    refused = trading_key.http.post(f"/api/v1/users/{user.user.pk}/deposit", json=body)
    assert refused.status_code == 403 and refused.json()["error"] == "ApiKeyPermissionMissing"
    credited = staff.http.post(f"/api/v1/users/{user.user.pk}/deposit", json=body)
    assert credited.status_code == 201, credited.text
    assert credited.json()["balance"]["available"] == "250.00"
    for bad, error in (
        ({"asset": "USD", "amount": 5}, "NumberNotString"),
        ({"asset": "USD", "amount": "1.001"}, "AmountTooPrecise"),
        ({"asset": "XXX", "amount": "1"}, "UnknownAsset"),
        ({"asset": "USD", "amount": "0"}, "InvalidNumber"),
        ({"asset": "USD", "amount": "9" * 5000}, "NumberTooLarge"),  # was a 500 (int()'s limit)
    ):
        response = staff.http.post(f"/api/v1/users/{user.user.pk}/deposit", json=bad)
        assert response.status_code == 400 and response.json()["error"] == error, response.text
        response = user.http.post(f"/api/v1/users/{user.user.pk}/withdraw", json=bad)
        assert response.status_code == 400 and response.json()["error"] == error, response.text
    # Withdrawals: only your own money, only what is available.
    other = staff.http.post(f"/api/v1/users/{user.user.pk}/withdraw", json=body)
    assert other.status_code == 404
    too_much = user.http.post(
        f"/api/v1/users/{user.user.pk}/withdraw", json={"asset": "USD", "amount": "250.01"}
    )
    assert too_much.status_code == 400 and too_much.json()["error"] == "InsufficientBalance"
    trade_only = ApiClient(base_url, user.user)  # a second key: read and trade only
    no_permission = trade_only.http.post(
        f"/api/v1/users/{user.user.pk}/withdraw", json={"asset": "USD", "amount": "1.00"}
    )
    assert no_permission.status_code == 403
    assert no_permission.json()["error"] == "ApiKeyPermissionMissing"
    paid = user.http.post(
        f"/api/v1/users/{user.user.pk}/withdraw", json={"asset": "USD", "amount": "200.00"}
    )
    assert paid.status_code == 201, paid.text
    assert balances(user)["USD"]["available"] == "50.00"
    ledger = user.get("/api/v1/ledger", limit=1).json()
    assert [r["kind"] for r in ledger["results"]] == ["withdrawal"] and ledger["next"]
    # Another user's ledger and balances are never visible.
    assert balances(staff) == {}
    assert staff.get("/api/v1/ledger").json()["results"] == []


def test_a_funds_move_takes_the_asset_as_sent_and_only_an_object_body(market):
    _, base_url = market
    user = ApiClient(
        base_url, make_user(funds={"USD": Decimal("100.00")}), permissions=("read", "withdraw")
    )
    url = f"/api/v1/users/{user.user.pk}/withdraw"
    # "USD\n" and " USD" had been trimmed and paid out USD, as an order's symbol no longer is;
    # the number 5 had been read as the asset "5".
    for asset in ("USD\n", " USD", "USD "):
        refused = user.http.post(url, json={"asset": asset, "amount": "1.00"})
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"] == "UnknownAsset" and refused.json()["field"] == "asset"
    refused = user.http.post(url, json={"asset": 5, "amount": "1.00"})
    assert refused.status_code == 400 and refused.json()["field"] == "asset", refused.text
    assert refused.json()["error"] == "InvalidParameter"
    # A body that is not an object is malformed, as for an order ("No data provided" before).
    for body in (b"null", b"[]", b'"USD"'):
        refused = user.http.post(url, content=body, headers={"Content-Type": "application/json"})
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"] == "MalformedRequest"
    assert balances(user)["USD"]["available"] == "100.00"
    assert user.get("/api/v1/ledger").json()["results"][0]["kind"] == "deposit"


def test_a_deposit_past_what_the_ledger_holds_is_refused_and_nothing_is_stored(market):
    _, base_url = market
    user = ApiClient(base_url, make_user(funds={}))
    staff_user = make_user("staff", funds={})
    staff_user.is_staff = staff_user.is_superuser = True
    staff_user.save(update_fields=["is_staff", "is_superuser"])
    staff = ApiClient(base_url, staff_user, permissions=("read", "withdraw"))
    url = f"/api/v1/users/{user.user.pk}/deposit"
    big = {"asset": "USD", "amount": "600000000000000000.00"}
    assert staff.http.post(url, json=big).status_code == 201
    # A second one would take the balance (and the USD deposited on the exchange) to 1.2 x
    # 10^18, past the balance column's 10^18: it had failed in PostgreSQL, a 500.
    refused = staff.http.post(url, json=big)
    assert refused.status_code == 400, refused.text
    body = refused.json()
    assert body["error"] == "BalanceLimitExceeded" and body["code"] == -3003
    assert body["field"] == "amount" and body["asset"] == "USD"
    assert "less than 1000000000000000000" in body["message"]
    assert balances(user)["USD"]["available"] == "600000000000000000.00"
    assert [r["kind"] for r in user.get("/api/v1/ledger").json()["results"]] == ["deposit"]
    assert ledger_discrepancies() == {}
    # Pay it out again: the USD deposited on the exchange is shared by the tests after this.
    funds_withdraw(user=user.user, asset="USD", amount=Decimal(big["amount"]))


def test_an_asset_of_twelve_decimal_places_is_deposited_held_and_withdrawn_exactly(market):
    """Amounts of up to 30 digits, as the balance column holds them (Python's decimals keep 28
    by default): such a deposit had been refused as an unbalanced entry, or a 500."""
    _, base_url = market
    instrument = make_instrument(
        base_asset=f"D{uuid.uuid4().hex[:8].upper()}",
        base_precision=12,
        lot_size=Decimal("0.000000000001"),
        min_quantity=Decimal("0.000000000001"),
    )
    asset = instrument.base_asset
    trader = ApiClient(base_url, make_user(funds={}), permissions=("read", "trade", "withdraw"))
    staff_user = make_user("staff", funds={})
    staff_user.is_staff = staff_user.is_superuser = True
    staff_user.save(update_fields=["is_staff", "is_superuser"])
    staff = ApiClient(base_url, staff_user, permissions=("read", "withdraw"))
    amount = "600000000000000000.000000000001"
    credited = staff.http.post(
        f"/api/v1/users/{trader.user.pk}/deposit", json={"asset": asset, "amount": amount}
    )
    assert credited.status_code == 201, credited.text
    assert credited.json()["balance"]["available"] == amount
    # A hold taken from that balance moves it by exactly the order's quantity (the rounded
    # difference had moved the cached balance by 1.000000000001).
    sell = trader.place(**limit(instrument.symbol, "sell", "100.00", "1.000000000002"))
    assert sell.status_code == 201, sell.text
    assert balances(trader)[asset] == {
        "asset": asset,
        "available": "599999999999999998.999999999999",
        "held": "1.000000000002",
        "total": amount,
    }
    assert trader.delete(f"/api/v1/orders/{sell.json()['order_id']}").status_code in (200, 202)
    all_applied()
    assert balances(trader)[asset]["available"] == amount
    paid = trader.http.post(
        f"/api/v1/users/{trader.user.pk}/withdraw", json={"asset": asset, "amount": amount}
    )
    assert paid.status_code == 201, paid.text
    assert Decimal(paid.json()["balance"]["total"]) == 0
    assert ledger_discrepancies() == {}


def test_random_trading_run_keeps_every_asset_summing_to_zero(market):
    instrument, base_url = market
    other = make_instrument()
    traders = [ApiClient(base_url) for _ in range(4)]
    # Half of them in the best tier: their maker fills earn a rebate the exchange pays.
    best = ensure_shipped_tiers()["Volume 3"]
    now = timezone.now()
    for trader in traders[:2]:
        FeeTierAssignment.objects.create(
            user=trader.user, tier=best, volume_30d=0, assigned_at=now, assessed_at=now
        )

    def rebate_rate_in_force():  # the web process caches tiers for a few seconds
        probe = traders[0].place(**limit(instrument.symbol, "buy", "1.00", "1")).json()
        traders[0].delete(f"/api/v1/orders/{probe['order_id']}")
        return Order.objects.get(pk=probe["order_id"]).maker_fee_ppm == best.maker_fee_ppm

    wait_until(rebate_rate_in_force, timeout=30, interval=0.5)
    rebates_before = exchange_balance("rebate_expense", "USD")
    rng = random.Random(20261125)
    placed = []
    for _ in range(400):
        trader = rng.choice(traders)
        symbol = rng.choice((instrument, other)).symbol
        action = rng.random()
        if action < 0.12 and placed:
            victim_client, victim = rng.choice(placed)
            victim_client.delete(f"/api/v1/orders/{victim}")
            continue
        if action < 0.2 and placed:
            victim_client, victim = rng.choice(placed)
            victim_client.patch(f"/api/v1/orders/{victim}", {"quantity": str(rng.randint(1, 30))})
            continue
        side = rng.choice(("buy", "sell"))
        if action < 0.3:
            body = {"symbol": symbol, "side": side, "order_type": "market",
                    "quantity": str(rng.randint(1, 20))}  # fmt: skip
        else:
            price = f"{rng.randint(95, 105)}.{rng.randint(0, 99):02d}"
            tif = rng.choice(("GTC", "GTC", "IOC", "FOK"))
            body = limit(symbol, side, price, str(rng.randint(1, 20)), time_in_force=tif)
        response = trader.place(**body)
        assert response.status_code in (201, 202, 400), response.text
        if response.status_code != 400 and "order_id" in response.json():
            placed.append((trader, response.json()["order_id"]))
    all_applied()
    assert ledger_discrepancies() == {}
    assert Trade.objects.filter(instrument__in=(instrument, other)).count() > 20
    assert exchange_balance("rebate_expense", "USD") < rebates_before, "rebates were paid"
    for trader in traders:  # deposits were 10,000,000 of each; trading only moves them around
        for row in balances(trader).values():
            assert Decimal(row["total"]) == Decimal(row["available"]) + Decimal(row["held"])

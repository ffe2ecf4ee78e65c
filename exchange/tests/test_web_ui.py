"""The trader's web UI in a real browser (Playwright driving the machine's Chromium) against the
real web process and matching worker: sign-in, live ladder and tapes, orders, fills, amend,
cancel, a post-only rejection, 2FA enrolment and login, the account page.

Chromium comes from Debian (`apt-get install chromium`; .ci/run installs it). When `CI` is set a
missing browser fails these tests; otherwise they are skipped with the reason.
"""

import base64
import datetime as dt
import json
import os
import re
import threading
import time
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path

import pytest
from django.db import connections

from accounts.ledger import funds_deposit
from accounts.tests.fee_tier_data import ensure_shipped_tiers
from accounts.two_factor import totp_code
from conftest import transaction_held_open, wait_until
from exchange.book_checksum import book_checksum
from exchange.services import instrument_halt, instrument_resume
from exchange.tests.api_client import (
    ApiClient,
    limit,
    make_closed_instrument,
    make_instrument,
    make_user,
)
from matching.models import ShardState

pytestmark = pytest.mark.processes

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "var" / "screenshots"
PASSWORD = "correct horse battery staple"
TIMEOUT_MS = 15_000
BASE, QUOTE = "TST", "USD"  # the assets of make_instrument()


def _unavailable(reason: str):
    if os.environ.get("CI"):
        pytest.fail(f"browser tests are mandatory in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        _unavailable(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    try:
        from playwright.sync_api import expect as playwright_expect
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (make venv)")
    playwright_expect.set_options(timeout=TIMEOUT_MS)
    # Playwright's sync API runs an event loop in this thread; the tests' own ORM calls (users,
    # instruments) are plain blocking calls between browser steps, so Django may allow them.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            chromium = playwright.chromium.launch(
                executable_path=str(CHROMIUM),
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
            )
            yield chromium
            chromium.close()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture(autouse=True)
def shipped_fee_tiers(live_db):
    """The tiers the migration ships (a transactional test earlier in the run may have flushed
    them): the account page shows the user's tier and what the next one needs."""
    ensure_shipped_tiers()


@pytest.fixture
def open_page(browser, exchange_stack):
    """Opens a fresh browser context (its own cookies) per call; closes them after the test."""
    contexts = []

    def opener(*, width: int = 1400, height: int = 1000):
        context = browser.new_context(
            base_url=exchange_stack, viewport={"width": width, "height": height}
        )
        context.set_default_timeout(TIMEOUT_MS)
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda error: errors.append(str(error)))
        # What the Content-Security-Policy refused (a script, a style, a socket) fails the test.
        page.on(
            "console",
            lambda message: (
                "Content Security Policy" in message.text and errors.append(message.text)
            ),
        )
        return page

    errors: list[str] = []
    yield opener
    for context in contexts:
        context.close()
    # The ORM calls made between browser steps ran in Playwright's greenlet context, which has
    # its own connection: close it, or it would keep the test database open.
    connections.close_all()
    assert errors == [], f"JavaScript errors on the page: {errors}"


def trader(prefix: str = "web"):
    user = make_user(prefix)
    user.set_password(PASSWORD)
    user.save()
    return user


def log_in(page, user, next_path: str = "/"):
    page.goto(f"/accounts/login/?next={next_path}")
    page.get_by_label("Email").fill(user.email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()


def log_out_in_another_tab(page):
    """Log out in a second tab of the page's browser; return that tab."""
    other_tab = page.context.new_page()
    other_tab.goto("/account/")
    other_tab.get_by_role("button", name="Log out").click()
    expect(other_tab.get_by_role("link", name="Log in")).to_be_visible()
    return other_tab


def open_trading(page, user, symbol: str):
    log_in(page, user, f"/trade/{symbol}/")
    page.wait_for_url(f"**/trade/{symbol}/")
    expect(page.locator("#stream-state")).to_have_text("Live")
    # The first snapshot has arrived: the ladder carries its seq.
    expect(page.locator("#ladder")).not_to_have_attribute("data-seq", "")


def expect(locator):
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def place_limit(page, side: str, price: str, quantity: str, *, post_only: bool = False):
    ticket = page.locator("#ticket")
    ticket.get_by_label("Buy" if side == "buy" else "Sell", exact=True).check()
    ticket.get_by_label("Order type").select_option("limit")
    ticket.get_by_label(f"Limit price ({QUOTE})", exact=True).fill(price)
    ticket.get_by_label(f"Quantity ({BASE})", exact=True).fill(quantity)
    if post_only:
        ticket.locator("summary").click()
        ticket.get_by_label("Post-only: reject if it would take liquidity").check()
    ticket.locator("#ticket-submit").click()


def ladder_row(page, side: str, price: str):
    return page.locator(f'#ladder tr[data-side="{side}"][data-price="{price}"]')


def open_order_row(page, price: str):
    return page.locator("#open-orders tbody tr[data-order-id]").filter(has_text=price)


def screenshot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / name), full_page=True)


def test_log_in_and_a_limit_order_appears_in_the_ladder_and_open_orders_without_reload(
    open_page, live_db
):
    instrument, user = make_instrument(), trader()
    page = open_page()
    open_trading(page, user, instrument.symbol)
    page.evaluate("window.__sameDocument = true")

    # Keyboard only: type the price, Tab to the quantity, Enter submits.
    page.locator("#ticket-price").focus()
    page.keyboard.type("100.00")
    page.keyboard.press("Tab")
    page.keyboard.type("5")
    expect(page.locator("#fee-preview")).to_contain_text("Fee 0.50 USD (maker 0.10 %")
    page.keyboard.press("Enter")

    expect(page.locator("#ticket-result")).to_contain_text(": new.")
    bid = ladder_row(page, "bid", "100.00")
    expect(bid).to_be_visible()
    expect(bid.locator("td").nth(1)).to_have_text("5")
    row = open_order_row(page, "100.00")
    expect(row).to_contain_text("Buy")
    expect(row).to_contain_text("new")
    assert page.evaluate("window.__sameDocument") is True
    # The hold shows in the available balance next to the ticket: 10,000,000 - 501.04 (500,
    # the worst-case taker fee 1.00, and a cent of fee rounding reserve per fill after the first).
    expect(page.locator('#ticket-balances [data-asset="USD"]')).to_have_text("9999498.96")


def test_the_tickets_balances_follow_changes_made_elsewhere(open_page, exchange_stack, live_db):
    # They changed only with an order of the page's own symbol: an order of another symbol or
    # a deposit left them stale until then.
    instrument, other, user = make_instrument(), make_instrument(), trader()
    page = open_page()
    open_trading(page, user, instrument.symbol)
    available = page.locator('#ticket-balances [data-asset="USD"]')
    expect(available).to_have_text("10000000.00")
    elsewhere = ApiClient(exchange_stack, user)
    placed = elsewhere.place(
        symbol=other.symbol, side="buy", order_type="limit", price="10.00", quantity="10"
    )
    assert placed.status_code == 201, placed.text
    usd = next(b for b in elsewhere.get("/api/v1/balances").json() if b["asset"] == "USD")
    assert usd["available"] != "10000000.00"
    expect(available).to_have_text(usd["available"])
    funds_deposit(user=user, asset="USD", amount=Decimal("0.01"), memo="test")
    expect(available).to_have_text(f"{Decimal(usd['available']) + Decimal('0.01')}")


def test_a_page_left_open_after_logging_out_elsewhere_says_so(open_page, live_db):
    # It said "Authentication credentials were not provided." and "Feed error: log in
    # (session or login op) to see your orders", with no way back.
    instrument, user = make_instrument(), trader()
    page = open_page()
    open_trading(page, user, instrument.symbol)
    log_out_in_another_tab(page)
    page.locator("#ticket-price").fill("100.00")
    page.locator("#ticket-quantity").fill("1")
    page.locator("#ticket-submit").click()
    notice = page.locator('#ticket [data-error-for="__all__"]')
    expect(notice).to_have_text("You are signed out. Log in again.")
    link = notice.get_by_role("link", name="Log in again")
    expect(link).to_have_attribute(
        "href", f"/accounts/login/?next=%2Ftrade%2F{instrument.symbol}%2F"
    )
    expect(page.locator("#stream-state")).to_have_text("You are signed out. Log in again.")


def test_the_account_page_left_open_after_logging_out_elsewhere_says_so(open_page, live_db):
    # Revoke said "Authentication credentials were not provided." and Show older entries showed
    # nothing, each with an uncaught error on the page.
    from accounts.api_keys import api_key_create

    user = trader()
    api_key_create(user=user, label="bot", permissions=["read"])
    for _ in range(25):  # a second page of the ledger
        funds_deposit(user=user, asset="USD", amount=Decimal("1"), memo="test funds")
    page = open_page()
    log_in(page, user, "/account/")
    page.wait_for_url("**/account/")
    expect(page.locator("#ledger-more")).to_be_visible()
    log_out_in_another_tab(page)

    page.get_by_role("button", name="Show older entries").click()
    expect(page.locator("#ledger-result")).to_have_text("You are signed out. Log in again.")
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Revoke key bot").click()
    expect(page.locator("#keys-result")).to_have_text("You are signed out. Log in again.")
    expect(page.locator("#keys-result").get_by_role("link", name="Log in again")).to_have_attribute(
        "href", "/accounts/login/?next=%2Faccount%2F"
    )


def test_a_page_left_open_while_logging_in_again_elsewhere_still_trades(open_page, live_db):
    """Logging in again in another tab gives a new CSRF token: the page's copy of the old one
    made every order, amend and cancel from it a 403 ("CSRF Failed: CSRF token ... incorrect"),
    Cancel all included, until a reload."""
    instrument, user = make_instrument(), trader()
    page = open_page()
    open_trading(page, user, instrument.symbol)
    other_tab = log_out_in_another_tab(page)
    log_in(other_tab, user, "/account/")
    other_tab.wait_for_url("**/account/")
    place_limit(page, "buy", "99.00", "1")
    expect(page.locator("#ticket-result")).to_have_text(re.compile(r"Order \d+: new\."))
    page.get_by_role("button", name="Cancel all").click()
    expect(page.locator("#orders-result")).to_have_text(
        f"Cancel of all your open {instrument.symbol} orders sent."
    )
    expect(page.locator("#open-orders tbody")).to_contain_text("No open orders.")


def test_a_form_of_a_page_older_than_a_sign_in_in_another_tab_says_what_to_do(open_page, live_db):
    """Signing in gives a new CSRF token: the login form (or Log out) of a tab opened before
    got Django's bare "403 Forbidden: CSRF verification failed. Request aborted.", its style
    refused by the Content-Security-Policy, with no way back to the site."""
    user = trader()
    page = open_page()
    page.goto("/accounts/login/?next=/account/")
    other_tab = page.context.new_page()
    log_in(other_tab, user, "/account/")
    other_tab.wait_for_url("**/account/")

    page.get_by_label("Email").fill(user.email)
    page.get_by_label("Password").fill(PASSWORD)
    with page.expect_response("**/accounts/login/") as answer:
        page.get_by_role("button", name="Log in").click()
    assert answer.value.status == 403
    expect(page.locator("#csrf-failure")).to_contain_text("Nothing was done")
    expect(page.get_by_role("button", name="Log out")).to_be_visible()  # the site's own page
    page.get_by_role("link", name="Open the page again").click()
    page.wait_for_url("**/accounts/login/?next=/account/")  # where the form was, its next kept
    page.get_by_label("Email").fill(user.email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url("**/account/")


def test_the_trading_page_says_why_the_engine_ended_an_order(open_page, live_db):
    """A market order on an empty book read "Order 33: cancelled.", and the resting order
    self-trade prevention cancelled left the table without a word."""
    instrument, user = make_instrument(), trader()
    page = open_page()
    open_trading(page, user, instrument.symbol)
    expect(page.get_by_role("link", name="Admin")).to_have_count(0)  # not for traders
    ticket = page.locator("#ticket")
    ticket.get_by_label("Order type").select_option("market")
    ticket.get_by_label(f"Quantity ({BASE})", exact=True).fill("1")
    ticket.locator("#ticket-submit").click()
    expect(page.locator("#ticket-result")).to_have_text(
        re.compile(r"Order \d+: cancelled \(no liquidity\)\.")
    )
    # A market buy by amount with no amount: the error is at the amount, not at `quantity`.
    ticket.get_by_label("Buy", exact=True).check()
    ticket.get_by_label("By amount to spend").check()
    ticket.locator("#ticket-submit").click()
    expect(page.locator('#ticket [data-error-for="quote_quantity"]')).to_have_text(
        "Enter the amount to spend."
    )
    place_limit(page, "buy", "99.00", "1")
    resting = open_order_row(page, "99.00")
    expect(resting).to_be_visible()
    resting_id = resting.get_attribute("data-order-id")
    place_limit(page, "sell", "99.00", "1")  # cancel_resting: the buy goes
    expect(page.locator("#orders-result")).to_have_text(
        f"Order {resting_id}: cancelled (self-trade prevention)."
    )
    # Both stay findable, with why, under the orders that ended.
    history = page.locator("#order-history tbody tr[data-order-id]")
    expect(history).to_have_count(2)
    expect(history.nth(0)).to_contain_text("cancelled (self-trade prevention)")
    expect(history.nth(1)).to_contain_text("cancelled (no liquidity)")


def test_the_trading_pages_status_follows_a_halt(open_page, live_db):
    # It was rendered once: "Trading" while every order was refused as halted.
    instrument, user = make_instrument(), trader()
    page = open_page()
    open_trading(page, user, instrument.symbol)
    expect(page.locator("#stat-status")).to_have_text("Trading")
    instrument_halt(instrument=instrument, actor=None, http_request=None)
    page.locator("#ticket-price").fill("100.00")
    page.locator("#ticket-quantity").fill("1")

    def refused_as_halted() -> bool:
        page.locator("#ticket-submit").click()
        error = page.locator('#ticket [data-error-for="__all__"]')
        error.wait_for(state="visible")
        return "halted" in error.inner_text()

    wait_until(refused_as_halted, timeout=15)
    expect(page.locator("#stat-status")).to_have_text("Halted")


def test_the_trading_pages_status_shows_a_halt_and_its_reason_at_once(open_page, live_db):
    # It learned of a halt only from its next poll of the ticker (10 s) or a refused order.
    instrument, user = make_instrument(), trader()
    page = open_page()
    open_trading(page, user, instrument.symbol)
    expect(page.locator("#stat-status")).to_have_text("Trading")
    instrument_halt(instrument=instrument, actor=None, reason="Pending news", http_request=None)
    expect(page.locator("#stat-status")).to_have_text("Halted: Pending news", timeout=5000)
    instrument_resume(instrument=instrument, actor=None, http_request=None)
    expect(page.locator("#stat-status")).to_have_text("Trading", timeout=5000)
    # Opened during a halt, the page says its reason from the start.
    instrument_halt(instrument=instrument, actor=None, reason="Pending news", http_request=None)
    later = open_page()
    open_trading(later, user, instrument.symbol)
    expect(later.locator("#stat-status")).to_have_text("Halted: Pending news")


def test_outside_its_trading_hours_the_page_says_closed_and_after_a_resume_too(open_page, live_db):
    # The status frame of a resume says "trading"; outside its hours the instrument is closed.
    instrument = make_closed_instrument()
    user = trader()
    page = open_page()
    open_trading(page, user, instrument.symbol)
    # At once, as the ticker says it (it rendered "Trading" until its first poll, 10 s on).
    expect(page.locator("#stat-status")).to_have_text(
        "Closed (outside trading hours)", timeout=3000
    )
    instrument_halt(instrument=instrument, actor=None, reason="Pending news", http_request=None)
    expect(page.locator("#stat-status")).to_have_text("Halted: Pending news", timeout=5000)
    instrument_resume(instrument=instrument, actor=None, http_request=None)
    expect(page.locator("#stat-status")).to_have_text(
        "Closed (outside trading hours)", timeout=5000
    )


def test_the_markets_page_follows_a_halt_and_a_resume(open_page, live_db):
    # Its rows refreshed prices only: a halted market still read "Trading" until a reload.
    instrument = make_instrument()
    page = open_page()
    page.goto("/")
    status = page.locator(f'#markets tr[data-symbol="{instrument.symbol}"] [data-field="status"]')
    expect(status).to_have_text("Trading")
    instrument_halt(instrument=instrument, actor=None, reason="Pending news", http_request=None)
    expect(status).to_have_text("Halted: Pending news")  # within its 5 s refresh
    instrument_resume(instrument=instrument, actor=None, http_request=None)
    expect(status).to_have_text("Trading")


def test_a_resume_shows_at_once_while_trades_keep_coming(open_page, exchange_stack, live_db):
    # A resume's read of the ticker went through the trades' 1 s debounce, which every trade
    # restarts: "Halted: <reason>" stayed up for as long as trades kept coming (helper 58).
    instrument, user = make_instrument(), trader()
    seller, buyer = ApiClient(exchange_stack), ApiClient(exchange_stack)
    page = open_page()
    open_trading(page, user, instrument.symbol)
    status = page.locator("#stat-status")
    instrument_halt(instrument=instrument, actor=None, reason="Pending news", http_request=None)
    expect(status).to_have_text("Halted: Pending news", timeout=5000)
    stop = threading.Event()

    def trade_on() -> None:  # a trade every few tenths of a second, once trading resumed
        order = {"symbol": instrument.symbol, "order_type": "limit", "quantity": "1"}
        while not stop.is_set():
            seller.place(**order, side="sell", price="100.00")
            buyer.place(**order, side="buy", price="100.00")
            time.sleep(0.2)

    instrument_resume(instrument=instrument, actor=None, http_request=None)
    trading = threading.Thread(target=trade_on)
    trading.start()
    try:
        expect(status).to_have_text("Trading", timeout=3000)
    finally:
        stop.set()
        trading.join()


def test_a_crossing_order_of_a_second_user_fills_it_in_both_tapes_and_fills(open_page, live_db):
    instrument, maker, taker = make_instrument(), trader("maker"), trader("taker")
    maker_page, taker_page = open_page(), open_page()
    open_trading(maker_page, maker, instrument.symbol)
    open_trading(taker_page, taker, instrument.symbol)

    place_limit(maker_page, "sell", "101.00", "3")
    expect(ladder_row(taker_page, "ask", "101.00")).to_be_visible()
    place_limit(taker_page, "buy", "101.00", "2")
    expect(taker_page.locator("#ticket-result")).to_contain_text("filled 2 at 101.00")

    for page in (maker_page, taker_page):
        trade = page.locator("#tape tbody tr").first
        expect(trade).to_contain_text("101.00")
        expect(trade.locator("td").nth(2)).to_have_text("2")
        expect(trade).to_contain_text("Buy")
        expect(ladder_row(page, "ask", "101.00").locator("td").nth(1)).to_have_text("1")
    maker_fill = maker_page.locator("#fills tbody tr[data-trade-id]")
    expect(maker_fill).to_have_count(1)
    expect(maker_fill).to_contain_text("Sell")
    expect(maker_fill).to_contain_text("maker")
    taker_fill = taker_page.locator("#fills tbody tr[data-trade-id]")
    expect(taker_fill).to_have_count(1)
    expect(taker_fill).to_contain_text("taker")
    expect(taker_fill.locator("td").nth(4)).to_have_text("0.41")  # 0.20 % of 202.00, rounded up
    expect(open_order_row(maker_page, "101.00")).to_contain_text("partially filled")
    expect(taker_page.locator("#open-orders tbody")).to_contain_text("No open orders.")
    # Every real update passed the page's seq and checksum checks.
    for page in (maker_page, taker_page):
        expect(page.locator("#ladder")).to_have_attribute("data-resyncs", "0")
    # The live candle has the trade too.
    expect(maker_page.locator("#chart")).to_have_attribute("data-candles", "1")
    expect(maker_page.locator("#chart-summary")).to_contain_text("close 101.00")
    screenshot(maker_page, "trading.png")


def test_the_fee_preview_is_the_fee_the_engine_charges(open_page, exchange_stack, live_db):
    # The preview took its rate of the exact price x quantity, 10.05 x 9.951 = 100.00755 (0.20 %:
    # 0.2000151, shown 0.21); the engine charges it on the notional in whole cents, 100.00 (0.20).
    instrument = make_instrument(
        base_asset="FPV", base_precision=3, lot_size=Decimal("0.001"), min_quantity=Decimal("0.001")
    )
    maker = ApiClient(exchange_stack, make_user("maker", funds={"FPV": Decimal("100")}))
    resting = maker.place(
        symbol=instrument.symbol, side="sell", order_type="limit", price="10.05", quantity="20"
    )
    assert resting.status_code == 201, resting.text
    page = open_page()
    open_trading(page, trader(), instrument.symbol)
    expect(ladder_row(page, "ask", "10.05")).to_be_visible()
    ticket = page.locator("#ticket")
    ticket.get_by_label(f"Limit price ({QUOTE})", exact=True).fill("10.05")
    ticket.get_by_label("Quantity (FPV)", exact=True).fill("9.951")
    expect(page.locator("#fee-preview")).to_have_text(
        "Fee 0.20 USD (taker 0.20 %) · value 100.00 USD"
    )
    ticket.locator("#ticket-submit").click()
    fill = page.locator("#fills tbody tr[data-trade-id]")
    expect(fill).to_have_count(1)
    expect(fill.locator("td").nth(4)).to_have_text("0.20")


def test_amend_then_cancel_an_order_and_cancel_all(open_page, live_db):
    instrument, user = make_instrument(), trader()
    page = open_page()
    open_trading(page, user, instrument.symbol)
    place_limit(page, "buy", "99.00", "4")
    row = open_order_row(page, "99.00")
    expect(row).to_be_visible()

    row.get_by_role("button", name="Amend").click()
    amend = page.locator(".amend-form")
    amend.get_by_label("New price").fill("98.50")
    amend.get_by_label("New total quantity").fill("6")
    amend.get_by_role("button", name="Save changes").click()
    expect(page.locator("#orders-result")).to_contain_text("amended")
    expect(ladder_row(page, "bid", "98.50").locator("td").nth(1)).to_have_text("6")
    expect(ladder_row(page, "bid", "99.00")).to_have_count(0)
    amended = open_order_row(page, "98.50")
    expect(amended.locator("td").nth(4)).to_have_text("6")

    # An amend the server refuses shows its message next to the field it names.
    amended.get_by_role("button", name="Amend").click()
    page.locator(".amend-form").get_by_label("New price").fill("98.505")
    page.locator(".amend-form").get_by_role("button", name="Save changes").click()
    price_error = page.locator('.amend-form [data-error-for="price"]')
    expect(price_error).to_be_visible()
    expect(price_error).to_contain_text("tick")
    amended.get_by_role("button", name="Amend").click()  # close the form

    amended.get_by_role("button", name="Cancel").click()
    expect(page.locator("#orders-result")).to_contain_text("cancelled")
    expect(page.locator("#open-orders tbody")).to_contain_text("No open orders.")
    expect(ladder_row(page, "bid", "98.50")).to_have_count(0)

    place_limit(page, "buy", "97.00", "1")
    place_limit(page, "sell", "103.00", "1")
    expect(page.locator("#open-orders tbody tr[data-order-id]")).to_have_count(2)
    page.get_by_role("button", name="Cancel all").click()
    expect(page.locator("#open-orders tbody")).to_contain_text("No open orders.")
    expect(page.locator("#ladder tr[data-price]")).to_have_count(0)


@contextmanager
def shard_batches_held_up(shard: int):
    """The shard's worker cannot commit a batch inside the block (its shard-state row, which
    each batch locks first, is locked here): its commands wait, and a request answers 202."""
    with transaction_held_open(lambda: ShardState.objects.select_for_update().get(shard=shard)):
        yield


def test_an_amend_the_engine_has_not_confirmed_says_it_was_sent(open_page, live_db):
    # A 202 carries the order as it was before the change: the page said "Order 7 amended:
    # 99.00 x 4." with the old price while the amend was still on its way.
    instrument, user = make_instrument(), trader()
    page = open_page()
    open_trading(page, user, instrument.symbol)
    place_limit(page, "buy", "99.00", "4")
    row = open_order_row(page, "99.00")
    expect(row).to_be_visible()
    order_id = row.get_attribute("data-order-id")
    row.get_by_role("button", name="Amend").click()
    page.locator(".amend-form").get_by_label("New price").fill("98.50")
    with shard_batches_held_up(instrument.shard):
        page.locator(".amend-form").get_by_role("button", name="Save changes").click()
        expect(page.locator("#orders-result")).to_have_text(
            f"Amend of order {order_id} sent; the engine has not confirmed it yet."
        )
    expect(open_order_row(page, "98.50")).to_be_visible()  # once the engine applied it


def test_what_the_engine_had_not_confirmed_is_said_once_it_is(open_page, live_db):
    # "Cancel of order 7 sent; the engine has not confirmed it yet." stayed after the engine
    # had cancelled it (and so for an order placed, or an amend, answered 202).
    instrument, user = make_instrument(), trader()
    page = open_page()
    open_trading(page, user, instrument.symbol)
    result, orders_result = page.locator("#ticket-result"), page.locator("#orders-result")
    with shard_batches_held_up(instrument.shard):
        place_limit(page, "buy", "99.00", "4")
        expect(result).to_contain_text("accepted; the engine has not confirmed it yet.")
    expect(result).to_have_text(re.compile(r"Order \d+: new\."))
    row = open_order_row(page, "99.00")
    order_id = row.get_attribute("data-order-id")

    row.get_by_role("button", name="Amend").click()
    page.locator(".amend-form").get_by_label("New price").fill("98.50")
    with shard_batches_held_up(instrument.shard):
        page.locator(".amend-form").get_by_role("button", name="Save changes").click()
        expect(orders_result).to_contain_text(f"Amend of order {order_id} sent")
    expect(orders_result).to_have_text(f"Order {order_id} amended: 98.50 \u00d7 4.")

    with shard_batches_held_up(instrument.shard):
        open_order_row(page, "98.50").get_by_role("button", name="Cancel").click()
        expect(orders_result).to_contain_text(f"Cancel of order {order_id} sent")
    expect(orders_result).to_have_text(f"Order {order_id}: cancelled (by you).")


def test_the_ticket_sends_market_by_amount_stop_limit_and_gtd_iceberg_orders(
    open_page, exchange_stack, live_db
):
    instrument, user = make_instrument(), trader()
    seller = ApiClient(exchange_stack)
    resting = seller.place(
        symbol=instrument.symbol, side="sell", order_type="limit", price="50.00", quantity="10"
    )
    assert resting.status_code == 201
    page = open_page()
    open_trading(page, user, instrument.symbol)
    ticket = page.locator("#ticket")
    expect(ladder_row(page, "ask", "50.00")).to_be_visible()

    # Market buy by the amount to spend (fees included).
    ticket.get_by_label("Order type").select_option("market")
    ticket.get_by_label(f"By amount to spend ({QUOTE})").check()
    expect(ticket.get_by_label(f"Quantity ({BASE})", exact=True)).to_be_hidden()
    ticket.get_by_label("Amount to spend, fees included").fill("150.00")
    expect(page.locator("#fee-preview")).to_contain_text("Fee at most 0.30 USD (taker 0.20 %)")
    page.locator("#ticket-submit").click()
    fill = page.locator("#fills tbody tr[data-trade-id]")
    expect(fill).to_have_count(1)
    expect(fill).to_contain_text("50.00")
    expect(fill).to_contain_text("taker")
    expect(fill.locator("td").nth(3)).to_have_text("2")  # 3 would cost 150.00 plus the fee

    # A stop-limit sell rests untriggered below the market (inside the 10 % price band).
    ticket.get_by_label("Sell", exact=True).check()
    ticket.get_by_label("Order type").select_option("stop_limit")
    ticket.get_by_label(f"Stop price ({QUOTE})").fill("47.00")
    ticket.get_by_label("Limit price when triggered").fill("46.00")
    ticket.get_by_label(f"Quantity ({BASE})", exact=True).fill("1")
    page.locator("#ticket-submit").click()
    stop = open_order_row(page, "stop 47.00")
    expect(stop).to_contain_text("untriggered")
    expect(stop).to_contain_text("stop-limit")

    # A GTD iceberg buy: time in force, expiry and display quantity under the advanced options.
    ticket.get_by_label("Buy", exact=True).check()
    ticket.get_by_label("Order type").select_option("limit")
    ticket.get_by_label(f"Limit price ({QUOTE})", exact=True).fill("46.50")
    ticket.get_by_label(f"Quantity ({BASE})", exact=True).fill("5")
    ticket.locator("summary").click()
    ticket.get_by_label("Time in force").select_option("GTD")
    expiry_day = (dt.datetime.now(dt.UTC) + dt.timedelta(days=30)).date().isoformat()
    ticket.get_by_label("Expires at").fill(f"{expiry_day}T12:00")  # within GTD_MAX_DAYS
    ticket.get_by_label("Iceberg: visible quantity").fill("2")
    page.locator("#ticket-submit").click()
    expect(open_order_row(page, "46.50")).to_contain_text("new")
    expect(ladder_row(page, "bid", "46.50").locator("td").nth(1)).to_have_text("2")
    orders = ApiClient(exchange_stack, user=user).get(
        "/api/v1/orders", symbol=instrument.symbol, status="open"
    )
    gtd = next(o for o in orders.json()["results"] if o["price"] == "46.50")
    assert (gtd["time_in_force"], gtd["display_quantity"]) == ("GTD", "2")
    assert gtd["expire_at"].startswith(expiry_day)
    # The open orders say when it ends (a time in force left from an earlier ticket had gone
    # unseen), and the stop's GTC.
    expires = gtd["expire_at"].replace("T", " ")[:16]
    expect(open_order_row(page, "46.50").locator("td").nth(7)).to_have_text(
        f"GTD until {expires} UTC"
    )
    expect(stop.locator("td").nth(7)).to_have_text("GTC")


def test_a_checksum_mismatch_or_a_gap_makes_the_page_fetch_a_fresh_snapshot(
    open_page, exchange_stack, live_db
):
    instrument, user = make_instrument(), trader()
    seller = ApiClient(exchange_stack)
    channel = f"book.{instrument.symbol}"
    tamper = ["checksum", "gap"]  # the next book updates from the server, spoiled in this order

    def between_page_and_server(ws):
        server = ws.connect_to_server()

        def from_server(message):
            frame = json.loads(message)
            if frame.get("channel") == channel and frame.get("type") == "update" and tamper:
                if tamper.pop(0) == "checksum":
                    frame["checksum"] = (frame["checksum"] + 1) % 2**32
                else:
                    frame["prev_seq"] = frame["prev_seq"] - 1
                message = json.dumps(frame)
            ws.send(message)

        server.on_message(from_server)

    page = open_page()
    page.route_web_socket("**/ws/v1", between_page_and_server)
    open_trading(page, user, instrument.symbol)
    ladder = page.locator("#ladder")
    expect(ladder).to_have_attribute("data-resyncs", "0")

    sell = {"symbol": instrument.symbol, "side": "sell", "order_type": "limit", "quantity": "1"}
    assert seller.place(**sell, price="110.00").status_code == 201
    expect(ladder).to_have_attribute("data-resyncs", "1")
    expect(ladder).to_have_attribute("data-last-resync", "checksum")
    expect(ladder_row(page, "ask", "110.00")).to_be_visible()  # from the fresh snapshot

    assert seller.place(**sell, price="111.00").status_code == 201
    expect(ladder).to_have_attribute("data-resyncs", "2")
    expect(ladder).to_have_attribute("data-last-resync", "gap")
    expect(ladder_row(page, "ask", "111.00")).to_be_visible()

    # Unspoiled updates are applied and verified without further resyncs.
    assert seller.place(**sell, price="112.00").status_code == 201
    expect(ladder_row(page, "ask", "112.00")).to_be_visible()
    expect(page.locator("#ladder tr[data-side='ask']")).to_have_count(3)
    assert ladder.get_attribute("data-resyncs") == "2"


def test_a_book_subscription_refused_for_the_moment_is_asked_for_again(
    open_page, exchange_stack, live_db
):
    # The server refuses a book's subscription for the moment (ServiceUnavailable: market
    # data out of reach, or the book being restored after Redis lost it): the page said
    # "Feed error" and showed no book until it was reloaded.
    instrument, user = make_instrument(), trader()
    resting = ApiClient(exchange_stack).place(**limit(instrument.symbol, "sell", "110.00", "1"))
    assert resting.status_code == 201, resting.text
    channel = f"book.{instrument.symbol}"
    asked: list[list[str]] = []

    def between_page_and_server(ws):
        server = ws.connect_to_server()

        def from_page(message):
            op = json.loads(message)
            if op.get("op") == "subscribe" and channel in op["channels"]:
                asked.append(op["channels"])
                if len(asked) == 1:  # the first time, as the server does when it cannot yet
                    ws.send(
                        json.dumps(
                            {
                                "type": "error",
                                "op": "subscribe",
                                "channel": channel,
                                "error": "ServiceUnavailable",
                                "code": -1001,
                                "message": "the order book is being restored for a moment: "
                                "subscribe again shortly",
                            }
                        )
                    )
                    others = [c for c in op["channels"] if c != channel]
                    message = json.dumps({**op, "channels": others})
            server.send(message)

        ws.on_message(from_page)

    page = open_page()
    page.route_web_socket("**/ws/v1", between_page_and_server)
    open_trading(page, user, instrument.symbol)  # Live, with the book's snapshot
    expect(ladder_row(page, "ask", "110.00")).to_be_visible()
    assert asked[1] == [channel]


def trade_frames_lost(symbol: str, *, lose: list):
    """A socket route between page and server that, for each item taken from `lose`, turns the
    next trades frame of `symbol` into the server's "feed_gap" notice (the frame never arrives;
    the notice that it was lost does)."""
    channel = f"trades.{symbol}"

    def between_page_and_server(ws):
        server = ws.connect_to_server()

        def from_server(message):
            frame = json.loads(message)
            if frame.get("channel") == channel and frame.get("type") == "trades" and lose:
                lose.pop()
                message = json.dumps(
                    {"type": "resync", "reason": "feed_gap", "lost_channels": [channel]}
                )
            ws.send(message)

        server.on_message(from_server)

    return between_page_and_server


def test_a_trade_lost_upstream_is_read_again_and_the_ladder_stays_live(
    open_page, exchange_stack, live_db
):
    # The server's "feed_gap" notice (trade or order frames lost between the matching worker
    # and the server) was taken for a slow-consumer resync: the ladder waited for a snapshot
    # that does not come (the book checks its own seq) and stopped moving.
    instrument, user = make_instrument(), trader()
    seller, buyer = ApiClient(exchange_stack), ApiClient(exchange_stack)
    page = open_page()
    page.route_web_socket("**/ws/v1", trade_frames_lost(instrument.symbol, lose=[True]))
    open_trading(page, user, instrument.symbol)
    sell = {"symbol": instrument.symbol, "side": "sell", "order_type": "limit", "quantity": "1"}
    assert seller.place(**sell, price="107.00").status_code == 201
    expect(ladder_row(page, "ask", "107.00")).to_be_visible()
    buy = {**sell, "side": "buy", "price": "107.00"}
    assert buyer.place(**buy).json()["status"] == "filled"
    trade = page.locator("#tape tbody tr").first
    expect(trade).to_contain_text("107.00")  # read again from GET /trades
    expect(ladder_row(page, "ask", "107.00")).to_have_count(0)

    assert seller.place(**sell, price="108.00").status_code == 201
    expect(ladder_row(page, "ask", "108.00")).to_be_visible()  # the updates still apply
    assert page.locator("#ladder").get_attribute("data-resyncs") == "0"


def test_a_trade_read_again_goes_to_the_top_of_the_tape(open_page, exchange_stack, live_db):
    # Trades read again over REST (after a lost frame or a reconnect) were appended below the
    # rows shown, though newer than all of them: the latest trade showed at the bottom of the
    # tape (and under a full tape was trimmed away at once).
    instrument, user = make_instrument(), trader()
    seller, buyer = ApiClient(exchange_stack), ApiClient(exchange_stack)
    lose = []
    page = open_page()
    page.route_web_socket("**/ws/v1", trade_frames_lost(instrument.symbol, lose=lose))
    open_trading(page, user, instrument.symbol)
    sell = {"symbol": instrument.symbol, "side": "sell", "order_type": "limit", "quantity": "1"}
    for price in ("105.00", "106.00"):
        assert seller.place(**sell, price=price).status_code == 201
        assert buyer.place(**{**sell, "side": "buy", "price": price}).json()["status"] == "filled"
        expect(page.locator("#tape tbody tr").first).to_contain_text(price)  # live
    lose.append(True)
    assert seller.place(**sell, price="107.00").status_code == 201
    assert buyer.place(**{**sell, "side": "buy", "price": "107.00"}).json()["status"] == "filled"
    rows = page.locator("#tape tbody tr")
    expect(rows).to_have_count(3)  # the lost trade, read again
    expect(rows.nth(0)).to_contain_text("107.00")
    expect(rows.nth(1)).to_contain_text("106.00")
    expect(rows.nth(2)).to_contain_text("105.00")


def test_after_the_socket_reconnects_the_page_reads_what_it_missed(
    open_page, exchange_stack, live_db
):
    # Frames sent while the socket was away are gone (docs/websocket.md: read orders, fills and
    # balances again): an order filled meanwhile stayed in the open orders, and its fill, its
    # trade, its candle and the balance it paid stayed unseen.
    instrument, user = make_instrument(), trader()
    buyer = ApiClient(exchange_stack)
    links: list[dict] = []

    def between_page_and_server(ws):
        server = ws.connect_to_server()
        link = {"page": ws, "server": server, "away": False}
        links.append(link)
        server.on_message(lambda message: None if link["away"] else ws.send(message))

    page = open_page()
    page.route_web_socket("**/ws/v1", between_page_and_server)
    open_trading(page, user, instrument.symbol)
    place_limit(page, "sell", "107.00", "2")
    expect(open_order_row(page, "107.00")).to_be_visible()
    usd = page.locator(f'#ticket-balances [data-asset="{QUOTE}"]')
    expect(usd).to_have_text("10000000.00")

    link = links[-1]
    link["away"] = True  # nothing more reaches the page on this socket...
    filled = buyer.place(
        symbol=instrument.symbol, side="buy", order_type="limit", price="107.00", quantity="2"
    )
    assert filled.json()["status"] == "filled", filled.text
    link["page"].close(code=1012, reason="restart")  # ...and then it drops, as in a restart
    link["server"].close()

    expect(page.locator("#open-orders tbody")).to_contain_text("No open orders.")
    expect(page.locator("#fills tbody tr[data-trade-id]")).to_have_count(1)
    expect(page.locator("#tape tbody tr").first).to_contain_text("107.00")
    expect(page.locator("#chart-summary")).to_contain_text("latest open 107.00, high 107.00")
    rest = ApiClient(exchange_stack, user).get("/api/v1/balances").json()
    paid = next(b for b in rest if b["asset"] == QUOTE)["available"]
    assert paid != "10000000.00"
    expect(usd).to_have_text(paid)
    assert len(links) == 2


def trade_between_two_others(base_url: str, symbol: str, price: str, quantity: str) -> None:
    order = {"symbol": symbol, "order_type": "limit", "price": price, "quantity": quantity}
    assert ApiClient(base_url).place(**order, side="sell").status_code == 201
    taken = ApiClient(base_url).place(**order, side="buy")
    assert taken.json()["status"] == "filled", taken.text


def test_a_trade_arriving_while_the_candles_reload_is_counted_once(
    open_page, exchange_stack, live_db
):
    # The candles' answer did not say which trades it counted: a live trade that arrived while
    # the chart reloaded was folded into the old candles, then the answer (read before the
    # trade) replaced them, and the trade was gone from the chart until the next reload.
    instrument, user = make_instrument(), trader()
    trade_between_two_others(exchange_stack, instrument.symbol, "100.00", "1")
    page = open_page()
    open_trading(page, user, instrument.symbol)
    summary = page.locator("#chart-summary")
    expect(summary).to_contain_text("close 100.00, volume 1.")

    answers: list = []  # the reload's answer, read from the server, held back from the page

    def hold_back(route):
        answers.append((route, route.fetch()))

    page.route("**/api/v1/candles/**", hold_back)
    page.locator('#chart-intervals button[data-interval="1m"]').click()
    deadline = time.monotonic() + 10
    while not answers and time.monotonic() < deadline:
        page.wait_for_timeout(20)
    assert answers, "the chart did not reload"
    trade_between_two_others(exchange_stack, instrument.symbol, "102.00", "2")
    expect(page.locator("#tape tbody tr").first).to_contain_text("102.00")  # its frame is in
    route, answer = answers[0]
    assert answer.json()["last_trade_id"] is not None
    route.fulfill(response=answer)
    page.unroute("**/api/v1/candles/**")

    latest = (
        ApiClient(exchange_stack)
        .get(f"/api/v1/candles/{instrument.symbol}", interval="1m")
        .json()["candles"][-1]
    )
    assert latest["close"] == "102.00"
    expect(summary).to_contain_text(f"close 102.00, volume {latest['volume']}.")


def test_a_trade_whose_frame_comes_after_the_candles_that_count_it_is_not_counted_again(
    open_page, exchange_stack, live_db
):
    # The other side of the race: candles read after a trade, its frame arriving after them,
    # had the trade folded into the latest candle a second time.
    instrument, user = make_instrument(), trader()
    trade_between_two_others(exchange_stack, instrument.symbol, "100.00", "1")
    channel = f"trades.{instrument.symbol}"
    link: dict = {"hold": False, "held": []}

    def between_page_and_server(ws):
        server = ws.connect_to_server()
        link["page"] = ws

        def from_server(message):
            frame = json.loads(message)
            if link["hold"] and frame.get("channel") == channel and frame.get("type") == "trades":
                link["held"].append(message)
            else:
                ws.send(message)

        server.on_message(from_server)

    page = open_page()
    page.route_web_socket("**/ws/v1", between_page_and_server)
    open_trading(page, user, instrument.symbol)
    summary = page.locator("#chart-summary")
    expect(summary).to_contain_text("close 100.00, volume 1.")
    link["hold"] = True
    trade_between_two_others(exchange_stack, instrument.symbol, "102.00", "2")
    deadline = time.monotonic() + 10
    while not link["held"] and time.monotonic() < deadline:
        page.wait_for_timeout(20)
    assert link["held"], "no trades frame came"
    page.locator('#chart-intervals button[data-interval="1m"]').click()
    expect(summary).to_contain_text("close 102.00")  # the reloaded candles count the trade
    link["hold"] = False
    for message in link["held"]:
        link["page"].send(message)
    expect(page.locator("#tape tbody tr").first).to_contain_text("102.00")  # the frame is in

    latest = (
        ApiClient(exchange_stack)
        .get(f"/api/v1/candles/{instrument.symbol}", interval="1m")
        .json()["candles"][-1]
    )
    expect(summary).to_contain_text(f"close 102.00, volume {latest['volume']}.")


def test_the_charts_latest_candle_reads_at_the_instruments_precision(
    open_page, exchange_stack, live_db
):
    # The chart's description said its latest candle in JavaScript numbers: a price of a coin
    # below a millionth in exponent notation ("open 5e-7"), every price without the tick's
    # places ("close 101" for 101.00), and live trades' volumes summed in floating point
    # ("volume 0.30000000000000004"); its price axis had two decimal places whatever the tick.
    instrument = make_instrument(
        quote_asset="XBT",
        quote_precision=8,
        tick_size=Decimal("0.00000001"),
        lot_size=Decimal("0.1"),
        min_quantity=Decimal("0.1"),
        min_notional=Decimal("0"),
    )
    funds = {"XBT": Decimal("1000"), BASE: Decimal("1000")}

    def trade(price: str, quantity: str) -> None:
        order = {"symbol": instrument.symbol, "order_type": "limit", "price": price}
        seller = ApiClient(exchange_stack, make_user(funds=funds))
        assert seller.place(**order, side="sell", quantity=quantity).status_code == 201
        taken = ApiClient(exchange_stack, make_user(funds=funds))
        taken = taken.place(**order, side="buy", quantity=quantity)
        assert taken.json()["status"] == "filled", taken.text

    trade("0.00000050", "0.1")
    page = open_page()
    open_trading(page, trader(), instrument.symbol)
    summary = page.locator("#chart-summary")
    expect(summary).to_contain_text(
        "latest open 0.00000050, high 0.00000050, low 0.00000050, close 0.00000050, volume 0.1."
    )
    trade("0.00000051", "0.2")  # folded into the latest candle from its live frame
    expect(page.locator("#tape tbody tr").first).to_contain_text("0.00000051")
    expect(summary).to_contain_text(
        "latest open 0.00000050, high 0.00000051, low 0.00000050, close 0.00000051, volume 0.3."
    )
    expect(page.locator("#chart")).to_have_attribute("data-price-format", "0.00000001")


def test_a_balance_read_before_a_live_change_but_answered_after_it_does_not_overwrite_it(
    open_page, live_db
):
    # The ticket showed whichever came last: a GET /balances answer read before a deposit but
    # arriving after its live event put the older balance back until the next change.
    instrument, user = make_instrument(), trader()
    answers: list = []  # the page's balance reads, answered by the server, held back

    def hold_back(route):
        answers.append((route, route.fetch()))

    page = open_page()
    page.route("**/api/v1/balances", hold_back)
    open_trading(page, user, instrument.symbol)
    deadline = time.monotonic() + 10
    while not answers and time.monotonic() < deadline:
        page.wait_for_timeout(20)
    assert answers, "the page did not read its balances"
    read_before = len(answers)
    funds_deposit(user=user, asset=QUOTE, amount=Decimal("0.01"), memo="test")
    usd = page.locator(f'#ticket-balances [data-asset="{QUOTE}"]')
    expect(usd).to_have_text("10000000.01")  # the live event
    for route, answer in answers[:read_before]:
        usd_then = next(b for b in answer.json() if b["asset"] == QUOTE)
        assert usd_then["available"] == "10000000.00"
        route.fulfill(response=answer)
    expect(page.locator("#ticket-balances")).to_have_attribute("data-reads", str(read_before))
    expect(usd).to_have_text("10000000.01")
    # The reads held since, answered before the route goes: once it is gone, Playwright lets
    # those still held through itself, and answering one then failed ("Route is already
    # handled"), one run in five.
    for route, answer in answers[read_before:]:
        route.fulfill(response=answer)
    page.unroute("**/api/v1/balances")


def test_a_post_only_adjusting_order_says_the_price_it_rests_at(open_page, exchange_stack, live_db):
    # A sell typed at 99.00 against a bid at 100.00 rests one tick behind it, at 100.01: the
    # ticket said only "Order 7: new."
    instrument, user = make_instrument(), trader()
    buyer = ApiClient(exchange_stack)
    bid = {"symbol": instrument.symbol, "side": "buy", "order_type": "limit", "quantity": "1"}
    assert buyer.place(**bid, price="100.00").status_code == 201
    page = open_page()
    open_trading(page, user, instrument.symbol)
    expect(ladder_row(page, "bid", "100.00")).to_be_visible()
    ticket = page.locator("#ticket")
    ticket.get_by_label("Sell", exact=True).check()
    ticket.get_by_label(f"Limit price ({QUOTE})", exact=True).fill("99.00")
    ticket.get_by_label(f"Quantity ({BASE})", exact=True).fill("2")
    ticket.locator("summary").click()
    ticket.get_by_label("Post-only, adjusting: reprice one tick behind the best instead").check()
    ticket.locator("#ticket-submit").click()
    expect(page.locator("#ticket-result")).to_have_text(
        re.compile(r"Order \d+: new at 100\.01 \(repriced from 99\.00 to stay a maker\)\.")
    )
    expect(open_order_row(page, "100.01")).to_be_visible()


def test_a_post_only_order_that_would_cross_shows_the_servers_rejection(
    open_page, exchange_stack, live_db
):
    instrument, user = make_instrument(), trader()
    seller = ApiClient(exchange_stack)
    assert (
        seller.place(
            symbol=instrument.symbol, side="sell", order_type="limit", price="105.00", quantity="2"
        ).status_code
        == 201
    )
    page = open_page()
    open_trading(page, user, instrument.symbol)
    expect(ladder_row(page, "ask", "105.00")).to_be_visible()

    place_limit(page, "buy", "105.00", "1", post_only=True)
    message = page.locator('#ticket [data-error-for="__all__"]')
    expect(message).to_be_visible()
    expect(message).to_contain_text("would match")
    expect(page.locator("#open-orders tbody")).to_contain_text("No open orders.")

    # A field error goes next to its field: a price off the tick.
    page.locator("#ticket").get_by_label(f"Limit price ({QUOTE})", exact=True).fill("104.999")
    page.locator("#ticket-submit").click()
    expect(page.locator('#ticket [data-error-for="price"]')).to_contain_text("tick")
    expect(page.locator("#ticket-price")).to_have_attribute("aria-invalid", "true")


def code_for(secret_base32: str, *, at: float) -> str:
    """What an authenticator app shows at `at` for the base32 secret typed from the page."""
    key = base64.b32decode(secret_base32 + "=" * (-len(secret_base32) % 8))
    return totp_code(key.hex(), at=at)


def test_two_factor_enrolment_then_login_with_a_code_and_the_account_page(open_page, live_db):
    user = trader()
    page = open_page()
    log_in(page, user, "/account/")
    page.wait_for_url("**/account/")
    expect(page.locator("#account-two-factor")).to_contain_text("off")
    page.get_by_role("link", name="Turn on two-factor authentication").click()

    secret = page.locator("#totp-secret").inner_text().replace(" ", "")
    expect(page.locator("figure svg")).to_be_visible()  # the QR code
    now = time.time()
    page.get_by_label("code from your authenticator app").fill(code_for(secret, at=now))
    page.get_by_role("button", name="Confirm and turn on").click()
    expect(page.locator(".recovery-codes li")).to_have_count(10)

    page.get_by_role("button", name="Log out").click()
    log_in(page, user, "/account/")
    page.wait_for_url("**/2fa/verify/**")
    # The enrolment used this step's code; the next step's is within the tolerance.
    page.get_by_label("code from your authenticator app").fill(code_for(secret, at=now + 30))
    page.get_by_role("button", name="Verify").click()
    page.wait_for_url("**/account/")
    expect(page.locator("#account-two-factor")).to_contain_text("on")
    expect(page.locator("#balances tbody tr[data-asset='USD']")).to_contain_text("10000000")
    expect(page.locator("#fee-tier-name")).not_to_be_empty()
    screenshot(page, "account.png")


def test_account_page_deposit_withdraw_ledger_and_api_keys(open_page, live_db):
    make_instrument()  # the forms offer the listed instruments' assets (run alone: none)
    user = trader()
    page = open_page()
    log_in(page, user, "/account/")
    page.wait_for_url("**/account/")

    withdraw = page.locator("#withdraw-form")
    withdraw.get_by_label("Asset").select_option("USD")
    withdraw.get_by_label("Amount").fill("250.50")
    withdraw.get_by_role("button", name="Withdraw").click()
    expect(withdraw.locator("[data-result]")).to_contain_text("Withdrew 250.50 USD")
    expect(page.locator("#balances tbody tr[data-asset='USD'] td").first).to_have_text("9999749.50")
    expect(page.locator("#ledger tbody tr").first).to_contain_text("withdrawal")
    withdraw.get_by_label("Amount").fill("99999999")
    withdraw.get_by_role("button", name="Withdraw").click()
    expect(withdraw.locator('[data-error-for="amount"]')).to_be_visible()

    # Deposits are staff's to credit here (no demo self-credit): no form that ends in a 403.
    expect(page.locator("#deposit-form")).to_have_count(0)
    expect(page.locator("#deposit-note")).to_contain_text("credited by exchange staff")
    withdraw.get_by_label("Amount").fill("abc")
    withdraw.get_by_role("button", name="Withdraw").click()
    expect(withdraw.locator('[data-error-for="amount"]')).to_contain_text("decimal")

    keys = page.locator("#key-form")
    keys.get_by_label("Label").fill("my bot")
    keys.get_by_label("Trade (place, amend, cancel orders)").check()
    keys.get_by_label("IP allow-list").fill("203.0.113.0/24")
    keys.get_by_role("button", name="Create key").click()
    expect(page.locator("#key-created")).to_be_visible()
    secret = page.locator("#created-secret").inner_text()
    assert len(secret) >= 32
    row = page.locator("#api-keys tbody tr[data-key-id]")
    expect(row).to_have_count(1)
    expect(row).to_contain_text("read, trade")
    expect(row).to_contain_text("203.0.113.0/24")
    assert secret not in page.locator("#api-keys").inner_text()

    keys.get_by_label("Label").fill("bad ip")
    keys.get_by_label("IP allow-list").fill("not-an-ip")
    keys.get_by_role("button", name="Create key").click()
    expect(keys.locator('[data-error-for="ip_allowlist"]')).to_be_visible()
    keys.get_by_label("Label").fill("")
    keys.get_by_label("IP allow-list").fill("")
    keys.get_by_role("button", name="Create key").click()
    # At its input the message does not repeat the field's name (it read "label: This ...").
    expect(keys.locator('[data-error-for="label"]')).to_have_text("This field may not be blank.")

    page.once("dialog", lambda dialog: dialog.accept())
    row.get_by_role("button", name="Revoke key my bot").click()
    expect(row).to_contain_text("revoked")


def _changes_sent(page) -> tuple[list[str], list[str]]:
    """The POST/PATCH/DELETE requests the page sends, and those finished (answered or failed)."""
    sent: list[str] = []
    done: list[str] = []
    changes = ("POST", "PATCH", "DELETE")
    page.on("request", lambda r: r.method in changes and sent.append(f"{r.method} {r.url}"))
    for event in ("requestfinished", "requestfailed"):
        page.on(event, lambda r: r.method in changes and done.append(f"{r.method} {r.url}"))
    return sent, done


def _settled(page, sent: list[str], done: list[str]) -> None:
    """Wait until every change the page sent has finished (Playwright's sync API delivers its
    events only while it runs, so this waits in the page, not in a sleep)."""
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while len(done) < len(sent):
        assert time.monotonic() < deadline, f"unfinished: {sent} vs {done}"
        page.wait_for_timeout(50)


def test_a_double_click_sends_a_withdrawal_a_key_or_a_ledger_page_once(open_page, live_db):
    # Nothing kept the account page's buttons from sending again while a request was in flight:
    # a double click withdrew twice, made two API keys (the first one's secret never shown) and
    # appended the same page of older ledger entries twice.
    from accounts.models import APIKey, LedgerEntry

    make_instrument()
    user = trader()
    for _ in range(28):  # 30 entries with the two of make_user: a second page
        funds_deposit(user=user, asset="USD", amount=Decimal("1"), memo="test funds")
    page = open_page()
    sent, done = _changes_sent(page)
    log_in(page, user, "/account/")
    page.wait_for_url("**/account/")

    withdraw = page.locator("#withdraw-form")
    withdraw.get_by_label("Asset").select_option("USD")
    withdraw.get_by_label("Amount").fill("7")
    withdraw.get_by_role("button", name="Withdraw").dblclick()
    expect(withdraw.locator("[data-result]")).to_contain_text("Withdrew 7.00 USD")
    _settled(page, sent, done)
    assert LedgerEntry.objects.filter(user=user, kind="withdrawal").count() == 1, sent
    expect(page.locator("#balances tbody tr[data-asset='USD'] td").first).to_have_text(
        "10000021.00"
    )

    keys = page.locator("#key-form")
    keys.get_by_label("Label").fill("bot")
    keys.get_by_role("button", name="Create key").dblclick()
    expect(page.locator("#key-created")).to_be_visible()
    _settled(page, sent, done)
    assert APIKey.objects.filter(user=user).count() == 1
    expect(page.locator("#api-keys tbody tr[data-key-id]")).to_have_count(1)

    ledger = page.locator("#ledger tbody tr")
    expect(ledger).to_have_count(25)
    page.locator("#ledger-more").dblclick()
    expect(ledger).to_have_count(31)  # the 31 entries, each once
    page.wait_for_timeout(500)  # a second copy of the page would have arrived by now
    expect(ledger).to_have_count(31)


def test_a_double_click_on_save_sends_an_amend_once(open_page, live_db):
    from matching.models import Command

    instrument, user = make_instrument(), trader()
    page = open_page()
    sent, done = _changes_sent(page)
    open_trading(page, user, instrument.symbol)
    place_limit(page, "buy", "99.00", "4")
    row = open_order_row(page, "99.00")
    expect(row).to_be_visible()
    order_id = int(row.get_attribute("data-order-id"))
    row.get_by_role("button", name=f"Amend order {order_id}").click()
    page.get_by_label(f"New price (order {order_id})").fill("98.00")
    page.get_by_role("button", name="Save changes").dblclick()
    expect(page.locator("#orders-result")).to_contain_text(f"Order {order_id} amended: 98.00")
    _settled(page, sent, done)
    assert [r for r in sent if r.startswith("PATCH")] == [
        f"PATCH {page.url.split('/trade/')[0]}/api/v1/orders/{order_id}"
    ]
    amends = Command.objects.filter(kind="amend", payload__order_id=order_id)
    assert amends.count() == 1


def test_the_pages_fit_a_narrow_screen(open_page, live_db):
    instrument, user = make_instrument(), trader()
    page = open_page(width=390, height=844)
    open_trading(page, user, instrument.symbol)
    expect(page.locator("#ticket-submit")).to_be_visible()
    expect(page.locator("#ladder")).to_be_visible()
    for path in (f"/trade/{instrument.symbol}/", "/account/", "/"):
        page.goto(path)
        page.wait_for_load_state("networkidle")
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{path} is {overflow}px wider than a 390px screen"
        if path.startswith("/trade/"):
            screenshot(page, "trading-narrow.png")


def test_the_pages_local_book_checks_seq_and_checksum_as_the_reference_does(open_page, live_db):
    page = open_page()
    page.goto("/")
    bids = [["150.45", "10"], ["150.44", "3"], ["150.4", "7.5"]]
    asks = [["150.47", "5"]]
    outcome = page.evaluate(
        """async ([bids, asks]) => {
            const { LocalBook, bookChecksum } = await import("/static/js/book.js");
            const book = new LocalBook();
            const snapshot = book.applySnapshot({ seq: 7, bids, asks, checksum: null });
            const sum = bookChecksum(bids, asks);
            const gap = book.applyUpdate({ seq: 9, prev_seq: 8, bids: [], asks: [] });
            const fresh = new LocalBook();
            fresh.applySnapshot({ seq: 7, bids, asks });
            const bad = fresh.applyUpdate({ seq: 8, prev_seq: 7, bids: [["150.45", "0"]],
                                            asks: [], checksum: 1 });
            const good = new LocalBook();
            good.applySnapshot({ seq: 7, bids, asks });
            const after = [["150.44", "3"], ["150.4", "7.5"]];
            const ok = good.applyUpdate({ seq: 8, prev_seq: 7, bids: [["150.45", "0"]], asks: [],
                                          checksum: bookChecksum(after, asks) });
            const stale = good.applyUpdate({ seq: 8, prev_seq: 7, bids: [], asks: [] });
            return { snapshot, sum, gap, bad, ok, stale, top: good.sortedBids()[0][0] };
        }""",
        [bids, asks],
    )
    assert outcome == {
        "snapshot": "ok",
        "sum": book_checksum(bids, asks),
        "gap": "gap",
        "bad": "mismatch",
        "ok": "ok",
        "stale": "stale",
        "top": "150.44",
    }
    assert book_checksum([["150.45", "10"], ["150.44", "3"]], [["150.47", "5"]]) == 497610601

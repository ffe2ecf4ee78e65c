"""The web pages as the server renders them: who may see what, and what each page holds.
(The live behaviour in a real browser is in test_web_ui.py.)"""

import re
from decimal import Decimal

import pytest
from django.contrib.staticfiles import finders
from django.test import override_settings
from django.urls import reverse
from django_otp.plugins.otp_totp.models import TOTPDevice

from accounts.ledger import funds_deposit
from exchange.models import Instrument
from exchange.tests.api_client import make_closed_instrument, make_instrument, make_user

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery staple"


def signed_in(client, *, two_factor: bool = False, verified: bool = True):
    user = make_user("web")
    user.set_password(PASSWORD)
    user.save()
    if two_factor:
        TOTPDevice.objects.create(user=user, name="app", confirmed=True)
    response = client.post(
        reverse("accounts:login"), {"email": user.email, "password": PASSWORD}, follow=False
    )
    assert response.status_code == 302
    if two_factor and verified:
        session = client.session
        device = TOTPDevice.objects.get(user=user)
        session["otp_device_id"] = device.persistent_id
        session.save()
    return user


def test_markets_lists_every_listed_instrument_with_a_link_to_trade_it(client):
    listed = make_instrument()
    delisted = make_instrument(status=Instrument.Status.DELISTED)
    page = client.get("/").content.decode()
    assert f'href="/trade/{listed.symbol}/"' in page
    assert delisted.symbol not in page
    assert 'src="/static/js/markets.js"' in page


def test_an_unknown_or_delisted_market_is_a_page_of_the_site_that_leads_to_the_markets(client):
    # It was Django's bare "Not Found" page: no navigation, no way back to the markets.
    delisted = make_instrument(status=Instrument.Status.DELISTED)
    for path in (f"/trade/{delisted.symbol}/", "/trade/NOSUCH/", "/no-such-page/"):
        answer = client.get(path)
        assert answer.status_code == 404, path
        page = answer.content.decode()
        assert '<a href="/">See the markets</a>' in page, path
        assert 'href="/static/css/app.css"' in page and 'href="/accounts/login/"' in page


def test_markets_and_trading_pages_say_the_status_the_ticker_says(client):
    # Both said "Trading" for an instrument closed for the night (every order refused
    # MarketClosed), and the markets page kept the status it was first rendered with.
    closed = make_closed_instrument()
    halted = make_instrument(status=Instrument.Status.HALTED, status_reason="Pending news")
    markets = client.get("/").content.decode()
    for instrument, status in (
        (closed, "Closed (outside trading hours)"),
        (halted, "Halted: Pending news"),
    ):
        row = re.search(rf'<tr data-symbol="{instrument.symbol}">.*?</tr>', markets, re.S).group()
        assert f'<td data-field="status">{status}</td>' in row
        trading_page = client.get(f"/trade/{instrument.symbol}/").content.decode()
        assert f'<dd id="stat-status">{status}</dd>' in trading_page


def test_trading_page_is_public_with_a_login_link_instead_of_the_order_form(client):
    instrument = make_instrument()
    page = client.get(f"/trade/{instrument.symbol}/").content.decode()
    assert 'id="ladder"' in page and 'id="tape"' in page and 'id="chart"' in page
    assert 'id="ticket"' not in page
    assert f"/accounts/login/?next=/trade/{instrument.symbol}/" in page
    # The chart library is served from the npm package, not from the repository.
    module = "/static/vendor/lightweight-charts/lightweight-charts.standalone.production.mjs"
    assert f'data-chart-module="{module}"' in page
    found = finders.find(module.removeprefix("/static/"))
    assert found is not None and "node_modules" in str(found)


def test_trading_page_of_an_unknown_or_delisted_symbol_is_404(client):
    assert client.get("/trade/NOPE/").status_code == 404
    delisted = make_instrument(status=Instrument.Status.DELISTED)
    assert client.get(f"/trade/{delisted.symbol}/").status_code == 404


def test_signed_in_trader_gets_the_order_form_with_every_order_type_and_option(client):
    instrument = make_instrument()
    user = signed_in(client)
    page = client.get(f"/trade/{instrument.symbol}/").content.decode()
    assert 'id="ticket"' in page
    assert f'data-user-id="{user.pk}"' in page
    for value in ("limit", "market", "stop_loss", "stop_limit"):
        assert f'<option value="{value}">' in page
    for value in ("GTC", "IOC", "FOK", "GTD", "DAY"):
        assert f'<option value="{value}">' in page
    for stp in ("cancel_resting", "cancel_incoming", "cancel_both", "decrement_both", "none"):
        assert f'<option value="{stp}">' in page
    for name in (
        "quote_quantity",
        "stop_price",
        "limit_price",
        "expire_at",
        "post_only",
        "post_only_adjust",
        "display_quantity",
    ):
        assert f'name="{name}"' in page
    assert 'id="open-orders"' in page and 'id="fills"' in page


def test_half_signed_in_user_sees_no_order_form_and_cannot_open_the_account(client):
    instrument = make_instrument()
    signed_in(client, two_factor=True, verified=False)
    page = client.get(f"/trade/{instrument.symbol}/").content.decode()
    assert 'id="ticket"' not in page
    assert "Finish signing in" in page
    response = client.get(reverse("account"))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("accounts:two_factor_verify"))


def test_account_needs_a_login(client):
    response = client.get(reverse("account"))
    assert response.status_code == 302
    assert response["Location"] == f"{reverse('accounts:login')}?next=%2Faccount%2F"


def test_the_account_page_withdraws_an_asset_held_only_through_a_delisted_instrument(client):
    # The withdraw form listed the assets of listed instruments only: funds in the asset of a
    # delisted one (which the API still withdraws) could not be chosen.
    delisted = make_instrument(base_asset="DLX9", status=Instrument.Status.DELISTED)
    user = signed_in(client)
    funds_deposit(user=user, asset="DLX9", amount=Decimal("5"), memo="test funds")
    page = client.get(reverse("account")).content.decode()
    withdraw = re.search(r'<select id="withdraw-asset".*?</select>', page, re.S).group()
    assert f'<option value="{delisted.base_asset}">' in withdraw
    assert f'<option value="{delisted.quote_asset}">' in withdraw
    withdrawn = client.post(
        f"/api/v1/users/{user.pk}/withdraw",
        {"asset": "DLX9", "amount": "5"},
        content_type="application/json",
    )
    assert withdrawn.status_code == 201, withdrawn.content


def test_account_page_holds_every_section_and_links_to_two_factor(client):
    signed_in(client)
    page = client.get(reverse("account")).content.decode()
    for element in ('id="balances"', 'id="ledger"', 'id="fee-tier"', 'id="api-keys"'):
        assert element in page
    assert 'id="withdraw-form"' in page
    # No deposit form where deposits are staff's to credit (it only led to a 403).
    assert 'id="deposit-form"' not in page and "credited by exchange staff" in page
    assert f'href="{reverse("accounts:enrol")}"' in page
    assert 'src="/static/js/account.js"' in page
    with override_settings(DEMO_SELF_CREDIT_LIMIT="100"):  # a demo: users credit themselves
        assert 'id="deposit-form"' in client.get(reverse("account")).content.decode()


def test_account_page_of_a_user_with_two_factor_links_to_its_settings(client):
    signed_in(client, two_factor=True)
    page = client.get(reverse("account")).content.decode()
    assert "Two-factor authentication is <strong>on</strong>" in page
    assert f'href="{reverse("accounts:two_factor")}"' in page


def test_the_traders_pages_carry_a_content_security_policy(client):
    # No page had one: an injected script or inline handler would have run, with the session.
    instrument = make_instrument()
    pages = [reverse("home"), reverse("trade", args=[instrument.symbol]), reverse("accounts:login")]
    signed_in(client)
    pages += [reverse("account"), reverse("accounts:two_factor")]
    for page in pages:
        response = client.get(page)
        assert response.status_code == 200, page
        policy = dict(
            directive.strip().split(" ", 1)
            for directive in response["Content-Security-Policy"].split(";")
        )
        assert policy["script-src"] == policy["connect-src"] == "'self'"
        assert policy["style-src"].split()[0] == "'self'" and "unsafe" not in policy["style-src"]
        assert policy["object-src"] == policy["frame-ancestors"] == "'none'", page
    # JSON has no use for one; the admin's and Swagger UI's pages hold inline scripts.
    for other in ["/api/v1/symbols", reverse("admin:login"), "/api/docs/"]:
        assert "Content-Security-Policy" not in client.get(other), other

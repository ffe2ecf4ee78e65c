"""The traders' web pages: markets, a trading page per symbol, the account page.

Server-rendered shells (templates/trading/); the live parts are small ES modules in static/js/
that read and write through the REST API with the session cookie and follow the WebSocket.
"""

from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.cache import never_cache

from accounts import two_factor
from accounts.funds import may_deposit
from accounts.selectors import asset_precisions
from accounts.views import full_login_required
from exchange import selectors
from exchange.models import Instrument, Order, StpMode
from exchange.serializers import money_str, price_str, quantity_str

# The ticker's status in words (static/js/api.js marketStatusText says them the same way).
MARKET_STATUS_LABELS = {
    "trading": "Trading",
    "halted": "Halted",
    "delisted": "Delisted",
    "closed": "Closed (outside trading hours)",
}


def _market_row(instrument: Instrument) -> dict:
    stats = selectors.trading_24h(instrument=instrument)
    label = MARKET_STATUS_LABELS.get(stats["status"], stats["status"])
    return {
        "instrument": instrument,
        # As the ticker says it: closed outside the trading hours, staff's reason for a halt
        # (the page had said "Trading" for an instrument closed for the night).
        "status": f"{label}: {stats['status_reason']}" if stats["status_reason"] else label,
        "last_price": price_str(instrument, stats["last_price"]),
        "change_pct": stats["change_pct_24h"],
        "high": price_str(instrument, stats["high_24h"]),
        "low": price_str(instrument, stats["low_24h"]),
        "volume": quantity_str(instrument, stats["volume_24h"]),
        "quote_volume": money_str(instrument, stats["quote_volume_24h"]),
    }


def markets(request: HttpRequest) -> HttpResponse:
    """Every listed instrument with its last price and 24 h figures; a link to trade it."""
    rows = [_market_row(instrument) for instrument in selectors.instruments_listed()]
    return render(request, "trading/markets.html", {"rows": rows})


def _signed_in_fully(request: HttpRequest) -> bool:
    user = request.user
    return user.is_authenticated and not two_factor.two_factor_pending(user)


def trade(request: HttpRequest, symbol: str) -> HttpResponse:
    """The trading page: public market data for everyone; the order ticket, open orders and
    fills once signed in (both steps)."""
    instrument = Instrument.objects.filter(symbol=symbol).first()
    if instrument is None or instrument.status == Instrument.Status.DELISTED:
        raise Http404(f"no instrument {symbol}")
    context = {
        "instrument": instrument,
        "market": _market_row(instrument),
        "can_trade": _signed_in_fully(request),
        "order_types": Order.Type.choices,
        "times_in_force": Order.TimeInForce.choices,
        "stp_modes": StpMode.choices,
        "tick_size": format(instrument.tick_size.normalize(), "f"),
        "lot_size": format(instrument.lot_size.normalize(), "f"),
        "min_quantity": format(instrument.min_quantity.normalize(), "f"),
        "min_notional": format(instrument.min_notional.normalize(), "f"),
    }
    return render(request, "trading/trade.html", context)


@never_cache
@full_login_required
def account(request: HttpRequest) -> HttpResponse:
    """Balances, ledger, deposits and withdrawals, fee tier, API keys and 2FA of the user."""
    user = request.user
    enabled = two_factor.two_factor_enabled(user)
    instruments = list(selectors.instruments_listed())
    context = {
        "two_factor_enabled": enabled,
        "recovery_codes_left": two_factor.recovery_codes_left(user) if enabled else 0,
        "assets": sorted({asset for i in instruments for asset in (i.base_asset, i.quote_asset)}),
        # Every asset a balance can be in, as the API takes them: one held only through a
        # delisted instrument could not be chosen here, its funds stuck on the account.
        "withdraw_assets": sorted(asset_precisions()),
        # Without the right to credit one, the form only led to "credited by exchange staff".
        "may_deposit": may_deposit(actor=user),
    }
    return render(request, "trading/account.html", context)


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    """A form refused for its CSRF token (settings.CSRF_FAILURE_VIEW): the site's page saying
    what happened and what to do. Django's own was a bare page, its style refused by the
    Content-Security-Policy; the usual cause is a page shown before signing in or out in
    another tab (signing in gives a new token), e.g. the login form or Log out of an old tab."""
    back = request.META.get("HTTP_REFERER", "")
    if not url_has_allowed_host_and_scheme(
        back, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        back = request.path
    return render(request, "csrf_failure.html", {"back": back}, status=403)

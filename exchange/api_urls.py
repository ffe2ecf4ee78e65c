"""Routes of the trading API under /api/v1/."""

from django.urls import include, path

from accounts import api_key_views, ledger_views
from exchange import api_views as v

urlpatterns = [
    path("orders", v.OrdersView.as_view(), name="orders"),
    path("orders/<int:key>", v.OrderDetailView.as_view(), name="order-detail"),
    path("orders/client/<str:key>", v.OrderByClientIdView.as_view(), name="order-by-client-id"),
    path("fills", v.FillsView.as_view(), name="fills"),
    path("time", v.TimeView.as_view(), name="time"),
    path("symbols", v.SymbolsView.as_view(), name="symbols"),
    path("orderbook/<str:symbol>", v.OrderBookView.as_view(), name="orderbook"),
    path("orderbook/<str:symbol>/spread", v.SpreadView.as_view(), name="orderbook-spread"),
    path("trades/<str:symbol>", v.TradesView.as_view(), name="trades"),
    path("ticker/<str:symbol>", v.TickerView.as_view(), name="ticker"),
    path("candles/<str:symbol>", v.CandlesView.as_view(), name="candles"),
    path("metrics/exchange", v.ExchangeMetricsView.as_view(), name="metrics-exchange"),
    path("api-keys", api_key_views.ApiKeysView.as_view(), name="api-keys"),
    path("api-keys/<int:api_key_id>", api_key_views.ApiKeyDetailView.as_view(), name="api-key"),
    path("users/", include("accounts.fee_tier_urls")),
    path("me", ledger_views.MeView.as_view(), name="me"),
    path("balances", ledger_views.BalancesView.as_view(), name="balances"),
    path("ledger", ledger_views.LedgerView.as_view(), name="ledger"),
    path("users/<int:user_id>/deposit", ledger_views.DepositView.as_view(), name="deposit"),
    path("users/<int:user_id>/withdraw", ledger_views.WithdrawView.as_view(), name="withdraw"),
]

"""Audit query API, mounted by exchange/urls.py under /api/v1/audit/."""

from django.urls import path

from audit import views

app_name = "audit"

urlpatterns = [
    path("orders/<int:order_id>/history", views.OrderHistoryView.as_view(), name="order-history"),
    path("users/<int:user_id>/activity", views.UserActivityView.as_view(), name="user-activity"),
    path("trades/<int:trade_id>", views.TradeRecordsView.as_view(), name="trade-records"),
]

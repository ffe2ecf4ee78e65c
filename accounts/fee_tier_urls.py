"""Routes of fee tiers and volume under /api/v1/users/."""

from django.urls import path

from accounts import fee_tier_views as v

urlpatterns = [
    path("<int:user_id>/fee-tier", v.FeeTierView.as_view(), name="user-fee-tier"),
    path("<int:user_id>/volume-stats", v.VolumeStatsView.as_view(), name="user-volume-stats"),
]

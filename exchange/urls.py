from django.contrib import admin
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from exchange import views, web_views
from exchange.view_threads import pooled_patterns

# The API's views run on the view thread pool (exchange/view_threads.py).
api_urlpatterns = pooled_patterns(
    [
        path("api/v1/audit/", include("audit.urls")),
        path("api/v1/", include("exchange.api_urls")),
        path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
        path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
        # Last: every other /api/ path gets the API's JSON 404, not Django's HTML page (except
        # /api/docs and /api/schema, which APPEND_SLASH still redirects to their pages).
        re_path(
            r"^api/(?!docs$|schema$)",
            views.ApiPathNotFoundView.as_view(),
            name="api-path-not-found",
        ),
    ]
)

# Django's 400 (e.g. a Host header not in ALLOWED_HOSTS): JSON under /api/.
handler400 = views.bad_request

urlpatterns = [
    path("", web_views.markets, name="home"),
    path("trade/<str:symbol>/", web_views.trade, name="trade"),
    path("account/", web_views.account, name="account"),
    path("healthz", views.HealthView.as_view(), name="healthz"),
    path("admin/", admin.site.urls),
    path("accounts/", include("accounts.urls")),
    *api_urlpatterns,
]

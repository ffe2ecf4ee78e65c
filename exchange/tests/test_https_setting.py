"""HTTPS=true, against the real web process behind a stand-in for its TLS proxy (the proxy's
X-Forwarded-Proto header): secure cookies, HSTS, plain HTTP redirected, /healthz exempt."""

import httpx
import pytest

from conftest import start_web

pytestmark = [pytest.mark.processes, pytest.mark.django_db(transaction=True)]

THROUGH_TLS = {"X-Forwarded-Proto": "https"}


def test_https_sends_cookies_over_tls_only_and_redirects_plain_http(processes, process_env):
    # There was no such setting: behind TLS the session and CSRF cookies still went out
    # without Secure (sent again over any plain-HTTP link) and browsers got no HSTS.
    base_url = start_web(processes, env={**process_env, "HTTPS": "true"})
    with httpx.Client(base_url=base_url, timeout=10) as client:
        page = client.get("/accounts/login/", headers=THROUGH_TLS)
        assert page.status_code == 200
        csrf_cookie = page.headers["set-cookie"]
        assert csrf_cookie.startswith("csrftoken=") and "; Secure" in csrf_cookie
        assert page.headers["strict-transport-security"] == "max-age=31536000"
        plain = client.get("/api/v1/time")
        assert plain.status_code == 301
        assert plain.headers["location"].startswith("https://") and plain.headers[
            "location"
        ].endswith("/api/v1/time")
        assert client.get("/api/v1/time", headers=THROUGH_TLS).status_code == 200
        assert client.get("/healthz").status_code in (200, 503)  # probes from inside: no redirect

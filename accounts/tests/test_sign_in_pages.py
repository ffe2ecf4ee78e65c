"""Sign-up, login, logout and the 2FA pages through Django's test client, with their audit
records; each client has its own IP so that the per-IP throttle of one test never leaks into
another."""

import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client
from django_otp.plugins.otp_static.models import StaticToken
from django_otp.plugins.otp_totp.models import TOTPDevice

from accounts.tests.otp_login import (
    PASSWORD,
    current_code,
    give_totp_device,
    make_person,
    verified_client,
)
from accounts.two_factor import ENROL_KEY_SESSION, totp_code
from audit.events import AuditChannel, AuditEvent
from audit.models import AuditRecord

pytestmark = pytest.mark.django_db


def browser() -> Client:
    part = uuid.uuid4().int
    return Client(REMOTE_ADDR=f"198.18.{part % 250}.{part // 250 % 250}")


def events_of(user) -> list[str]:
    return list(
        AuditRecord.objects.filter(user_id=user.pk)
        .order_by("seq")
        .values_list("event_type", flat=True)
    )


def log_in(client: Client, user, password: str = PASSWORD, next_url: str = "/"):
    return client.post(
        "/accounts/login/", {"email": user.email, "password": password, "next": next_url}
    )


def test_pages_label_every_input_and_carry_no_inline_script():
    client = browser()
    for path in ("/accounts/login/", "/accounts/signup/"):
        page = client.get(path).content.decode()
        assert "<script" not in page
        for input_id in re.findall(
            r'<input[^>]*type="(?:email|password|text)"[^>]*id="([^"]+)"', page
        ):
            assert f'for="{input_id}"' in page, f"{path}: input {input_id} has no label"
        assert 'name="viewport"' in page
    assert 'href="/accounts/login/"' in client.get("/").content.decode()


def test_sign_up_creates_an_ordinary_signed_in_user_and_audits_it():
    client = browser()
    address = f"New.Trader.{uuid.uuid4().hex[:6]}@Example.test"
    response = client.post(
        "/accounts/signup/",
        {
            "email": address,
            "password1": "a-Long-passphrase-42",
            "password2": "a-Long-passphrase-42",
        },
    )
    assert response.status_code == 302 and response["Location"] == "/accounts/2fa/"
    user = get_user_model().objects.get(email=address.lower())
    assert not user.is_staff and not user.is_superuser
    assert user.username == address.split("@")[0].lower()
    assert events_of(user) == [AuditEvent.USER_SIGNED_UP, AuditEvent.LOGIN]
    signed_up = AuditRecord.objects.get(event_type=AuditEvent.USER_SIGNED_UP, user_id=user.pk)
    assert signed_up.channel == AuditChannel.WEB and signed_up.ip.startswith("198.18.")
    assert "a-Long-passphrase-42" not in str(signed_up.payload)
    page = client.get("/accounts/2fa/").content.decode()
    assert "is <strong>off</strong>" in page


def test_sign_up_refuses_a_taken_email_and_a_weak_or_mismatched_password():
    existing = make_person()
    client = browser()
    taken = client.post(
        "/accounts/signup/",
        {
            "email": existing.email.upper(),
            "password1": "a-Long-pass-42",
            "password2": "a-Long-pass-42",
        },
    )
    assert b"already exists" in taken.content
    weak = client.post(
        "/accounts/signup/",
        {
            "email": f"w{uuid.uuid4().hex[:6]}@example.test",
            "password1": "12345678",
            "password2": "12345678",
        },
    )
    assert b"too common" in weak.content or b"entirely numeric" in weak.content
    differ = client.post(
        "/accounts/signup/",
        {
            "email": f"d{uuid.uuid4().hex[:6]}@example.test",
            "password1": "a-Long-pass-42",
            "password2": "a-Long-pass-43",
        },
    )
    assert b"The two passwords differ" in differ.content
    assert get_user_model().objects.filter(email__iexact=existing.email).count() == 1


def test_probing_which_emails_have_accounts_through_sign_up_is_throttled_per_address(settings):
    # "An account with this email already exists" answered every probe, unthrottled.
    settings.LOGIN_THROTTLE_IP_FAILURES = 3
    owner, prober = make_person(), browser()

    def sign_up(client: Client, email: str):
        return client.post(
            "/accounts/signup/",
            {"email": email, "password1": "a-long-password-42", "password2": "a-long-password-42"},
        )

    for _ in range(3):
        probe = sign_up(prober, owner.email)
        assert probe.status_code == 200 and b"already exists" in probe.content
    refused = sign_up(prober, owner.email)
    assert refused.status_code == 429 and b"already exists" not in refused.content
    assert int(refused["Retry-After"]) > 0
    # The owner is not locked out, and a new address from elsewhere signs up.
    assert log_in(browser(), owner).status_code == 302
    assert sign_up(browser(), f"new-{uuid.uuid4().hex[:8]}@example.com").status_code == 302
    # An account created takes its attempt back: three more from one address all pass.
    newcomer = browser()
    for _ in range(4):
        created = sign_up(newcomer, f"new-{uuid.uuid4().hex[:8]}@example.com")
        assert created.status_code == 302
        newcomer.logout()


def test_login_by_email_and_logout_are_audited_and_a_wrong_password_is_not_signed_in():
    user = make_person()
    client = browser()
    wrong = log_in(client, user, password="not-the-password")
    assert wrong.status_code == 200 and b"email or password is not right" in wrong.content
    assert "_auth_user_id" not in client.session
    failed = AuditRecord.objects.get(event_type=AuditEvent.LOGIN_FAILED, user_id=user.pk)
    assert "not-the-password" not in str(failed.payload)
    response = log_in(client, user, next_url="/api/docs/")
    assert response.status_code == 302 and response["Location"] == "/api/docs/"
    assert client.get("/api/v1/orders").status_code == 200
    assert client.get("/accounts/logout/").status_code == 405  # logout is a POST
    assert client.post("/accounts/logout/").status_code == 302
    assert events_of(user) == [AuditEvent.LOGIN_FAILED, AuditEvent.LOGIN, AuditEvent.LOGOUT]


def test_the_logout_and_2fa_form_addresses_opened_in_the_browser_are_not_blank_pages():
    # Each answered 405 with an empty body: a blank page for /accounts/logout/ typed or
    # bookmarked, and for the recovery codes page reloaded (or 2FA turned off) from history.
    user = make_person()
    client = verified_client(user, browser())
    page = client.get("/accounts/logout/")
    assert page.status_code == 405 and page["Allow"] == "POST"  # logout is still a POST
    html = page.content.decode()
    assert f"You are signed in as {user.email}." in html
    assert re.search(r'<form method="post" action="/accounts/logout/">', html)
    assert 'name="csrfmiddlewaretoken"' in html and "Log out of this browser" in html
    assert client.get("/api/v1/orders").status_code == 200  # still signed in
    for path in ("/accounts/2fa/recovery-codes/", "/accounts/2fa/disable/"):
        answer = client.get(path)
        assert (answer.status_code, answer["Location"]) == (302, "/accounts/2fa/"), path
    assert TOTPDevice.objects.filter(user=user).exists()
    assert client.post("/accounts/logout/").status_code == 302
    signed_out = client.get("/accounts/logout/")
    assert signed_out.status_code == 405 and b"You are signed out." in signed_out.content


def test_an_unsafe_next_is_replaced_by_the_home_page():
    user = make_person()
    response = log_in(browser(), user, next_url="https://evil.example/steal")
    assert response["Location"] == "/"


def test_login_is_throttled_after_five_failures_with_429_even_for_the_right_password():
    user = make_person()
    client = browser()
    for _ in range(5):
        assert log_in(client, user, password="wrong-password-1").status_code == 200
    refused = log_in(client, user)
    assert refused.status_code == 429
    assert b"Too many failed sign-in attempts" in refused.content
    assert int(refused["Retry-After"]) > 0
    assert "_auth_user_id" not in client.session
    throttled = AuditRecord.objects.get(event_type=AuditEvent.LOGIN_THROTTLED, user_id=user.pk)
    assert throttled.payload["by"] == "account" and throttled.payload["stage"] == "password"
    # Another client address is throttled too: the account is.
    assert log_in(browser(), user).status_code == 429


def test_a_look_alike_spelling_of_the_email_counts_against_the_same_account():
    # PostgreSQL's case-insensitive match finds the account with a long s (U+017F) or a dotless
    # i (U+0131) in place of s or i (their upper case is S and I); the throttle had counted each
    # spelling apart, so every s or i of an address doubled the passwords one could try on it.
    user = make_person()
    look_alike = user.email.replace("test", "te\u017ft")
    assert look_alike != user.email
    for _ in range(5):
        wrong = browser().post(
            "/accounts/login/", {"email": user.email, "password": "wrong-password-1"}
        )
        assert wrong.status_code == 200
    client = browser()
    refused = client.post("/accounts/login/", {"email": look_alike, "password": PASSWORD})
    assert refused.status_code == 429
    assert "_auth_user_id" not in client.session
    throttled = AuditRecord.objects.get(event_type=AuditEvent.LOGIN_THROTTLED, user_id=user.pk)
    assert throttled.payload["by"] == "account"


@pytest.mark.django_db(transaction=True)
def test_parallel_wrong_passwords_are_checked_no_more_than_the_limit_allows():
    # Each attempt read the throttle, checked its password, then counted its failure: a burst
    # sent at once had 28 of 40 passwords checked, and the right one, last, signed in.
    user = make_person()
    address = browser().defaults["REMOTE_ADDR"]

    def attempt(password: str) -> int:
        try:
            return log_in(Client(REMOTE_ADDR=address), user, password=password).status_code
        finally:
            connection.close()  # the thread's own

    with ThreadPoolExecutor(max_workers=12) as pool:
        codes = list(pool.map(attempt, [f"wrong-{n}" for n in range(12)]))
    assert sorted(set(codes)) == [200, 429] and codes.count(200) <= 5, codes
    failed = AuditRecord.objects.filter(event_type=AuditEvent.LOGIN_FAILED, user_id=user.pk)
    assert failed.count() == codes.count(200) <= 5
    assert log_in(browser(), user).status_code == 429


def test_enrolment_shows_a_qr_code_confirms_with_a_code_and_shows_recovery_codes_once():
    user = make_person()
    client = browser()
    log_in(client, user)
    page = client.get("/accounts/2fa/enrol/").content.decode()
    assert "<svg" in page and 'role="img"' in page and "<script" not in page
    secret = re.search(r'<code id="totp-secret">([A-Z2-7]+)</code>', page).group(1)
    assert client.get("/accounts/2fa/enrol/").content.decode().count(secret) == 1  # stable
    key = client.session[ENROL_KEY_SESSION]
    wrong = client.post(
        "/accounts/2fa/enrol/",
        {"code": "000000" if totp_code(key, at=time.time()) != "000000" else "111111"},
    )
    assert b"That code is not right" in wrong.content
    assert not TOTPDevice.objects.filter(user=user).exists()
    done = client.post("/accounts/2fa/enrol/", {"code": totp_code(key, at=time.time())})
    assert done.status_code == 200
    codes = re.findall(r"<li><code>([a-z2-7]{4}-[a-z2-7]{4})</code></li>", done.content.decode())
    assert len(codes) == 10
    assert TOTPDevice.objects.get(user=user).confirmed
    assert StaticToken.objects.filter(device__user=user).count() == 10
    status = client.get("/accounts/2fa/").content.decode()
    assert "is <strong>on</strong>" in status and "10 unused recovery codes" in status
    assert codes[0] not in status, "recovery codes are shown only once"
    assert AuditEvent.TWO_FACTOR_ENABLED in events_of(user)
    # The enrolling session is verified: the API sees the user.
    assert client.get("/api/v1/orders").status_code == 200


def test_a_user_with_a_device_is_half_signed_in_until_the_code_and_the_api_agrees():
    user = make_person()
    device = give_totp_device(user)
    client = browser()
    response = log_in(client, user, next_url="/accounts/2fa/")
    assert response["Location"] == "/accounts/2fa/verify/?next=%2Faccounts%2F2fa%2F"
    assert client.get("/api/v1/orders").status_code in (401, 403)
    assert client.get("/accounts/2fa/")["Location"].startswith("/accounts/2fa/verify/")
    assert b"Finish signing in" in client.get("/").content
    wrong = client.post("/accounts/2fa/verify/", {"code": "12345x"})
    assert wrong.status_code == 200 and b"That code is not right" in wrong.content
    ok = client.post(
        "/accounts/2fa/verify/", {"code": current_code(device), "next": "/accounts/2fa/"}
    )
    assert ok.status_code == 302 and ok["Location"] == "/accounts/2fa/"
    assert client.get("/api/v1/orders").status_code == 200
    assert events_of(user) == [
        AuditEvent.LOGIN,
        AuditEvent.TWO_FACTOR_FAILED,
        AuditEvent.TWO_FACTOR_VERIFIED,
    ]


def test_failed_codes_count_towards_the_throttle():
    user = make_person()
    device = give_totp_device(user)
    client = browser()
    log_in(client, user)
    for _ in range(5):
        client.post("/accounts/2fa/verify/", {"code": "abcdefgh"})
    refused = client.post("/accounts/2fa/verify/", {"code": current_code(device)})
    assert refused.status_code == 429 and b"Too many failed sign-in attempts" in refused.content
    assert client.get("/api/v1/orders").status_code in (401, 403)
    record = AuditRecord.objects.get(event_type=AuditEvent.LOGIN_THROTTLED, user_id=user.pk)
    assert record.payload["stage"] == "verify"


def recovery_codes_of(client: Client, device) -> list[str]:
    page = client.post("/accounts/2fa/recovery-codes/", {"regenerate-code": current_code(device)})
    assert page.status_code == 200, page.content[:300]
    return re.findall(r"<li><code>([a-z2-7]{4}-[a-z2-7]{4})</code></li>", page.content.decode())


def test_a_recovery_code_signs_in_once_and_new_codes_replace_the_old():
    user = make_person()
    client = verified_client(user, browser())
    device = TOTPDevice.objects.get(user=user)
    first = recovery_codes_of(client, device)
    second = recovery_codes_of(client, device)
    assert len(second) == 10 and not set(first) & set(second)
    assert AuditEvent.RECOVERY_CODES_GENERATED in events_of(user)

    other = browser()
    log_in(other, user)
    assert other.post("/accounts/2fa/verify/", {"code": first[0]}).status_code == 200  # old set
    used = other.post("/accounts/2fa/verify/", {"code": second[0].upper().replace("-", " ")})
    assert used.status_code == 302
    verified = AuditRecord.objects.filter(
        event_type=AuditEvent.TWO_FACTOR_VERIFIED, user_id=user.pk
    ).latest("seq")
    assert verified.payload == {"method": "recovery_code", "recovery_codes_left": 9}
    third = browser()
    log_in(third, user)
    assert third.post("/accounts/2fa/verify/", {"code": second[0]}).status_code == 200  # used up


def test_disabling_needs_a_current_code_and_is_refused_to_staff():
    user = make_person()
    client = verified_client(user, browser())
    device = TOTPDevice.objects.get(user=user)
    wrong = client.post("/accounts/2fa/disable/", {"disable-code": "999999"})
    assert b"still on" in wrong.content and TOTPDevice.objects.filter(user=user).exists()
    ok = client.post("/accounts/2fa/disable/", {"disable-code": current_code(device)})
    assert ok.status_code == 302
    assert not TOTPDevice.objects.filter(user=user).exists()
    assert events_of(user)[-2:] == [AuditEvent.TWO_FACTOR_FAILED, AuditEvent.TWO_FACTOR_DISABLED]
    assert client.get("/api/v1/orders").status_code == 200  # no device: a password suffices

    staff = make_person(staff=True)
    staff_client = verified_client(staff, browser())
    staff_device = TOTPDevice.objects.get(user=staff)
    refused = staff_client.post(
        "/accounts/2fa/disable/", {"disable-code": current_code(staff_device)}, follow=True
    )
    assert b"Staff accounts must keep two-factor authentication on" in refused.content
    assert TOTPDevice.objects.filter(user=staff).exists()

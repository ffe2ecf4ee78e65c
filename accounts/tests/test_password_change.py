"""A user changes their own password on the web (/accounts/password/): the current password
(and a code with 2FA on) first, the validators, the other sessions ended, the audit trail, the
sign-in throttle. Django's test client against the real PostgreSQL and Redis."""

import re
import uuid

import pytest
from django.test import Client

from accounts.tests.otp_login import PASSWORD, current_code, give_totp_device, make_person
from audit.events import AuditChannel, AuditEvent
from audit.models import AuditRecord

pytestmark = pytest.mark.django_db

NEW_PASSWORD = "a-Different-passphrase-77"


def browser() -> Client:
    part = uuid.uuid4().int
    return Client(REMOTE_ADDR=f"198.19.{part % 250}.{part // 250 % 250}")


def signed_in(user, password: str = PASSWORD) -> Client:
    client = browser()
    response = client.post("/accounts/login/", {"email": user.email, "password": password})
    assert response.status_code == 302, response.content[:300]
    return client


def change(client: Client, current: str, new: str = NEW_PASSWORD, **extra):
    return client.post(
        "/accounts/password/",
        {"current_password": current, "new_password1": new, "new_password2": new, **extra},
    )


def records(user, event_type) -> list[AuditRecord]:
    return list(AuditRecord.objects.filter(user_id=user.pk, event_type=event_type))


def test_a_user_changes_their_password_and_every_other_session_ends():
    # There was no such page: only staff could change a password, in the admin.
    user = make_person()
    here, elsewhere = signed_in(user), signed_in(user)
    assert 'href="/accounts/password/"' in here.get("/account/").content.decode()
    page = here.get("/accounts/password/").content.decode()
    inputs = re.findall(r'<input[^>]*type="(?:password|text)"[^>]*id="([^"]+)"', page)
    assert len(inputs) == 3 and all(f'for="{input_id}"' in page for input_id in inputs)
    response = change(here, PASSWORD)
    assert response.status_code == 302 and response["Location"] == "/accounts/password/"
    assert "Your password is changed" in here.get("/accounts/password/").content.decode()
    assert here.get("/account/").status_code == 200  # this session stays signed in
    assert elsewhere.get("/account/")["Location"].startswith("/accounts/login/")
    assert (
        browser().post("/accounts/login/", {"email": user.email, "password": PASSWORD}).status_code
        == 200
    )  # refused: the form again
    signed_in(user, NEW_PASSWORD)
    (changed,) = records(user, AuditEvent.PASSWORD_CHANGED)
    assert changed.channel == AuditChannel.WEB and changed.payload == {"two_factor": False}
    assert changed.ip.startswith("198.19.")


def test_a_wrong_current_password_changes_nothing_and_counts_as_a_failed_sign_in(settings):
    # A stolen session must not be a way to guess the password without the sign-in throttle.
    settings.LOGIN_THROTTLE_ACCOUNT_FAILURES = 3
    user = make_person()
    client = signed_in(user)
    for _ in range(3):
        response = change(client, "not the password")
        assert response.status_code == 200
        assert "That is not your current password." in response.content.decode()
    throttled = change(client, PASSWORD)
    assert throttled.status_code == 429 and int(throttled["Retry-After"]) > 0
    user.refresh_from_db()
    assert user.check_password(PASSWORD)
    assert [r.payload for r in records(user, AuditEvent.PASSWORD_CHANGE_REFUSED)] == [
        {"wrong": "password"}
    ] * 3
    assert records(user, AuditEvent.LOGIN_THROTTLED)[-1].payload["stage"] == "password_change"


def test_with_two_factor_on_a_current_code_is_needed_once():
    user = make_person()
    device = give_totp_device(user)
    client = browser()
    client.post("/accounts/login/", {"email": user.email, "password": PASSWORD})
    code = current_code(device)
    assert client.post("/accounts/2fa/verify/", {"code": code}).status_code == 302
    page = client.get("/accounts/password/").content.decode()
    assert 'name="code"' in page
    missing = change(client, PASSWORD)
    assert missing.status_code == 200 and "This field is required." in missing.content.decode()
    # The code that signed this session in was used: it does not pass a second time.
    reused = change(client, PASSWORD, code=code)
    assert "That code is not right." in reused.content.decode()
    user.refresh_from_db()
    assert user.check_password(PASSWORD)
    assert change(client, PASSWORD, code=current_code(device)).status_code == 302
    user.refresh_from_db()
    assert user.check_password(NEW_PASSWORD)
    assert records(user, AuditEvent.PASSWORD_CHANGED)[0].payload == {"two_factor": True}


@pytest.mark.parametrize(
    ("new", "second", "error"),
    [
        ("short1", "short1", "This password is too short."),
        (PASSWORD, PASSWORD, "The new password is your current one."),
        (NEW_PASSWORD, NEW_PASSWORD + "x", "The two new passwords differ."),
    ],
)
def test_a_new_password_that_does_not_pass_is_refused_and_nothing_changes(new, second, error):
    user = make_person()
    client = signed_in(user)
    response = client.post(
        "/accounts/password/",
        {"current_password": PASSWORD, "new_password1": new, "new_password2": second},
    )
    assert response.status_code == 200 and error in response.content.decode()
    user.refresh_from_db()
    assert user.check_password(PASSWORD)
    assert not records(user, AuditEvent.PASSWORD_CHANGED)


def test_the_page_needs_a_full_sign_in():
    response = browser().get("/accounts/password/")
    assert response.status_code == 302
    assert response["Location"] == "/accounts/login/?next=%2Faccounts%2Fpassword%2F"
    user = make_person()
    give_totp_device(user)
    half = browser()
    half.post("/accounts/login/", {"email": user.email, "password": PASSWORD})
    assert half.get("/accounts/password/")["Location"].startswith("/accounts/2fa/verify/")

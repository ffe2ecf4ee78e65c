"""The 2FA services at chosen instants: which codes are accepted when, once each; the demo
admin's seeded device; the otpauth URI the QR code carries."""

import io
import json
import time
import uuid
from urllib.parse import parse_qs, urlsplit

import pytest
from django.contrib.auth import get_user_model
from django.contrib.sessions.backends.db import SessionStore
from django.core.management import call_command
from django.test import RequestFactory
from django_otp.plugins.otp_totp.models import TOTPDevice

from accounts.tests.otp_login import give_totp_device, make_person
from accounts.two_factor import (
    CodeOutcome,
    TwoFactorError,
    otpauth_uri,
    session_two_factor_pending,
    totp_code,
    totp_secret_base32,
    two_factor_enable,
    two_factor_verify,
)
from audit.events import AuditEvent
from audit.models import AuditRecord

pytestmark = pytest.mark.django_db

T0 = 1_950_000_000.0  # a chosen instant (step 65_000_000 starts here)


def request_as(user):
    """A request of a half-signed-in user from an address of its own."""
    request = RequestFactory().post(
        "/accounts/2fa/verify/", REMOTE_ADDR=f"203.0.113.{uuid.uuid4().int % 250}"
    )
    request.session = SessionStore()
    request.session.create()
    request.user = user
    user.otp_device = None
    return request


def verify(user, code: str, now: float) -> CodeOutcome:
    return two_factor_verify(request=request_as(user), code=code, now=now)


def test_rfc_6238_reference_code():
    # RFC 6238 appendix B, SHA-1 secret "12345678901234567890" at 59 s: 94287082 (8 digits).
    assert totp_code(b"12345678901234567890".hex(), at=59) == "287082"


@pytest.mark.parametrize(
    ("code_at", "accepted"),
    [(T0, True), (T0 - 30, True), (T0 + 30, True), (T0 - 60, False), (T0 + 60, False)],
)
def test_a_code_is_accepted_at_its_instant_and_one_step_either_side_only(code_at, accepted):
    user = make_person()
    device = give_totp_device(user)
    assert verify(user, totp_code(device.key, at=code_at), now=T0 + 10).accepted is accepted


def test_a_code_is_accepted_once_and_no_earlier_code_after_it():
    user = make_person()
    device = give_totp_device(user)
    code = totp_code(device.key, at=T0)
    assert verify(user, code, now=T0).accepted
    replay = verify(user, code, now=T0 + 1)
    assert not replay.accepted
    assert not verify(user, totp_code(device.key, at=T0 - 30), now=T0 + 2).accepted
    device.refresh_from_db()
    assert device.last_t == int(T0) // 30
    failed = AuditRecord.objects.filter(event_type=AuditEvent.TWO_FACTOR_FAILED, user_id=user.pk)
    assert failed.count() == 2


def test_verification_marks_the_session_and_is_audited_with_the_method():
    user = make_person()
    device = give_totp_device(user)
    request = request_as(user)
    outcome = two_factor_verify(request=request, code=totp_code(device.key, at=T0), now=T0)
    assert outcome.accepted and outcome.method == "totp"
    assert user.otp_device == device
    assert not session_two_factor_pending(user, request.session)
    record = AuditRecord.objects.get(event_type=AuditEvent.TWO_FACTOR_VERIFIED, user_id=user.pk)
    assert record.payload == {"method": "totp", "recovery_codes_left": 0}
    assert session_two_factor_pending(user, request_as(user).session)


def test_enrolment_needs_a_code_of_the_new_secret_and_cannot_happen_twice():
    user = make_person()
    key = "3132333435363738393031323334353637383930"
    wrong = two_factor_enable(
        request=request_as(user), key_hex=key, code=totp_code(key, at=T0 + 300), now=T0
    )
    assert not wrong.accepted and not TOTPDevice.objects.filter(user=user).exists()
    done = two_factor_enable(
        request=request_as(user), key_hex=key, code=totp_code(key, at=T0), now=T0
    )
    assert done.accepted and len(done.recovery_codes) == 10
    assert TOTPDevice.objects.get(user=user).last_t == int(T0) // 30
    with pytest.raises(TwoFactorError):
        two_factor_enable(
            request=request_as(user), key_hex=key, code=totp_code(key, at=T0 + 30), now=T0 + 30
        )


def test_verify_without_a_device_is_refused():
    with pytest.raises(TwoFactorError):
        verify(make_person(), "123456", now=T0)


def test_otpauth_uri_names_issuer_account_and_secret(settings):
    settings.OTP_TOTP_ISSUER = "Exchange"
    key = "3132333435363738393031323334353637383930"
    uri = urlsplit(otpauth_uri(key_hex=key, account="jo@example.test"))
    assert (uri.scheme, uri.netloc, uri.path) == (
        "otpauth",
        "totp",
        "/Exchange%3Ajo%40example.test",
    )
    params = parse_qs(uri.query)
    assert params["secret"] == [totp_secret_base32(key)] == ["GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"]
    assert params["issuer"] == ["Exchange"] and params["period"] == ["30"]


def test_seed_demo_gives_the_admin_a_device_whose_code_demo_totp_code_prints(settings, tmp_path):
    settings.VAR_DIR = tmp_path
    call_command("seed_demo", stdout=io.StringIO())
    credentials = json.loads((tmp_path / "demo_credentials.json").read_text())
    admin_entry = next(c for c in credentials if c["role"] == "admin")
    admin = get_user_model().objects.get(username="admin")
    assert admin.is_staff and admin.email == admin_entry["email"]
    device = TOTPDevice.objects.get(user=admin, confirmed=True)
    assert device.key == admin_entry["totp_key"]
    assert all("totp_key" not in c for c in credentials if c["role"] != "admin")
    # Seeding again keeps the device (the secret the developer scanned stays valid).
    call_command("seed_demo", stdout=io.StringIO())
    assert TOTPDevice.objects.get(user=admin).pk == device.pk

    before = time.time()
    out = io.StringIO()
    call_command("demo_totp_code", stdout=out, stderr=io.StringIO())
    after = time.time()
    printed = out.getvalue().strip()
    assert printed in {totp_code(device.key, at=before), totp_code(device.key, at=after)}

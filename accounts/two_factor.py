"""Two-factor authentication: TOTP devices and recovery codes (django-otp), and their services.

A user turns 2FA on by scanning a secret (kept in the session until confirmed, so reloading
the page shows the same QR code and nothing is stored before a code proves the app has it),
then confirming with a code: that creates a confirmed `TOTPDevice` and a `StaticDevice` of
single-use recovery codes, shown once. After a password login, a user with a confirmed device
is only half signed in until `two_factor_verify` accepts a code from the app or a recovery
code (`django_otp.login` marks the session verified; `user.is_verified()` then holds).

Codes are checked at an explicit instant (`now`, Unix seconds), so tests choose the time. A
TOTP code is accepted once (its time step must be later than the last accepted one). Every
outcome is audited; failed codes count towards the sign-in throttle (accounts/login_throttle).
"""

from __future__ import annotations

import re
from base64 import b32encode
from binascii import unhexlify
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode
from xml.etree import ElementTree

import django_otp
import qrcode
import qrcode.image.svg
from django.conf import settings
from django.db import transaction
from django_otp import DEVICE_ID_SESSION_KEY
from django_otp.models import Device
from django_otp.oath import TOTP
from django_otp.plugins.otp_static.models import StaticDevice, StaticToken
from django_otp.plugins.otp_totp.models import TOTPDevice
from django_otp.util import random_hex

from accounts.login_throttle import (
    ThrottleState,
    client_ip,
    login_throttle_attempt,
    login_throttle_attempt_passed,
    login_throttle_reset_account,
    login_throttle_state,
)
from audit.events import AuditEvent
from audit.services import audit_record

RECOVERY_CODE_COUNT = 10
ENROL_KEY_SESSION = "accounts_2fa_enrol_key"
TOTP_DEVICE_NAME = "Authenticator app"
RECOVERY_DEVICE_NAME = "Recovery codes"
_TOTP_CODE_RE = re.compile(r"^\d{6}$")


class TwoFactorError(Exception):
    """A 2FA action that cannot be done in the user's current state (message for the user)."""


# ---------------------------------------------------------------------------------------------
# TOTP and recovery-code primitives


def totp_key_new() -> str:
    """A new TOTP secret: 20 random bytes, hex-encoded (django-otp's storage format)."""
    return random_hex(20)


def totp_code(key_hex: str, *, at: float) -> str:
    """The 6-digit code an authenticator app shows for this secret at Unix time `at`."""
    totp = TOTP(unhexlify(key_hex.encode()), step=30, t0=0, digits=6)
    totp.time = at
    return f"{totp.token():06d}"


def totp_secret_base32(key_hex: str) -> str:
    """The secret as people type it into an authenticator app (base32, no padding)."""
    return b32encode(unhexlify(key_hex.encode())).decode().rstrip("=")


def otpauth_uri(*, key_hex: str, account: str) -> str:
    """The `otpauth://` URI an authenticator app reads from the QR code."""
    issuer = settings.OTP_TOTP_ISSUER.replace(":", "")
    params = urlencode(
        {
            "secret": totp_secret_base32(key_hex),
            "issuer": issuer,
            "algorithm": "SHA1",
            "digits": 6,
            "period": 30,
        },
        quote_via=quote,
    )
    return f"otpauth://totp/{quote(f'{issuer}:{account}')}?{params}"


def qr_code_svg(data: str, *, title: str) -> str:
    """An inline SVG of a QR code for `data`, rendered on the server (no JavaScript)."""
    image = qrcode.make(data, image_factory=qrcode.image.svg.SvgPathImage, border=2)
    root = image.get_image()
    root.set("role", "img")
    root.set("aria-label", title)
    root.set("width", "220")
    root.set("height", "220")
    return ElementTree.tostring(root, encoding="unicode")


def recovery_code_display(token: str) -> str:
    return f"{token[:4]}-{token[4:]}"


def _recovery_code_normalize(code: str) -> str:
    return re.sub(r"[\s-]", "", code or "").lower()


def totp_device_for(user: Any) -> TOTPDevice | None:
    if not getattr(user, "is_authenticated", False):
        return None
    return TOTPDevice.objects.filter(user=user, confirmed=True).first()


def two_factor_enabled(user: Any) -> bool:
    """Whether the user has a confirmed authenticator (and so must pass the OTP step)."""
    if not getattr(user, "is_authenticated", False):
        return False
    return TOTPDevice.objects.filter(user=user, confirmed=True).exists()


def two_factor_pending(user: Any) -> bool:
    """Signed in with a password but not yet through the OTP step their device requires."""
    if not getattr(user, "is_authenticated", False):
        return False
    verified = getattr(user, "is_verified", None)
    return not (verified is not None and verified()) and two_factor_enabled(user)


def staff_unverified(user: Any) -> bool:
    """A staff member whose session has not passed the OTP step (with or without an
    authenticator yet): staff powers need it, as the admin does."""
    if not getattr(user, "is_staff", False):
        return False
    verified = getattr(user, "is_verified", None)
    return not (verified is not None and verified())


def session_two_factor_pending(user: Any, session: Any) -> bool:
    """`two_factor_pending` for a session without OTPMiddleware (WebSocket scope); a staff
    member's session is pending until verified, authenticator or not (`staff_unverified`)."""
    if not getattr(user, "is_authenticated", False):
        return False
    if not getattr(user, "is_staff", False) and not two_factor_enabled(user):
        return False
    persistent_id = session.get(DEVICE_ID_SESSION_KEY) if session is not None else None
    device = Device.from_persistent_id(persistent_id) if persistent_id else None
    return not (device is not None and device.user_id == user.pk and device.confirmed)


def recovery_codes_left(user: Any) -> int:
    return StaticToken.objects.filter(device__user=user, device__confirmed=True).count()


def enrol_key_for_session(session: Any) -> str:
    """The secret being enrolled in this session (created on first use, then kept)."""
    key = session.get(ENROL_KEY_SESSION)
    if not key:
        key = totp_key_new()
        session[ENROL_KEY_SESSION] = key
    return key


def _totp_match(device: TOTPDevice, code: str, *, now: float) -> bool:
    """django-otp's TOTP check (tolerance, drift, one use per step) at the instant `now`; on a
    match the device's last step and drift are updated in memory (the caller saves)."""
    if not _TOTP_CODE_RE.match(code):
        return False
    totp = TOTP(device.bin_key, device.step, device.t0, device.digits, device.drift)
    totp.time = now
    if not totp.verify(int(code), device.tolerance, device.last_t + 1):
        return False
    device.last_t = totp.t()
    device.drift = totp.drift
    return True


def _recovery_match(user: Any, code: str) -> StaticToken | None:
    normalized = _recovery_code_normalize(code)
    if not normalized or len(normalized) > 16:
        return None
    token = (
        StaticToken.objects.select_for_update()
        .select_related("device")
        .filter(device__user=user, device__confirmed=True, token=normalized)
        .first()
    )
    if token is not None:
        token.delete()
    return token


def code_match(user: Any, code: str, *, now: float) -> tuple[Device | None, str | None]:
    """The device that accepts `code` (an app code or a recovery code, consumed), if any.
    Runs inside the caller's transaction; the TOTP row is locked while checked."""
    code = (code or "").strip().replace(" ", "")
    device = TOTPDevice.objects.select_for_update().filter(user=user, confirmed=True).first()
    if device is not None and _totp_match(device, code, now=now):
        device.save(update_fields=["last_t", "drift"])
        return device, "totp"
    token = _recovery_match(user, code)
    if token is not None:
        return token.device, "recovery_code"
    return None, None


def _new_recovery_codes(user: Any) -> list[str]:
    """Replace the user's recovery codes. The device row is kept: a session verified with a
    recovery code points at it and must stay verified."""
    device = StaticDevice.objects.filter(user=user).order_by("pk").first()
    if device is None:
        device = StaticDevice.objects.create(user=user, name=RECOVERY_DEVICE_NAME, confirmed=True)
    StaticDevice.objects.filter(user=user).exclude(pk=device.pk).delete()
    device.token_set.all().delete()
    if not device.confirmed:
        device.confirmed = True
        device.save(update_fields=["confirmed"])
    tokens = [StaticToken.random_token() for _ in range(RECOVERY_CODE_COUNT)]
    StaticToken.objects.bulk_create([StaticToken(device=device, token=t) for t in tokens])
    return [recovery_code_display(t) for t in tokens]


# ---------------------------------------------------------------------------------------------
# Services (each owns its transaction and writes its audit record in it)


@dataclass(slots=True)
class CodeOutcome:
    """What happened to a submitted code: accepted, refused, or not checked (throttled)."""

    accepted: bool
    throttle: ThrottleState | None = None
    method: str | None = None
    recovery_codes: list[str] = field(default_factory=list)

    @property
    def throttled(self) -> bool:
        return self.throttle is not None and self.throttle.throttled


def attempt_throttled(*, user: Any, request: Any, now: float, stage: str) -> ThrottleState | None:
    """Count a signed-in user's attempt (a code, or their password on the password change)
    before it is checked (`login_throttle_attempt`); the state when it is refused (audited),
    None when it may be checked."""
    state = login_throttle_attempt(email=user.email, ip=client_ip(request), now=now)
    if not state.throttled:
        return None
    with transaction.atomic():
        audit_record(
            event_type=AuditEvent.LOGIN_THROTTLED,
            actor=user,
            user_id=user.pk,
            request=request,
            payload={
                "stage": stage,
                "by": state.throttled_by,
                "account_failures": state.account_failures,
                "ip_failures": state.ip_failures,
            },
        )
    return state


def _failed(*, user: Any, request: Any, now: float, stage: str) -> CodeOutcome:
    with transaction.atomic():
        audit_record(
            event_type=AuditEvent.TWO_FACTOR_FAILED,
            actor=user,
            user_id=user.pk,
            request=request,
            payload={"stage": stage},
        )
    state = login_throttle_state(email=user.email, ip=client_ip(request), now=now)
    return CodeOutcome(accepted=False, throttle=state)


def _passed(*, user: Any, request: Any, now: float) -> None:
    login_throttle_attempt_passed(email=user.email, ip=client_ip(request), now=now)


def two_factor_verify(*, request: Any, code: str, now: float) -> CodeOutcome:
    """The OTP step after a password login: accept an app code or a recovery code for
    `request.user`, mark the session verified, and audit; a wrong code counts as a failure."""
    user = request.user
    if not two_factor_enabled(user):
        raise TwoFactorError("Two-factor authentication is not turned on for this account.")
    throttle = attempt_throttled(user=user, request=request, now=now, stage="verify")
    if throttle is not None:
        return CodeOutcome(accepted=False, throttle=throttle)
    with transaction.atomic():
        device, method = code_match(user, code, now=now)
        if device is not None:
            django_otp.login(request, device)
            audit_record(
                event_type=AuditEvent.TWO_FACTOR_VERIFIED,
                actor=user,
                user_id=user.pk,
                request=request,
                payload={"method": method, "recovery_codes_left": recovery_codes_left(user)},
            )
    if device is None:
        return _failed(user=user, request=request, now=now, stage="verify")
    _passed(user=user, request=request, now=now)
    login_throttle_reset_account(email=user.email, now=now)
    return CodeOutcome(accepted=True, method=method)


def two_factor_enable(*, request: Any, key_hex: str, code: str, now: float) -> CodeOutcome:
    """Confirm the enrolment of `key_hex` with a code from the app: store the device, make
    fresh recovery codes (returned, to be shown once), and verify this session with it."""
    user = request.user
    if two_factor_enabled(user):
        raise TwoFactorError("Two-factor authentication is already on.")
    throttle = attempt_throttled(user=user, request=request, now=now, stage="enrol")
    if throttle is not None:
        return CodeOutcome(accepted=False, throttle=throttle)
    device = TOTPDevice(user=user, name=TOTP_DEVICE_NAME, key=key_hex, confirmed=True)
    with transaction.atomic():
        # An unconfirmed device from another tool would be confusing later: one device only.
        TOTPDevice.objects.filter(user=user).delete()
        if _totp_match(device, (code or "").strip().replace(" ", ""), now=now):
            device.save()
            codes = _new_recovery_codes(user)
            django_otp.login(request, device)
            audit_record(
                event_type=AuditEvent.TWO_FACTOR_ENABLED,
                actor=user,
                user_id=user.pk,
                request=request,
                payload={"device": "totp", "recovery_codes": len(codes)},
            )
        else:
            codes = None
    if codes is None:
        return _failed(user=user, request=request, now=now, stage="enrol")
    _passed(user=user, request=request, now=now)
    request.session.pop(ENROL_KEY_SESSION, None)
    return CodeOutcome(accepted=True, method="totp", recovery_codes=codes)


def two_factor_disable(*, request: Any, code: str, now: float) -> CodeOutcome:
    """Turn 2FA off after a current code (app or recovery); staff must keep it."""
    user = request.user
    if user.is_staff:
        raise TwoFactorError("Staff accounts must keep two-factor authentication on.")
    if not two_factor_enabled(user):
        raise TwoFactorError("Two-factor authentication is not turned on.")
    throttle = attempt_throttled(user=user, request=request, now=now, stage="disable")
    if throttle is not None:
        return CodeOutcome(accepted=False, throttle=throttle)
    with transaction.atomic():
        device, method = code_match(user, code, now=now)
        if device is not None:
            TOTPDevice.objects.filter(user=user).delete()
            StaticDevice.objects.filter(user=user).delete()
            audit_record(
                event_type=AuditEvent.TWO_FACTOR_DISABLED,
                actor=user,
                user_id=user.pk,
                request=request,
                payload={"method": method},
            )
    if device is None:
        return _failed(user=user, request=request, now=now, stage="disable")
    _passed(user=user, request=request, now=now)
    request.session.pop(DEVICE_ID_SESSION_KEY, None)
    user.otp_device = None
    return CodeOutcome(accepted=True, method=method)


def recovery_codes_regenerate(*, request: Any, code: str, now: float) -> CodeOutcome:
    """Replace every recovery code after a current code; the new codes are returned once."""
    user = request.user
    if not two_factor_enabled(user):
        raise TwoFactorError("Two-factor authentication is not turned on.")
    throttle = attempt_throttled(user=user, request=request, now=now, stage="recovery_codes")
    if throttle is not None:
        return CodeOutcome(accepted=False, throttle=throttle)
    with transaction.atomic():
        device, method = code_match(user, code, now=now)
        if device is not None:
            codes = _new_recovery_codes(user)
            audit_record(
                event_type=AuditEvent.RECOVERY_CODES_GENERATED,
                actor=user,
                user_id=user.pk,
                request=request,
                payload={"method": method, "recovery_codes": len(codes)},
            )
    if device is None:
        return _failed(user=user, request=request, now=now, stage="recovery_codes")
    _passed(user=user, request=request, now=now)
    return CodeOutcome(accepted=True, method=method, recovery_codes=codes)


@transaction.atomic
def two_factor_seed_device(*, user: Any, key_hex: str) -> TOTPDevice:
    """Give a (demo) user a confirmed TOTP device with a known secret; audited when created
    or when the secret changes. Development seeding only: the secret is printed by make run."""
    device = TOTPDevice.objects.filter(user=user, confirmed=True).first()
    if device is not None and device.key == key_hex:
        return device
    TOTPDevice.objects.filter(user=user).delete()
    device = TOTPDevice.objects.create(
        user=user, name=TOTP_DEVICE_NAME, key=key_hex, confirmed=True
    )
    audit_record(
        event_type=AuditEvent.TWO_FACTOR_ENABLED,
        actor=None,
        user_id=user.pk,
        payload={"device": "totp", "seeded": True},
    )
    return device

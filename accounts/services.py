"""Web identity services: sign-up, password login (throttled), logout and a user's own password
change, each audited.

A password login is the first step only: a user with a confirmed authenticator is then half
signed in until `accounts.two_factor.two_factor_verify` accepts a code. Logins, failed logins
and logouts are recorded by the audit app's auth-signal receivers (audit/signals.py), in the
transaction of the service that logs in; sign-ups and throttled attempts are recorded here.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Any

from django.contrib.auth import (
    authenticate,
    get_user_model,
    login,
    logout,
    update_session_auth_hash,
)
from django.db import IntegrityError, transaction

from accounts.login_throttle import (
    ThrottleState,
    client_ip,
    login_throttle_attempt,
    login_throttle_attempt_passed,
    login_throttle_reset_account,
    login_throttle_state,
    normalize_email,
)
from accounts.two_factor import attempt_throttled, code_match, two_factor_enabled
from audit.events import AuditEvent
from audit.services import audit_record

_USERNAME_UNSAFE = re.compile(r"[^\w.+-]")


class SignUpError(Exception):
    """The account cannot be created (message for the user, `field` names the input)."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class SignUpThrottled(Exception):
    """Too many sign-ups refused for a taken email from this client IP (the throttle's state)."""

    def __init__(self, throttle: ThrottleState) -> None:
        super().__init__("too many refused sign-ups from this address")
        self.throttle = throttle


@dataclass(frozen=True, slots=True)
class LoginOutcome:
    """`next_step`: "done" (fully signed in), "verify" (OTP step owed), "enrol" (staff without
    an authenticator: signed in, but the admin needs one), "failed" or "throttled"."""

    next_step: str
    user: Any = None
    throttle: ThrottleState | None = None


def username_from_email(email: str) -> str:
    """A free username derived from the email's local part (`jane.doe`, else `jane.doe-3f9a`).
    Usernames stay for the admin and the audit trail's actor label; people sign in by email."""
    User = get_user_model()
    base = _USERNAME_UNSAFE.sub("", email.split("@", 1)[0])[:40] or "user"
    candidate = base
    while User.objects.filter(username__iexact=candidate).exists():
        candidate = f"{base}-{secrets.token_hex(2)}"
    return candidate


def user_sign_up(*, request: Any, email: str, password: str, now: float) -> Any:
    """Create an ordinary user (never staff) and sign them in; audited in one transaction.
    The password must already have passed the password validators (the form does it).

    A refusal for an email already taken counts against the client IP's sign-in throttle (it
    tells that the address has an account): past it, SignUpThrottled."""
    User = get_user_model()
    email = normalize_email(email)
    ip = client_ip(request)
    state = login_throttle_attempt(email=None, ip=ip, now=now)
    if state.throttled:
        with transaction.atomic():
            audit_record(
                event_type=AuditEvent.LOGIN_THROTTLED,
                actor="anonymous",
                request=request,
                payload={"stage": "signup", "by": "ip", "ip_failures": state.ip_failures},
            )
        raise SignUpThrottled(state)
    if User.objects.filter(email__iexact=email).exists():
        raise SignUpError("An account with this email already exists.", field="email")
    login_throttle_attempt_passed(email=None, ip=ip, now=now)
    for _ in range(5):
        try:
            with transaction.atomic():
                user = User.objects.create_user(
                    username=username_from_email(email), email=email, password=password
                )
                audit_record(
                    event_type=AuditEvent.USER_SIGNED_UP,
                    actor=user,
                    user_id=user.pk,
                    request=request,
                    payload={"username": user.username},
                )
                login(request, user, backend="django.contrib.auth.backends.ModelBackend")
            return user
        except IntegrityError:
            # Lost a race: the email was just taken (refuse), or the username (try another).
            if User.objects.filter(email__iexact=email).exists():
                raise SignUpError(
                    "An account with this email already exists.", field="email"
                ) from None
    raise SignUpError("Could not create the account, please try again.")


def login_with_password(*, request: Any, email: str, password: str, now: float) -> LoginOutcome:
    """Count the attempt against the throttle, then check the password; on success sign the
    user in (the OTP step may still be owed). A wrong password stays counted against the
    account and the client IP."""
    User = get_user_model()
    ip = client_ip(request)
    account = User.objects.filter(email__iexact=normalize_email(email)).first()
    # Counted against the account found, by its own address: PostgreSQL's case-insensitive
    # match also finds it for look-alike spellings (a long s, U+017F, or a dotless i, U+0131,
    # whose upper case is S or I), and each spelling counted apart had doubled the guesses per
    # s or i of the address.
    counted_as = account.email if account else email
    state = login_throttle_attempt(email=counted_as, ip=ip, now=now)  # counted before the check
    if state.throttled:
        with transaction.atomic():
            audit_record(
                event_type=AuditEvent.LOGIN_THROTTLED,
                actor="anonymous",
                user_id=account.pk if account else None,
                request=request,
                payload={
                    "stage": "password",
                    "attempted_email": normalize_email(email)[:200],
                    "by": state.throttled_by,
                    "account_failures": state.account_failures,
                    "ip_failures": state.ip_failures,
                },
            )
        return LoginOutcome("throttled", throttle=state)
    # Django's backend checks the password (and runs the hasher for unknown accounts too, so
    # timing does not tell them apart); its failure signal writes the LOGIN_FAILED record.
    user = authenticate(request, username=account.username if account else email, password=password)
    if user is None:
        state = login_throttle_state(email=counted_as, ip=ip, now=now)
        return LoginOutcome("failed", throttle=state)
    login_throttle_attempt_passed(email=counted_as, ip=ip, now=now)
    with transaction.atomic():
        login(request, user)
    if two_factor_enabled(user):
        return LoginOutcome("verify", user=user)
    login_throttle_reset_account(email=counted_as, now=now)
    return LoginOutcome("enrol" if user.is_staff else "done", user=user)


def user_log_out(*, request: Any) -> None:
    """End the session (the audit app records the logout)."""
    with transaction.atomic():
        logout(request)


@dataclass(frozen=True, slots=True)
class PasswordChangeOutcome:
    """`result`: "changed", "wrong_password", "wrong_code" or "throttled"."""

    result: str
    throttle: ThrottleState | None = None


def password_change(
    *, request: Any, current_password: str, new_password: str, code: str, now: float
) -> PasswordChangeOutcome:
    """Change the signed-in user's password, given their current one and, with two-factor
    authentication on, a current code (consumed). This session stays signed in; every other
    session of the user ends (a session carries the password's hash; sockets signed in with
    one close, accounts.web_sessions). Each attempt counts against the sign-in throttle as a
    login does, so a stolen session cannot guess the password here. The new password must
    already have passed the password validators (the form does it)."""
    User = get_user_model()
    user = request.user
    ip = client_ip(request)
    # Counted before the check, as a one-time code's attempt is (audited when throttled).
    throttle = attempt_throttled(user=user, request=request, now=now, stage="password_change")
    if throttle is not None:
        return PasswordChangeOutcome("throttled", throttle=throttle)
    wrong = None
    with transaction.atomic():
        locked = User.objects.select_for_update().get(pk=user.pk)
        two_factor = two_factor_enabled(locked)
        if not locked.check_password(current_password):
            wrong = "password"
        elif two_factor and code_match(locked, code, now=now)[0] is None:
            wrong = "code"
        else:
            locked.set_password(new_password)
            locked.save(update_fields=["password"])
            audit_record(
                event_type=AuditEvent.PASSWORD_CHANGED,
                actor=locked,
                user_id=locked.pk,
                request=request,
                payload={"two_factor": two_factor},
            )
            update_session_auth_hash(request, locked)
    if wrong is not None:
        with transaction.atomic():
            audit_record(
                event_type=AuditEvent.PASSWORD_CHANGE_REFUSED,
                actor=user,
                user_id=user.pk,
                request=request,
                payload={"wrong": wrong},
            )
        state = login_throttle_state(email=user.email, ip=ip, now=now)
        return PasswordChangeOutcome(f"wrong_{wrong}", throttle=state)
    login_throttle_attempt_passed(email=user.email, ip=ip, now=now)
    return PasswordChangeOutcome("changed")

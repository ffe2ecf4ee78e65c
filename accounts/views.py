"""Sign-up, login, logout and the two-factor pages: thin adapters over accounts' services.

Time is read here (`time.time()`) and passed down, so services and their tests take a clock.
A throttled login or code answers HTTP 429 with a Retry-After header and a readable page.
"""

from __future__ import annotations

import functools
import time
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import messages
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_protect
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_http_methods

from accounts import services, two_factor
from accounts.forms import CodeForm, LoginForm, PasswordChangeForm, SignUpForm
from accounts.login_throttle import ThrottleState


def _next_url(request: HttpRequest) -> str:
    """The safe `next` target of this request (POST, then GET), or the default landing page."""
    target = request.POST.get("next") or request.GET.get("next") or ""
    if target and url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return target
    return reverse(settings.LOGIN_REDIRECT_URL)


def _with_next(view_name: str, target: str) -> str:
    return f"{reverse(view_name)}?{urlencode({'next': target})}"


def _throttle_message(state: ThrottleState) -> str:
    minutes = max(1, -(-state.retry_after_seconds // 60))
    return (
        "Too many failed sign-in attempts. For your security, signing in is paused: "
        f"try again in {minutes} minute{'s' if minutes != 1 else ''}."
    )


def _render_throttled(request, template: str, context: dict, state: ThrottleState):
    context = {**context, "throttle_message": _throttle_message(state)}
    response = render(request, template, context, status=429)
    response["Retry-After"] = str(state.retry_after_seconds)
    return response


def full_login_required(view):
    """Signed in and past the OTP step (if the user has an authenticator); else redirect."""

    @functools.wraps(view)
    def wrapped(request: HttpRequest, *args, **kwargs):
        if not request.user.is_authenticated:
            return HttpResponseRedirect(_with_next("accounts:login", request.get_full_path()))
        if two_factor.two_factor_pending(request.user):
            return HttpResponseRedirect(
                _with_next("accounts:two_factor_verify", request.get_full_path())
            )
        return view(request, *args, **kwargs)

    return wrapped


@sensitive_post_parameters("password1", "password2")
@csrf_protect
@never_cache
@require_http_methods(["GET", "POST"])
def signup(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        return redirect(settings.LOGIN_REDIRECT_URL)
    form = SignUpForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            services.user_sign_up(
                request=request,
                email=form.cleaned_data["email"],
                password=form.cleaned_data["password1"],
                now=time.time(),
            )
        except services.SignUpThrottled as refused:
            return _render_throttled(
                request, "accounts/signup.html", {"form": form}, refused.throttle
            )
        except services.SignUpError as error:
            form.add_error(error.field, str(error))
        else:
            messages.success(
                request,
                "Your account is ready. You can turn on two-factor authentication below.",
            )
            return redirect("accounts:two_factor")
    return render(request, "accounts/signup.html", {"form": form})


@sensitive_post_parameters("password")
@csrf_protect
@never_cache
@require_http_methods(["GET", "POST"])
def login_view(request: HttpRequest) -> HttpResponse:
    target = _next_url(request)
    form = LoginForm(request.POST or None)
    context = {"form": form, "next": target}
    if request.method != "POST" or not form.is_valid():
        return render(request, "accounts/login.html", context)
    outcome = services.login_with_password(
        request=request,
        email=form.cleaned_data["email"],
        password=form.cleaned_data["password"],
        now=time.time(),
    )
    if outcome.next_step == "throttled":
        return _render_throttled(request, "accounts/login.html", context, outcome.throttle)
    if outcome.next_step == "failed":
        form.add_error(None, "The email or password is not right.")
        return render(request, "accounts/login.html", context)
    if outcome.next_step == "verify":
        return HttpResponseRedirect(_with_next("accounts:two_factor_verify", target))
    if outcome.next_step == "enrol":
        messages.info(
            request,
            "Staff accounts need two-factor authentication for the admin: set it up now.",
        )
        return HttpResponseRedirect(_with_next("accounts:enrol", target))
    return HttpResponseRedirect(target)


@require_http_methods(["GET", "POST"])
@csrf_protect
def logout_view(request: HttpRequest) -> HttpResponse:
    """Logging out is a POST. The address opened in the browser (typed, a bookmark) answers 405
    still, with a page holding the Log out button: it had been a blank page."""
    if request.method != "POST":
        response = render(request, "accounts/logout.html", status=405)
        response["Allow"] = "POST"
        return response
    services.user_log_out(request=request)
    messages.info(request, "You are signed out.")
    return redirect(settings.LOGOUT_REDIRECT_URL)


@csrf_protect
@never_cache
@require_http_methods(["GET", "POST"])
def two_factor_verify(request: HttpRequest) -> HttpResponse:
    """The OTP step after a password login."""
    target = _next_url(request)
    if not request.user.is_authenticated:
        return HttpResponseRedirect(_with_next("accounts:login", target))
    if not two_factor.two_factor_pending(request.user):
        return HttpResponseRedirect(target)
    form = CodeForm(request.POST or None)
    context = {"form": form, "next": target}
    if request.method == "POST" and form.is_valid():
        outcome = two_factor.two_factor_verify(
            request=request, code=form.cleaned_data["code"], now=time.time()
        )
        if outcome.accepted:
            if outcome.method == "recovery_code":
                left = two_factor.recovery_codes_left(request.user)
                messages.warning(
                    request, f"You used a recovery code; {left} left. Make new ones in 2FA."
                )
            return HttpResponseRedirect(target)
        if outcome.throttled:
            return _render_throttled(
                request, "accounts/two_factor_verify.html", context, outcome.throttle
            )
        form.add_error("code", "That code is not right, or was already used.")
    return render(request, "accounts/two_factor_verify.html", context)


def _status_page(
    request: HttpRequest,
    *,
    regenerate_form: CodeForm | None = None,
    disable_form: CodeForm | None = None,
    throttle: ThrottleState | None = None,
) -> HttpResponse:
    user = request.user
    enabled = two_factor.two_factor_enabled(user)
    context = {
        "enabled": enabled,
        "recovery_codes_left": two_factor.recovery_codes_left(user) if enabled else 0,
        "regenerate_form": regenerate_form or CodeForm(prefix="regenerate", autofocus=False),
        "disable_form": disable_form or CodeForm(prefix="disable", autofocus=False),
        "staff": user.is_staff,
    }
    if throttle is not None:
        return _render_throttled(request, "accounts/two_factor.html", context, throttle)
    return render(request, "accounts/two_factor.html", context)


@never_cache
@full_login_required
def two_factor_status(request: HttpRequest) -> HttpResponse:
    """Whether 2FA is on; the forms to make new recovery codes or turn it off."""
    return _status_page(request)


def _enrol_context(request: HttpRequest, form: CodeForm, target: str) -> dict:
    key = two_factor.enrol_key_for_session(request.session)
    uri = two_factor.otpauth_uri(key_hex=key, account=request.user.email)
    return {
        "form": form,
        "next": target,
        "qr_svg": two_factor.qr_code_svg(uri, title="QR code to scan with your authenticator"),
        "secret": two_factor.totp_secret_base32(key),
        "otpauth_uri": uri,
    }


@csrf_protect
@never_cache
@require_http_methods(["GET", "POST"])
def enrol(request: HttpRequest) -> HttpResponse:
    """Turn 2FA on: scan the QR code (or type the secret), confirm with a code, keep the
    recovery codes shown once."""
    target = _next_url(request)
    if not request.user.is_authenticated:
        return HttpResponseRedirect(_with_next("accounts:login", request.get_full_path()))
    if two_factor.two_factor_enabled(request.user):
        if two_factor.two_factor_pending(request.user):
            return HttpResponseRedirect(_with_next("accounts:two_factor_verify", target))
        messages.info(request, "Two-factor authentication is already on.")
        return redirect("accounts:two_factor")
    form = CodeForm(request.POST or None, app_code_only=True)
    if request.method == "POST" and form.is_valid():
        key = two_factor.enrol_key_for_session(request.session)
        outcome = two_factor.two_factor_enable(
            request=request, key_hex=key, code=form.cleaned_data["code"], now=time.time()
        )
        if outcome.accepted:
            return render(
                request,
                "accounts/recovery_codes.html",
                {"codes": outcome.recovery_codes, "next": target, "just_enabled": True},
            )
        if outcome.throttled:
            return _render_throttled(
                request,
                "accounts/two_factor_enrol.html",
                _enrol_context(request, form, target),
                outcome.throttle,
            )
        form.add_error(
            "code", "That code is not right. Check the app shows this account, then try again."
        )
    return render(request, "accounts/two_factor_enrol.html", _enrol_context(request, form, target))


@require_http_methods(["GET", "POST"])
@csrf_protect
@never_cache
@full_login_required
def recovery_codes(request: HttpRequest) -> HttpResponse:
    """Make new recovery codes (the old ones stop working); needs a current code."""
    if request.method != "POST":  # reloaded, or opened again: the page it belongs to (was blank)
        return redirect("accounts:two_factor")
    form = CodeForm(request.POST, prefix="regenerate", autofocus=False)
    if not form.is_valid():
        return _status_page(request, regenerate_form=form)
    try:
        outcome = two_factor.recovery_codes_regenerate(
            request=request, code=form.cleaned_data["code"], now=time.time()
        )
    except two_factor.TwoFactorError as error:
        messages.error(request, str(error))
        return redirect("accounts:two_factor")
    if outcome.accepted:
        return render(
            request,
            "accounts/recovery_codes.html",
            {"codes": outcome.recovery_codes, "next": reverse("accounts:two_factor")},
        )
    if outcome.throttled:
        return _status_page(request, regenerate_form=form, throttle=outcome.throttle)
    form.add_error("code", "That code is not right: no new recovery codes were made.")
    return _status_page(request, regenerate_form=form)


@require_http_methods(["GET", "POST"])
@csrf_protect
@never_cache
@full_login_required
def disable(request: HttpRequest) -> HttpResponse:
    """Turn 2FA off; needs a current code (from the app or a recovery code)."""
    if request.method != "POST":  # reloaded, or opened again: the page it belongs to (was blank)
        return redirect("accounts:two_factor")
    form = CodeForm(request.POST, prefix="disable", autofocus=False)
    if not form.is_valid():
        return _status_page(request, disable_form=form)
    try:
        outcome = two_factor.two_factor_disable(
            request=request, code=form.cleaned_data["code"], now=time.time()
        )
    except two_factor.TwoFactorError as error:
        messages.error(request, str(error))
        return redirect("accounts:two_factor")
    if outcome.accepted:
        messages.success(request, "Two-factor authentication is off.")
        return redirect("accounts:two_factor")
    if outcome.throttled:
        return _status_page(request, disable_form=form, throttle=outcome.throttle)
    form.add_error("code", "That code is not right: two-factor authentication is still on.")
    return _status_page(request, disable_form=form)


@sensitive_post_parameters("current_password", "new_password1", "new_password2")
@csrf_protect
@never_cache
@require_http_methods(["GET", "POST"])
@full_login_required
def password_change(request: HttpRequest) -> HttpResponse:
    """Change your password: the current one, the new one twice, and a code with 2FA on."""
    form = PasswordChangeForm(
        request.POST if request.method == "POST" else None,
        user=request.user,
        two_factor=two_factor.two_factor_enabled(request.user),
    )
    template, context = "accounts/password_change.html", {"form": form}
    if not form.is_bound or not form.is_valid():
        return render(request, template, context)
    outcome = services.password_change(
        request=request,
        current_password=form.cleaned_data["current_password"],
        new_password=form.cleaned_data["new_password1"],
        code=form.cleaned_data.get("code", ""),
        now=time.time(),
    )
    if outcome.result == "throttled":
        return _render_throttled(request, template, context, outcome.throttle)
    if outcome.result == "wrong_password":
        form.add_error("current_password", "That is not your current password.")
        return render(request, template, context)
    if outcome.result == "wrong_code":
        form.add_error("code", "That code is not right.")
        return render(request, template, context)
    messages.success(
        request, "Your password is changed. Every other session of your account is signed out."
    )
    return redirect("accounts:password_change")

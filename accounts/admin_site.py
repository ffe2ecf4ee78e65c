"""The admin site: staff need a session verified with two-factor authentication.

Like django-otp's `OTPAdminSite`, `has_permission` also asks `user.is_verified()`. The admin's
own login form is not used: sign-in goes through /accounts/login/ (throttled, audited, with the
OTP step), and a staff member without an authenticator is sent to enrol one first.
"""

import functools
from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.admin import AdminSite, ModelAdmin
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponseRedirect
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme

from accounts.two_factor import two_factor_enabled
from audit.signals import admin_request


def _is_verified(user) -> bool:
    verified = getattr(user, "is_verified", None)
    return bool(verified is not None and verified())


class TwoFactorAdminSite(AdminSite):
    """The admin, for active staff whose session passed the OTP step."""

    def has_permission(self, request: HttpRequest) -> bool:
        return super().has_permission(request) and _is_verified(request.user)

    def admin_view(self, view, cacheable=False):
        """Every admin view runs with its request at hand for the audit trail: the staff
        actions it records keep the client address and session (audit.signals)."""
        inner = super().admin_view(view, cacheable)

        @functools.wraps(inner)
        def with_request(request, *args, **kwargs):
            token = admin_request.set(request)
            try:
                return inner(request, *args, **kwargs)
            finally:
                admin_request.reset(token)

        return with_request

    def password_change(self, request: HttpRequest, extra_context=None) -> HttpResponseRedirect:
        """Staff change their password where everyone does, /accounts/password/: Django's
        admin page took the current password alone (no one-time code), counted no failed
        attempt (a stolen staff session could guess the password there without limit) and
        left no record in the audit trail."""
        return HttpResponseRedirect(reverse("accounts:password_change"))

    def login(self, request: HttpRequest, extra_context=None) -> HttpResponseRedirect:
        """Send the visitor to the step they are missing: sign-in, the OTP step, or enrolment."""
        target = request.GET.get("next") or reverse("admin:index", current_app=self.name)
        if not url_has_allowed_host_and_scheme(
            target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
        ):
            target = reverse("admin:index", current_app=self.name)
        user = request.user
        if user.is_authenticated and user.is_active and user.is_staff:
            if _is_verified(user):
                return HttpResponseRedirect(target)
            step = "accounts:two_factor_verify" if two_factor_enabled(user) else "accounts:enrol"
        else:
            step = "accounts:login"
        return HttpResponseRedirect(f"{reverse(step)}?{urlencode({'next': target})}")


def _selection_typed(model_admin: ModelAdmin, request: HttpRequest) -> bool:
    """Whether every object selected for an action is a value of the model's primary key."""
    pk = model_admin.model._meta.pk
    try:
        for value in request.POST.getlist(ACTION_CHECKBOX_NAME):
            pk.to_python(value)
    except ValidationError:
        return False
    return True


def admin_actions_take_ids_only() -> None:
    """Every admin action (ours, Django's "delete selected", django-celery-beat's) refuses a
    selection that is not ids, with a warning: a posted `_selected_action` of "abc" (or "",
    "1.5") had reached the ORM's pk__in and answered 500."""
    original = ModelAdmin.response_action
    if getattr(original, "_typed", False):
        return

    @functools.wraps(original)
    def response_action(self, request, queryset):
        if not _selection_typed(self, request):
            self.message_user(
                request, "Nothing was done: the selection is not a list of ids.", messages.WARNING
            )
            return None
        return original(self, request, queryset)

    response_action._typed = True
    ModelAdmin.response_action = response_action

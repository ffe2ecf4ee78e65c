"""What the trail records today without the order path: sign-ins, sign-outs, admin actions.

Staff actions: every `LogEntry` the Django admin writes becomes a `staff.action` record in the
same transaction (the admin's). Single entries arrive through post_save; the admin's bulk
deletions use `bulk_create`, which sends no signal, so `LogEntryManager.log_actions` is
wrapped to record those too. Each record keeps the admin request's client address and session
(`admin_request`, set by the admin site around its views), the user the object belongs to as
its subject (a user, or an object with a `user`: a 2FA device, an API key), and for a change
each changed field's value before and after (`ModelAdmin.construct_change_message` is wrapped
to note them; secrets are named, never shown). Deleting someone's 2FA device is also an
`auth.2fa_disabled` of that user.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import functools
from decimal import Decimal
from typing import Any

from django.contrib.admin.models import ADDITION, CHANGE, DELETION, LogEntry, LogEntryManager
from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.db.models.signals import post_save

from audit.events import AuditChannel, AuditEvent
from audit.services import audit_entry, audit_record, audit_record_many

_ACTIONS = {ADDITION: "addition", CHANGE: "change", DELETION: "deletion"}

# The admin request being served (accounts.admin_site sets it around every admin view).
admin_request: contextvars.ContextVar = contextvars.ContextVar("admin_request", default=None)
# Fields whose values never enter the trail (their change is named only).
_SECRET_PARTS = ("password", "secret", "key", "token", "code")
_TWO_FACTOR_MODELS = {"otp_totp.totpdevice", "otp_static.staticdevice"}


def _shown(value: Any) -> Any:
    """A form value as the trail keeps it (JSON: text for objects, lists for many)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")  # the stored 1.000000000000 and a typed 1.00
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if hasattr(value, "__iter__") and not hasattr(value, "_meta"):
        return sorted(str(item) for item in value)
    return str(value)


def _changes_noted(form) -> dict[str, Any]:
    changes = {}
    for name in form.changed_data:
        if any(part in name.lower() for part in _SECRET_PARTS):
            changes[name] = "changed (not shown)"
            continue
        field = form.fields.get(name)
        before = form.initial.get(name)
        if field is not None and before is not None and hasattr(field, "queryset"):
            try:  # initial holds primary keys of a relation: name the objects
                many = isinstance(before, list | tuple | set)
                found = field.queryset.filter(pk__in=before if many else [before])
                before = list(found) if many else found.first()
            except (TypeError, ValueError):
                pass
        changes[name] = {"before": _shown(before), "after": _shown(form.cleaned_data.get(name))}
    return changes


def _wrap_construct_change_message() -> None:
    """Note each changed field's before and after values for the staff.action record."""
    from django.contrib.admin import ModelAdmin

    original = ModelAdmin.construct_change_message
    if getattr(original, "_audited", False):
        return

    @functools.wraps(original)
    def construct_change_message(self, request, form, formsets, add=False):
        if not add and form is not None and form.is_bound and hasattr(form, "cleaned_data"):
            request.audit_changes = _changes_noted(form)
        return original(self, request, form, formsets, add)

    construct_change_message._audited = True
    ModelAdmin.construct_change_message = construct_change_message


def _subject_user(log_entry: LogEntry, model_class) -> int | None:
    """The user an admin action is about: the user edited, or the owner of the object."""
    object_id = str(log_entry.object_id)
    if model_class is None:
        return None
    if model_class is get_user_model():
        return int(object_id) if object_id.isdigit() else None
    # A forward key to a user (a device's, an API key's), not a reverse relation (a group's).
    if not any(
        f.name == "user" and f.many_to_one and f.concrete for f in model_class._meta.get_fields()
    ):
        return None
    try:
        return (
            model_class._base_manager.filter(pk=object_id).values_list("user_id", flat=True).first()
        )
    except (TypeError, ValueError):
        return None


def _staff_action_entries(log_entry: LogEntry) -> list:
    content_type = log_entry.content_type
    model = f"{content_type.app_label}.{content_type.model}" if content_type else None
    model_class = content_type.model_class() if content_type else None
    subject_user = _subject_user(log_entry, model_class)
    actor = log_entry.user if log_entry.user_id else None
    request = admin_request.get()
    action = _ACTIONS.get(log_entry.action_flag, str(log_entry.action_flag))
    payload = {
        "action": action,
        "model": model,
        "object_id": str(log_entry.object_id),
        "object_repr": log_entry.object_repr,
        "change_message": log_entry.get_change_message(),
        "log_entry_id": log_entry.pk,
    }
    changes = getattr(request, "audit_changes", None) if action == "change" else None
    if changes:
        payload["changes"] = changes
    symbol = getattr(model_class, "__name__", "") == "Instrument" and log_entry.object_repr
    entries = [
        audit_entry(
            event_type=AuditEvent.STAFF_ACTION,
            actor=actor,
            user_id=subject_user,
            symbol=symbol or None,
            channel=AuditChannel.ADMIN,
            payload=payload,
            request=request,
        )
    ]
    if model in _TWO_FACTOR_MODELS and action == "deletion" and subject_user is not None:
        # A staff reset of someone's second factor: in that user's activity, as their own is.
        entries.append(
            audit_entry(
                event_type=AuditEvent.TWO_FACTOR_DISABLED,
                actor=actor,
                user_id=subject_user,
                channel=AuditChannel.ADMIN,
                payload={"method": "staff_reset", "device": log_entry.object_repr},
                request=request,
            )
        )
    return entries


def record_staff_action(sender, instance: LogEntry, created: bool, raw: bool = False, **kwargs):
    """post_save of LogEntry: record the admin action with its object and change message."""
    if created and not raw:
        audit_record_many(records=_staff_action_entries(instance))


def _wrap_log_actions() -> None:
    """Record the LogEntries that `log_actions` bulk-creates (no post_save for those)."""
    original = LogEntryManager.log_actions
    if getattr(original, "_audited", False):
        return

    @functools.wraps(original)
    def log_actions(self, *args: Any, **kwargs: Any):
        result = original(self, *args, **kwargs)
        if isinstance(result, list) and len(result) > 1:
            audit_record_many(
                records=[record for entry in result for record in _staff_action_entries(entry)]
            )
        return result

    log_actions._audited = True
    LogEntryManager.log_actions = log_actions


def record_login(sender, request, user, **kwargs) -> None:
    audit_record(event_type=AuditEvent.LOGIN, actor=user, user_id=user.pk, request=request)


def record_logout(sender, request, user, **kwargs) -> None:
    audit_record(
        event_type=AuditEvent.LOGOUT,
        actor=user,
        user_id=getattr(user, "pk", None),
        request=request,
    )


def record_login_failed(sender, credentials: dict, request=None, **kwargs) -> None:
    """Record the attempted username (never the password) and, if it exists, that user."""
    username_field = get_user_model().USERNAME_FIELD
    attempted = credentials.get(username_field) or credentials.get("username")
    attempted = str(attempted)[:200] if attempted is not None else None
    user_id = (
        get_user_model()
        .objects.filter(**{username_field: attempted})
        .values_list("pk", flat=True)
        .first()
        if attempted
        else None
    )
    audit_record(
        event_type=AuditEvent.LOGIN_FAILED,
        actor=None if request is None else "anonymous",
        user_id=user_id,
        request=request,
        payload={"attempted_username": attempted},
    )


def connect() -> None:
    """Connect the receivers (called once from AuditConfig.ready)."""
    post_save.connect(record_staff_action, sender=LogEntry, dispatch_uid="audit_staff_action")
    user_logged_in.connect(record_login, dispatch_uid="audit_login")
    user_logged_out.connect(record_logout, dispatch_uid="audit_logout")
    user_login_failed.connect(record_login_failed, dispatch_uid="audit_login_failed")
    _wrap_log_actions()
    _wrap_construct_change_message()

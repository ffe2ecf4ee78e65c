"""What the trail records today without the order path: sign-ins, sign-outs, admin actions.

Staff actions: every `LogEntry` the Django admin writes becomes a `staff.action` record in the
same transaction (the admin's). Single entries arrive through post_save; the admin's bulk
deletions use `bulk_create`, which sends no signal, so `LogEntryManager.log_actions` is
wrapped to record those too.
"""

from __future__ import annotations

import functools
from typing import Any

from django.contrib.admin.models import ADDITION, CHANGE, DELETION, LogEntry, LogEntryManager
from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.db.models.signals import post_save

from audit.events import AuditChannel, AuditEvent
from audit.services import audit_entry, audit_record, audit_record_many

_ACTIONS = {ADDITION: "addition", CHANGE: "change", DELETION: "deletion"}


def _staff_action_entry(log_entry: LogEntry):
    content_type = log_entry.content_type
    model = f"{content_type.app_label}.{content_type.model}" if content_type else None
    user_model = get_user_model()
    subject_user = None
    if content_type is not None and content_type.model_class() is user_model:
        subject_user = int(log_entry.object_id) if str(log_entry.object_id).isdigit() else None
    actor = log_entry.user if log_entry.user_id else None
    return audit_entry(
        event_type=AuditEvent.STAFF_ACTION,
        actor=actor,
        user_id=subject_user,
        channel=AuditChannel.ADMIN,
        payload={
            "action": _ACTIONS.get(log_entry.action_flag, str(log_entry.action_flag)),
            "model": model,
            "object_id": str(log_entry.object_id),
            "object_repr": log_entry.object_repr,
            "change_message": log_entry.get_change_message(),
            "log_entry_id": log_entry.pk,
        },
    )


def record_staff_action(sender, instance: LogEntry, created: bool, raw: bool = False, **kwargs):
    """post_save of LogEntry: record the admin action with its object and change message."""
    if created and not raw:
        audit_record_many(records=[_staff_action_entry(instance)])


def _wrap_log_actions() -> None:
    """Record the LogEntries that `log_actions` bulk-creates (no post_save for those)."""
    original = LogEntryManager.log_actions
    if getattr(original, "_audited", False):
        return

    @functools.wraps(original)
    def log_actions(self, *args: Any, **kwargs: Any):
        result = original(self, *args, **kwargs)
        if isinstance(result, list) and len(result) > 1:
            audit_record_many(records=[_staff_action_entry(entry) for entry in result])
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

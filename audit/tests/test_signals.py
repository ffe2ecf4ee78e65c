"""Logins, failed logins, logouts and admin actions leave records, through the test client.

Staff reach the admin through a session verified with two-factor authentication
(accounts/tests/otp_login.py computes the codes from the device's secret)."""

import pytest
from django.contrib.auth.models import Group
from django.test import Client

from accounts.tests.otp_login import verified_client
from audit.events import AuditChannel, AuditEvent
from audit.models import AuditRecord

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery 9"


def test_login_and_logout_are_recorded_with_request_context(make_user):
    user = make_user(staff=True)
    client = Client(REMOTE_ADDR="192.0.2.4")
    response = client.post("/accounts/login/", {"email": user.email, "password": PASSWORD})
    assert response.status_code == 302
    login = AuditRecord.objects.get(event_type=AuditEvent.LOGIN, user_id=user.pk)
    assert (login.actor_id, login.ip, login.channel) == (user.pk, "192.0.2.4", AuditChannel.WEB)
    assert login.session_hash and len(login.session_hash) == 64
    assert client.session.session_key not in login.session_hash
    client.post("/accounts/logout/")
    assert AuditRecord.objects.filter(event_type=AuditEvent.LOGOUT, user_id=user.pk).exists()


def test_failed_login_records_the_attempted_username_never_the_password(make_user):
    user = make_user(staff=True)
    Client(REMOTE_ADDR="192.0.2.5").post(
        "/accounts/login/", {"email": user.email, "password": "wrong-Secret-77"}
    )
    failed = AuditRecord.objects.get(event_type=AuditEvent.LOGIN_FAILED, user_id=user.pk)
    assert failed.payload == {"attempted_username": user.username}
    assert "wrong-Secret-77" not in str(failed.payload)


def test_admin_action_is_recorded_as_a_staff_action_with_object_and_message(make_user):
    admin_user = make_user(superuser=True)
    client = verified_client(admin_user)
    response = client.post("/admin/auth/group/add/", {"name": "desk-7"})
    assert response.status_code == 302
    group = Group.objects.get(name="desk-7")
    record = AuditRecord.objects.get(event_type=AuditEvent.STAFF_ACTION, actor_id=admin_user.pk)
    assert record.channel == AuditChannel.ADMIN
    assert record.payload["action"] == "addition"
    assert record.payload["model"] == "auth.group"
    assert record.payload["object_id"] == str(group.pk)
    assert record.payload["change_message"] == "Added."


def test_bulk_admin_deletion_records_one_staff_action_per_object(make_user):
    admin_user = make_user(superuser=True)
    groups = [Group.objects.create(name=f"bulk-{i}") for i in range(3)]
    client = verified_client(admin_user)
    client.post(
        "/admin/auth/group/",
        {"action": "delete_selected", "_selected_action": [g.pk for g in groups], "post": "yes"},
    )
    deletions = AuditRecord.objects.filter(
        event_type=AuditEvent.STAFF_ACTION, actor_id=admin_user.pk, payload__action="deletion"
    )
    assert sorted(r.payload["object_id"] for r in deletions) == sorted(str(g.pk) for g in groups)


def test_compliance_admin_is_read_only_and_shows_sealer_lag_and_order_history(make_user):
    from audit.services import audit_record

    audit_record(event_type=AuditEvent.ORDER_SUBMITTED, order_id=9_300_001, payload={"q": "1"})
    officer = make_user(compliance=True)
    client = verified_client(officer)
    changelist = client.get("/admin/audit/auditrecord/")
    assert changelist.status_code == 200
    assert b"audit-seal-lag" in changelist.content and b"unsealed" in changelist.content
    assert client.get("/admin/audit/auditrecord/add/").status_code == 403
    assert client.get("/admin/audit/auditrecord/?q=9300001").status_code == 200
    assert client.get("/admin/audit/auditrecord/?q=abc").status_code == 200
    history = client.get("/admin/audit/auditrecord/order-history/9300001/")
    assert history.status_code == 200 and b"Order submitted" in history.content
    # The payload as JSON (it had shown Python's repr: {'q': '1'}).
    assert b"{&quot;q&quot;: &quot;1&quot;}" in history.content
    other = make_user(staff=True)
    verified_client(other, client)
    assert client.get("/admin/audit/auditrecord/").status_code == 403

"""Fixtures of the audit tests: compliance staff, ordinary users, a run-unique marker."""

import uuid

import pytest
from django.contrib.auth.models import Group, Permission


@pytest.fixture
def make_user(django_user_model):
    def make(*, compliance: bool = False, staff: bool = False, superuser: bool = False):
        name = f"u{uuid.uuid4().hex[:10]}"
        user = django_user_model.objects.create_user(
            username=name,
            email=f"{name}@example.test",
            password="correct horse battery 9",
            is_staff=staff or compliance or superuser,
            is_superuser=superuser,
        )
        if compliance:
            # The data migration creates this group; a transactional test's flush may have
            # emptied the auth tables since, so make sure it is there.
            group, _ = Group.objects.get_or_create(name="compliance")
            group.permissions.add(
                Permission.objects.get(content_type__app_label="audit", codename="view_audit_trail")
            )
            user.groups.add(group)
        return user

    return make


@pytest.fixture
def marker() -> str:
    """A value unique to this test, to find its own records among everyone's."""
    return uuid.uuid4().hex

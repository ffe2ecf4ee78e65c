"""API key services: creation (secret once, stored encrypted), revocation, last use, audit."""

import datetime as dt

import pytest
from django.test import override_settings

from accounts.api_keys import (
    api_key_create,
    api_key_credentials,
    api_key_for_user,
    api_key_mark_used,
    api_key_revoke,
    api_keys_for_user,
    secret_decrypt,
)
from accounts.models import APIKey
from audit.events import AuditEvent
from audit.models import AuditRecord
from exchange.api_errors import ApiError
from exchange.tests.api_client import make_user

pytestmark = pytest.mark.django_db

T0 = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)


def test_a_new_key_gets_read_only_and_its_secret_is_stored_encrypted():
    user = make_user()
    created = api_key_create(user=user, label="  bot  ")
    key = APIKey.objects.get(pk=created.api_key.pk)
    assert key.label == "bot" and key.permissions == ["read"]
    assert created.secret not in key.secret_encrypted
    assert secret_decrypt(key.secret_encrypted) == created.secret
    assert len(key.key) == 32 and key.key != created.secret
    credentials, owner = api_key_credentials(key.key)
    assert owner == user and credentials.secret == created.secret
    assert credentials.permissions == {"read"} and not credentials.revoked


def test_creating_a_key_is_audited_without_its_secret():
    user = make_user()
    created = api_key_create(
        user=user, label="trader", permissions=["read", "trade"], ip_allowlist=["10.1.2.3"]
    )
    [record] = AuditRecord.objects.filter(event_type=AuditEvent.API_KEY_CREATED, user_id=user.pk)
    assert record.actor_id == user.pk
    assert record.payload == {
        "api_key_id": created.api_key.pk,
        "key": created.api_key.key,
        "label": "trader",
        "permissions": ["read", "trade"],
        "ip_allowlist": ["10.1.2.3/32"],
    }
    assert created.secret not in str(record.payload)


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"label": ""}, "label"),
        ({"label": "x" * 101}, "label"),
        ({"permissions": []}, "permissions"),
        ({"permissions": ["read", "admin"]}, "permissions"),
        ({"permissions": "trade"}, "permissions"),
        ({"ip_allowlist": ["10.0.0.300"]}, "ip_allowlist"),
        ({"ip_allowlist": ["10.0.0.0/33"]}, "ip_allowlist"),
        ({"ip_allowlist": [f"10.0.0.{n}" for n in range(51)]}, "ip_allowlist"),
    ],
)
def test_invalid_key_settings_are_refused_naming_the_field(options, field):
    user = make_user()
    with pytest.raises(ApiError) as refused:
        api_key_create(user=user, **{"label": "k", **options})
    assert refused.value.error == "InvalidParameter" and refused.value.field == field
    assert not APIKey.objects.filter(user=user).exists()


def test_the_allow_list_is_kept_as_normalised_networks():
    created = api_key_create(
        user=make_user(),
        label="k",
        ip_allowlist=["192.0.2.7", "198.51.100.77/24", "2001:DB8::1", "192.0.2.7"],
    )
    assert created.api_key.ip_allowlist == ["192.0.2.7/32", "198.51.100.0/24", "2001:db8::1/128"]


def test_revoking_is_final_audited_once_and_the_key_stops_authenticating():
    user = make_user()
    created = api_key_create(user=user, label="k", permissions=["trade"])
    revoked = api_key_revoke(api_key=created.api_key, actor=user)
    assert revoked.revoked_at is not None and not revoked.is_active
    again = api_key_revoke(api_key=created.api_key, actor=user)
    assert again.revoked_at == revoked.revoked_at
    assert (
        AuditRecord.objects.filter(event_type=AuditEvent.API_KEY_REVOKED, user_id=user.pk).count()
        == 1
    )
    credentials, _ = api_key_credentials(created.api_key.key)
    assert credentials.revoked


def test_last_use_is_written_at_most_once_per_interval():
    created = api_key_create(user=make_user(), label="k")
    credentials, _ = api_key_credentials(created.api_key.key)
    with override_settings(API_KEY_LAST_USED_INTERVAL_SECONDS=60):
        api_key_mark_used(credentials=credentials, ip="192.0.2.1", now=T0)
        api_key_mark_used(
            credentials=credentials, ip="192.0.2.2", now=T0 + dt.timedelta(seconds=59)
        )
        key = APIKey.objects.get(pk=credentials.id)
        assert (key.last_used_at, key.last_used_ip) == (T0, "192.0.2.1")
        later = T0 + dt.timedelta(seconds=61)
        api_key_mark_used(credentials=credentials, ip="192.0.2.3", now=later)
        key.refresh_from_db()
        assert (key.last_used_at, key.last_used_ip) == (later, "192.0.2.3")


def test_keys_are_listed_and_found_only_for_their_owner():
    alice, bob = make_user(), make_user()
    first = api_key_create(user=alice, label="one").api_key
    second = api_key_create(user=alice, label="two").api_key
    bobs = api_key_create(user=bob, label="bob").api_key
    assert list(api_keys_for_user(user=alice)) == [second, first]
    assert api_key_for_user(user=alice, api_key_id=first.pk) == first
    with pytest.raises(ApiError) as missing:
        api_key_for_user(user=alice, api_key_id=bobs.pk)
    assert (missing.value.error, missing.value.status_code) == ("ApiKeyNotFound", 404)


def test_a_secret_encrypted_under_another_encryption_key_counts_as_revoked():
    created = api_key_create(user=make_user(), label="k")
    with override_settings(API_KEY_ENCRYPTION_KEY="rotated-encryption-key"):
        credentials, _ = api_key_credentials(created.api_key.key)
    assert credentials.revoked and credentials.secret == ""


def test_unknown_keys_find_nothing():
    assert api_key_credentials("0" * 32) is None
    assert api_key_credentials("x" * 65) is None


def test_marking_a_freshly_used_key_costs_no_query(django_assert_num_queries):
    created = api_key_create(user=make_user(), label="k")
    credentials, _ = api_key_credentials(created.api_key.key)
    api_key_mark_used(credentials=credentials, ip="192.0.2.1")
    fresh, _ = api_key_credentials(created.api_key.key)
    assert fresh.last_used_at is not None
    with django_assert_num_queries(0):
        api_key_mark_used(credentials=fresh, ip="192.0.2.1")


def test_a_key_revoked_after_redis_lost_its_data_is_refused_at_once():
    # The revocation counter was a count: a flush set it back, the next revocation brought it
    # to a value a process had cached credentials under, and a key revoked elsewhere (another
    # web process, the admin) kept working from that process's cache until it expired.
    from django.utils import timezone

    from accounts.api_keys import api_key_credentials_cached, revocations_key
    from exchange.redis_connection import change_counter_bump, redis_client

    def revoked_elsewhere(key: APIKey | None) -> None:
        """What another process's revocation leaves here: the row, and the counter moved."""
        if key is not None:
            APIKey.objects.filter(pk=key.pk).update(revoked_at=timezone.now())
        change_counter_bump(revocations_key(), unsignalled="test")

    kept = api_key_create(user=make_user(), label="kept").api_key
    redis_client().delete(revocations_key())  # Redis lost its data
    assert not api_key_credentials_cached(kept.key)[0].revoked
    revoked_elsewhere(None)  # another key revoked: this process reads its keys again
    assert not api_key_credentials_cached(kept.key)[0].revoked
    redis_client().delete(revocations_key())  # lost again
    revoked_elsewhere(kept)
    assert api_key_credentials_cached(kept.key)[0].revoked

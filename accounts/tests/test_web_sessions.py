"""When a web session stops signing its user in (what sockets opened with it re-check)."""

import pytest
from django.test import Client

from accounts.tests.otp_login import make_person
from accounts.web_sessions import session_signs_in, sessions_ended_counter

pytestmark = pytest.mark.django_db(transaction=True)  # the counter moves on commit


def signed_in_session(person) -> tuple[Client, str]:
    browser = Client()
    browser.force_login(person)
    return browser, browser.cookies["sessionid"].value


def test_a_logout_ends_that_session_only_and_moves_the_counter():
    person = make_person()
    (leaving, leaving_key), (_, staying_key) = signed_in_session(person), signed_in_session(person)
    before = sessions_ended_counter()
    leaving.logout()
    assert sessions_ended_counter() != before
    assert not session_signs_in(session_key=leaving_key, user_id=person.pk)
    assert session_signs_in(session_key=staying_key, user_id=person.pk)


def test_a_new_password_or_a_deactivation_ends_the_sessions_and_moves_the_counter():
    person = make_person()
    _, key = signed_in_session(person)
    before = sessions_ended_counter()
    person.set_password("a different passphrase 7")
    person.save()
    assert sessions_ended_counter() != before
    assert not session_signs_in(session_key=key, user_id=person.pk)

    other = make_person()
    _, key = signed_in_session(other)
    before = sessions_ended_counter()
    other.is_active = False
    other.save(update_fields=["is_active"])
    assert sessions_ended_counter() != before
    assert not session_signs_in(session_key=key, user_id=other.pk)


def test_a_session_of_another_user_or_none_signs_nobody_in():
    person, other = make_person(), make_person()
    _, key = signed_in_session(person)
    assert not session_signs_in(session_key=key, user_id=other.pk)
    assert not session_signs_in(session_key=None, user_id=person.pk)
    assert not session_signs_in(session_key="no-such-session", user_id=person.pk)


def test_a_login_does_not_move_the_counter():
    person = make_person()
    before = sessions_ended_counter()
    signed_in_session(person)  # saves last_login
    assert sessions_ended_counter() == before


def test_sessions_past_their_expiry_are_deleted_nightly():
    import datetime as dt

    from django.conf import settings
    from django.contrib.sessions.models import Session
    from django.utils import timezone

    from accounts.tasks import web_sessions_clear_expired_task

    schedule = {e["task"]: e["schedule"] for e in settings.CELERY_BEAT_SCHEDULE.values()}
    nightly = schedule["accounts.tasks.web_sessions_clear_expired_task"]
    assert (nightly.hour, nightly.minute) == ({2}, {30})
    person = make_person()
    _, abandoned = signed_in_session(person)  # never logged out: the browser was closed
    _, live = signed_in_session(person)
    Session.objects.filter(session_key=abandoned).update(
        expire_date=timezone.now() - dt.timedelta(seconds=1)
    )
    web_sessions_clear_expired_task()
    assert not Session.objects.filter(session_key=abandoned).exists()
    assert Session.objects.filter(session_key=live).exists()
    assert session_signs_in(session_key=live, user_id=person.pk)

"""The Celery worker runs tasks for days: it keeps no query log from one task to the next."""

import pytest
from django.db import connection

from matching.tasks import expire_due_task


@pytest.mark.django_db
def test_a_task_logs_only_its_own_queries_under_debug(settings):
    """Under DEBUG (as `make run` sets it) Django logs every query until a request starts,
    which never happens in a worker: each process's log had kept the queries of every task
    (a few a second, from beat), up to Django's cap of 9,000."""
    settings.DEBUG = True
    with connection.cursor() as cursor:
        cursor.execute("SELECT 'before the task'")
    assert any("before the task" in query["sql"] for query in connection.queries_log)

    expire_due_task.apply()

    assert not any("before the task" in query["sql"] for query in connection.queries_log)

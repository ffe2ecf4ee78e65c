"""The Celery application: broker on Redis, tasks discovered in every installed app."""

import os

from celery import Celery
from celery.signals import task_prerun

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "exchange.settings")

app = Celery("exchange")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@task_prerun.connect
def query_log_forget(**_kwargs) -> None:
    """Each task is a request of its own: under DEBUG (`make run`) Django logs every query and
    forgets them only when a request starts, which never happens in a worker (its log had kept
    every task's queries, a few a second from beat, up to Django's cap of 9,000)."""
    from django.db import reset_queries

    reset_queries()

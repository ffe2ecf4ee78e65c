"""The Celery application: broker on Redis, tasks discovered in every installed app."""

import os

from celery import Celery
from celery.signals import task_prerun

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "exchange.settings")

app = Celery("exchange")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@task_prerun.connect
def task_query_log_forget(**_kwargs) -> None:
    """Each task is a request of its own (`exchange.view_threads.query_log_forget`): a worker
    process had kept every task's queries under DEBUG, a few a second from beat."""
    from exchange.view_threads import query_log_forget

    query_log_forget()

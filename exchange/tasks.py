"""Scheduled work of the exchange app itself."""

from celery import shared_task

from exchange.health import scheduler_heartbeat_write
from exchange.stalled_sessions import stalled_sessions_end


@shared_task(ignore_result=True)
def scheduler_heartbeat_task() -> None:
    """Every few seconds: show /healthz that Celery beat schedules and a worker runs tasks."""
    scheduler_heartbeat_write()


@shared_task(ignore_result=True)
def stalled_sessions_end_task() -> None:
    """Every few seconds: end this deployment's database sessions stopped mid-statement."""
    stalled_sessions_end()

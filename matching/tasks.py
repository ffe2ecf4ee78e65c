"""Scheduled work of the matching side."""

import time

from celery import shared_task
from django.conf import settings

from matching.services import shard_expire_due_enqueue


@shared_task(ignore_result=True)
def expire_due_task() -> None:
    """Every second: ask each shard's engine to expire GTD/DAY orders due by now."""
    now_ns = time.time_ns()
    for shard in range(settings.MATCHING_SHARDS):
        shard_expire_due_enqueue(shard=shard, now_ns=now_ns)

"""Scheduled work of the matching side."""

import time

from celery import shared_task
from django.conf import settings

from matching.services import shards_expire_due_enqueue


@shared_task(ignore_result=True)
def expire_due_task() -> None:
    """Every second: ask each shard that holds GTD/DAY orders due by now to expire them."""
    shards_expire_due_enqueue(now_ns=time.time_ns(), shard_count=settings.MATCHING_SHARDS)

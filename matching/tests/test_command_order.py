"""Command ids follow the order in which their transactions commit, so a shard's worker, which
polls above the highest id it has applied, never misses a smaller id committed late."""

import threading

import pytest
from django.db import connection, transaction

from matching.services import command_enqueue

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_transaction_draws_command_ids_only_once_an_earlier_one_has_committed():
    first_inserted = threading.Event()
    first_may_commit = threading.Event()
    ids: dict[str, int] = {}

    def first() -> None:
        try:
            with transaction.atomic():
                ids["first"] = command_enqueue(shard=0, kind="expire_due", payload={}).pk
                first_inserted.set()
                first_may_commit.wait(10)
        finally:
            connection.close()

    def second() -> None:
        try:
            # Another shard: the order holds across shards too.
            with transaction.atomic():
                ids["second"] = command_enqueue(shard=1, kind="expire_due", payload={}).pk
        finally:
            connection.close()

    first_thread = threading.Thread(target=first)
    first_thread.start()
    assert first_inserted.wait(10)
    second_thread = threading.Thread(target=second)
    second_thread.start()
    second_thread.join(0.5)
    still_waiting = second_thread.is_alive()
    first_may_commit.set()
    first_thread.join(10)
    second_thread.join(10)
    assert still_waiting, "the second transaction committed before the first, with a larger id"
    assert ids["second"] > ids["first"]

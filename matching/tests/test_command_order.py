"""Command ids follow the order in which their transactions commit, so a shard's worker, which
polls above the highest id it has applied, never misses a smaller id committed late."""

import pytest

from conftest import second_waits_for_first
from matching.services import command_enqueue

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_transaction_draws_command_ids_only_once_an_earlier_one_has_committed():
    still_waiting, first, second = second_waits_for_first(
        lambda: command_enqueue(shard=0, kind="expire_due", payload={}).pk,
        # Another shard: the order holds across shards too.
        lambda: command_enqueue(shard=1, kind="expire_due", payload={}).pk,
    )
    assert still_waiting, "the second transaction committed before the first, with a larger id"
    assert second > first

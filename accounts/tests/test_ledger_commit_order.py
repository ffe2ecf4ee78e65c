"""A user's ledger postings are numbered in the order their transactions commit, whichever
asset they move and whoever writes them (a web request's hold, the matching worker's batch), so
a client that reads `GET /ledger` above the last posting id it has seen misses none."""

from decimal import Decimal

import pytest

from accounts.ledger import funds_hold
from accounts.models import LedgerEntry, LedgerPosting
from accounts.settlement import HoldRelease, SettlementWriter
from conftest import second_waits_for_first
from exchange.tests.api_client import make_user

pytestmark = pytest.mark.django_db(transaction=True)


def posting_ids(entry_ids: list[int]) -> list[int]:
    return list(LedgerPosting.objects.filter(entry_id__in=entry_ids).values_list("id", flat=True))


def postings_wait(first_write, second_write) -> tuple[bool, list[int], list[int]]:
    """`second_waits_for_first`, with the posting ids of the entries each wrote."""
    still_waiting, first, second = second_waits_for_first(first_write, second_write)
    return still_waiting, posting_ids(first), posting_ids(second)


def test_a_hold_of_another_asset_waits_for_the_same_users_uncommitted_hold():
    user = make_user(funds={"USD": Decimal("100"), "BNC": Decimal("100")})
    still_waiting, first, second = postings_wait(
        lambda: [funds_hold(user=user, asset="USD", amount=Decimal("10"), order_id=None).pk],
        lambda: [funds_hold(user=user, asset="BNC", amount=Decimal("5"), order_id=None).pk],
    )
    assert still_waiting, "the BNC hold committed first, with larger posting ids than the USD one"
    assert min(second) > max(first)


def test_the_workers_settlement_waits_for_the_same_users_uncommitted_hold():
    user = make_user(funds={"USD": Decimal("100"), "BNC": Decimal("100")})
    funds_hold(user=user, asset="BNC", amount=Decimal("5"), order_id=None)

    def settle() -> list[int]:
        SettlementWriter().write(
            fills=[],
            releases=[HoldRelease(order_id=1, user_id=user.pk, asset="BNC", amount=Decimal("5"))],
        )
        return list(LedgerEntry.objects.filter(kind="release").values_list("id", flat=True))

    still_waiting, first, second = postings_wait(
        lambda: [funds_hold(user=user, asset="USD", amount=Decimal("10"), order_id=None).pk],
        settle,
    )
    assert still_waiting, "the worker's release committed first, numbered after the hold"
    assert min(second) > max(first)


def test_users_who_share_nothing_do_not_wait_for_each_other():
    alice = make_user("alice", funds={"USD": Decimal("100")})
    bob = make_user("bob", funds={"USD": Decimal("100")})
    still_waiting, _, _ = postings_wait(
        lambda: [funds_hold(user=alice, asset="USD", amount=Decimal("1"), order_id=None).pk],
        lambda: [funds_hold(user=bob, asset="USD", amount=Decimal("1"), order_id=None).pk],
    )
    assert not still_waiting

"""The ledger's write path in PostgreSQL: balanced entries only, balances never negative for
users, and `ledger_verify` naming what a tampered ledger breaks."""

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test import override_settings

from accounts.funds import deposit_create
from accounts.ledger import (
    CASH,
    EXTERNAL,
    LedgerUnbalanced,
    funds_deposit,
    funds_withdraw,
    ledger_post,
)
from accounts.models import LedgerAccount, LedgerEntry, LedgerPosting
from accounts.tests.fee_tier_data import new_instrument
from exchange.api_errors import ApiError
from exchange.tests.api_client import make_user

pytestmark = pytest.mark.django_db


def test_an_entry_that_does_not_sum_to_zero_is_refused():
    user = make_user(funds={})
    with pytest.raises(LedgerUnbalanced):
        ledger_post(
            kind=LedgerEntry.Kind.DEPOSIT,
            lines=[((EXTERNAL, None, "USD"), Decimal("-5")), ((CASH, user.pk, "USD"), 4)],
        )
    assert not LedgerEntry.objects.exists()


def test_withdrawing_more_than_available_writes_nothing():
    user = make_user(funds={"USD": Decimal("10.00")})
    entries = LedgerEntry.objects.count()
    with pytest.raises(ApiError) as refused:
        funds_withdraw(user=user, asset="USD", amount=Decimal("10.01"))
    assert refused.value.error == "InsufficientBalance" and refused.value.field == "amount"
    assert LedgerEntry.objects.count() == entries
    assert LedgerAccount.objects.get(user=user, kind="cash").balance == Decimal("10.00")


def test_the_database_refuses_a_negative_user_balance_whatever_the_caller():
    user = make_user(funds={"USD": Decimal("1.00")})
    with pytest.raises(Exception, match="ledger_user_balance_gte_0"):
        LedgerAccount.objects.filter(user=user, kind="cash").update(balance=Decimal("-0.01"))


def test_deposits_and_withdrawals_balance_against_the_outside_world():
    user = make_user(funds={"USD": Decimal("1.00")})  # the external account exists from here
    external_before = LedgerAccount.objects.get(user=None, kind="external", asset="USD").balance
    funds_deposit(user=user, asset="USD", amount=Decimal("100.00"))
    funds_withdraw(user=user, asset="USD", amount=Decimal("40.00"))
    external = LedgerAccount.objects.get(user=None, kind="external", asset="USD").balance
    cash = LedgerAccount.objects.get(user=user, kind="cash", asset="USD").balance
    assert (cash, external - external_before) == (Decimal("61.00"), Decimal("-60.00"))
    call_command("ledger_verify")


def test_ledger_verify_names_a_posting_written_behind_the_balances_back():
    user = make_user(funds={"USD": Decimal("5.00")})
    call_command("ledger_verify")
    entry = LedgerEntry.objects.filter(user=user).first() or LedgerEntry.objects.create(
        kind="deposit"
    )
    cash = LedgerAccount.objects.get(user=user, kind="cash")
    LedgerPosting.objects.create(entry=entry, account=cash, asset="USD", amount=Decimal("1"))
    with pytest.raises(CommandError) as broken:
        call_command("ledger_verify")
    message = str(broken.value)
    assert "entries that do not sum to zero per asset: 1" in message
    assert "accounts whose balance is not the sum of their postings: 1" in message


def test_ledger_verify_names_postings_whose_entry_or_account_is_missing():
    # Postings carry no foreign-key constraints in PostgreSQL (the worker's batch would pay two
    # deferred checks a posting): the database takes a dangling one, ledger_verify names it.
    user = make_user(funds={"USD": Decimal("5.00")})
    cash = LedgerAccount.objects.get(user=user, kind="cash")
    entry = LedgerEntry.objects.filter(user=user).first() or LedgerEntry.objects.create(
        kind="deposit"
    )
    missing_entry = (LedgerEntry.objects.order_by("-id").values_list("id", flat=True)[0]) + 1000
    missing_account = (LedgerAccount.objects.order_by("-id").values_list("id", flat=True)[0]) + 1000
    LedgerPosting.objects.create(
        entry_id=missing_entry, account=cash, asset="USD", amount=Decimal("1")
    )
    LedgerPosting.objects.create(
        entry=entry, account_id=missing_account, asset="USD", amount=Decimal("-1")
    )
    with pytest.raises(CommandError) as broken:
        call_command("ledger_verify")
    message = str(broken.value)
    assert "postings whose entry does not exist: 1" in message
    assert "postings whose account does not exist: 1" in message


def test_ledger_verify_names_the_rows_that_break_each_invariant():
    # It gave each broken invariant's count alone: the operator had to write the query that
    # finds the entry, the account or the order.
    user = make_user(funds={"USD": Decimal("5.00")})
    entry = LedgerEntry.objects.filter(user=user).first() or LedgerEntry.objects.create(
        kind="deposit"
    )
    cash = LedgerAccount.objects.get(user=user, kind="cash")
    posting = LedgerPosting.objects.create(
        entry=entry, account=cash, asset="USD", amount=Decimal("1")
    )
    with pytest.raises(CommandError) as broken:
        call_command("ledger_verify")
    message = str(broken.value)
    assert f"entry {entry.pk} USD sums to 1.000000000000" in message
    assert (
        f"account {cash.pk} (user {user.pk}, cash USD): balance 5.000000000000, "
        "postings 6.000000000000"
    ) in message
    LedgerPosting.objects.filter(pk=posting.pk).update(entry_id=entry.pk + 10_000)
    with pytest.raises(CommandError) as broken:
        call_command("ledger_verify")
    assert f"posting {posting.pk} (entry {entry.pk + 10_000})" in str(broken.value)


def test_the_demo_self_credit_is_capped_per_asset_and_only_for_yourself():
    new_instrument()  # lists USD (2 decimals) as an asset
    user, other = make_user(funds={}), make_user(funds={})
    with override_settings(DEMO_SELF_CREDIT_LIMIT="100"):
        deposit_create(user=user, asset="USD", amount=Decimal("60.00"), actor=user)
        with pytest.raises(ApiError) as over:
            deposit_create(user=user, asset="USD", amount=Decimal("40.01"), actor=user)
        assert over.value.error == "DepositNotAllowed" and over.value.status_code == 403
        assert "100 USD in total; 60 already credited" in over.value.message
        deposit_create(user=user, asset="USD", amount=Decimal("40.00"), actor=user)
        with pytest.raises(ApiError) as for_another:
            deposit_create(user=other, asset="USD", amount=Decimal("1.00"), actor=user)
        assert for_another.value.error == "DepositNotAllowed"
    assert LedgerAccount.objects.get(user=user, kind="cash", asset="USD").balance == 100
    with pytest.raises(ApiError) as off:  # the default: staff credit deposits
        deposit_create(user=user, asset="USD", amount=Decimal("1.00"), actor=user)
    assert off.value.error == "DepositNotAllowed"


@pytest.mark.django_db(transaction=True)
def test_parallel_self_credits_stay_within_the_demo_limit():
    # Each read the total credited before any was written: 4 of 600 passed a limit of 1,000.
    new_instrument()
    user = make_user(funds={})
    start = threading.Barrier(8)

    def credit(_) -> bool:
        start.wait()
        try:
            deposit_create(user=user, asset="USD", amount=Decimal("60.00"), actor=user)
            return True
        except ApiError:
            return False
        finally:
            connection.close()  # the thread's own

    with override_settings(DEMO_SELF_CREDIT_LIMIT="100"), ThreadPoolExecutor(8) as pool:
        credited = list(pool.map(credit, range(8)))
    assert credited.count(True) == 1
    assert LedgerAccount.objects.get(user=user, kind="cash", asset="USD").balance == 60


def test_balances_of_an_asset_listed_a_moment_ago_show_its_precision():
    """The asset precisions are cached per process for a moment: an asset listed meanwhile had
    been shown unformatted ("0" held, "50.2" available) in balances and balance events."""
    from accounts.balance_events import balance_events
    from accounts.selectors import asset_precisions_cached, balances_for_user

    asset_precisions_cached()  # cached now, without the asset below
    asset = f"N{uuid.uuid4().hex[:8].upper()}"
    new_instrument(base_asset=asset, base_precision=2, lot_size=Decimal("0.01"))
    user = make_user(funds={asset: Decimal("50.20")})
    shown = {"asset": asset, "available": "50.20", "held": "0.00", "total": "50.20"}
    [balance] = balances_for_user(user=user)
    assert balance.pop("version") > 0 and balance == shown
    rows = [(user.pk, asset, "cash", Decimal("50.20")), (user.pk, asset, "hold", Decimal(0))]
    assert balance_events(rows, version=1) == [{"user_id": user.pk, **shown, "version": 1}]

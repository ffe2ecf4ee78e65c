"""The double-entry ledger: accounts with cached balances, journal entries and their postings.

Every movement of money is one `LedgerEntry` whose `LedgerPosting`s sum to zero per asset.
A user has a `cash` (available) and a `hold` (reserved for open orders) account per asset; the
exchange has `fee_revenue`, `rebate_expense` and `external` (the outside world: deposits and
withdrawals) accounts per asset. `balance` is the sum of the account's postings, kept in step
by the one write path (`accounts.ledger`), with rows locked in primary-key order.
"""

import decimal
import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from django.conf import settings
from django.db import models
from django.db.models.functions import Now

LEDGER_AMOUNT = {"max_digits": 30, "decimal_places": 12}

# Python's default decimal context keeps 28 significant digits, and a ledger amount has up to
# 30 (a sum of two, 31). Ledger arithmetic in Python (sums, comparisons, an amount at its
# asset's precision) runs in this context instead, so that it is exact: for an asset of 12
# decimal places, a deposit of 10^16 had been refused as an unbalanced entry, one with its
# amount checked a 500, and a hold taken from such a balance moved the cached balance by a
# rounded delta.
LEDGER_DECIMAL_CONTEXT = decimal.Context(prec=2 * LEDGER_AMOUNT["max_digits"])


Params = ParamSpec("Params")
Result = TypeVar("Result")


def ledger_arithmetic(function: Callable[Params, Result]) -> Callable[Params, Result]:
    """Run `function` in LEDGER_DECIMAL_CONTEXT: exact Decimal arithmetic on ledger amounts."""

    @functools.wraps(function)
    def exact(*args: Params.args, **kwargs: Params.kwargs) -> Result:
        with decimal.localcontext(LEDGER_DECIMAL_CONTEXT):
            return function(*args, **kwargs)

    return exact


class LedgerAccount(models.Model):
    """One balance: a user's cash or hold in one asset, or one of the exchange's own accounts."""

    class Kind(models.TextChoices):
        CASH = "cash", "Available"
        HOLD = "hold", "Held for open orders"
        FEE_REVENUE = "fee_revenue", "Exchange fee revenue"
        REBATE_EXPENSE = "rebate_expense", "Exchange maker rebates paid"
        EXTERNAL = "external", "Outside the exchange (deposits and withdrawals)"

    USER_KINDS = (Kind.CASH, Kind.HOLD)

    kind = models.CharField(max_length=16, choices=Kind.choices)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="ledger_accounts",
    )
    asset = models.CharField(max_length=16)
    balance = models.DecimalField(default=0, db_default=0, **LEDGER_AMOUNT)
    updated_at = models.DateTimeField(auto_now=True, db_default=Now())
    # The version of the last balance event for the user's asset (cash and hold alike), set
    # in the transaction that drew it: GET /balances shows it, so a client keeps the newer of
    # a REST answer and a live event.
    balance_version = models.BigIntegerField(default=0, db_default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["kind", "user", "asset"],
                nulls_distinct=False,
                name="ledger_account_unique",
            ),
            # Users' balances never go negative; the exchange's may (rebates can exceed fees).
            models.CheckConstraint(
                condition=~models.Q(kind__in=["cash", "hold"]) | models.Q(balance__gte=0),
                name="ledger_user_balance_gte_0",
            ),
            models.CheckConstraint(
                condition=models.Q(kind__in=["cash", "hold"], user__isnull=False)
                | (~models.Q(kind__in=["cash", "hold"]) & models.Q(user__isnull=True)),
                name="ledger_account_owner",
            ),
        ]

    def __str__(self) -> str:
        owner = self.user_id if self.user_id else "exchange"
        return f"{owner}:{self.kind}:{self.asset}"


class LedgerEntry(models.Model):
    """One movement of money; its postings sum to zero per asset."""

    class Kind(models.TextChoices):
        DEPOSIT = "deposit", "Deposit"
        WITHDRAWAL = "withdrawal", "Withdrawal"
        HOLD = "hold", "Funds held for an order"
        RELEASE = "release", "Hold released"
        TRADE = "trade", "Trade settlement"

    kind = models.CharField(max_length=16, choices=Kind.choices)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="Whose request caused it (deposits, withdrawals, holds).",
    )
    # Plain ids, not foreign keys: the matching worker writes entries with COPY in its batch.
    order_id = models.BigIntegerField(null=True, blank=True)
    trade_id = models.BigIntegerField(null=True, blank=True)
    memo = models.CharField(max_length=200, blank=True, default="", db_default="")
    created_at = models.DateTimeField(auto_now_add=True, db_default=Now())

    class Meta:
        verbose_name_plural = "ledger entries"
        indexes = [
            models.Index(fields=["order_id"], name="ledger_entry_order"),
            models.Index(fields=["trade_id"], name="ledger_entry_trade"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} #{self.pk}"


class LedgerPosting(models.Model):
    """One side of an entry: `amount` (signed) added to `account`'s balance."""

    # No constraint in PostgreSQL on either key (db_constraint=False): postings are written
    # only with their entry, in its transaction, on accounts resolved in it, and the per-row
    # check cost the matching worker two deferred lookups a posting (~8 us of its ~57 us of
    # database time a command). `ledger_verify` counts postings whose entry or account is
    # missing instead.
    entry = models.ForeignKey(
        LedgerEntry, on_delete=models.PROTECT, related_name="postings", db_constraint=False
    )
    # Indexed by the (account, -id) index below, not by a second one of its own.
    account = models.ForeignKey(
        LedgerAccount,
        on_delete=models.PROTECT,
        related_name="postings",
        db_index=False,
        db_constraint=False,
    )
    asset = models.CharField(max_length=16)
    amount = models.DecimalField(**LEDGER_AMOUNT)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=~models.Q(amount=0), name="ledger_posting_nonzero")
        ]
        indexes = [models.Index(fields=["account", "-id"], name="ledger_posting_account")]

    def __str__(self) -> str:
        return f"{self.account} {self.amount:+}"

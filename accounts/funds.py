"""Deposits and withdrawals: who may move money in and out, validated, posted and audited.

Staff credit deposits (a user cannot create money), except that the demo setting
`DEMO_SELF_CREDIT_LIMIT` lets a user credit themselves up to that total per asset. A withdrawal
takes the user's own available funds. Each is one ledger entry and one audit row, in one
transaction.
"""

from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.db.models import Sum

from accounts.ledger import funds_deposit, funds_withdraw, users_lock
from accounts.models import LedgerEntry, LedgerPosting
from accounts.models.ledger import ledger_arithmetic
from accounts.selectors import asset_precisions
from audit.events import AuditEvent
from audit.services import audit_record
from exchange.errors import trading_error

# What each demo account (the demo market maker, its takers, the demo traders) starts with.
DEMO_FUNDS = {
    "USD": Decimal("100000000"),
    "AAPL": Decimal("1000000"),
    "MSFT": Decimal("1000000"),
    "BTC": Decimal("10000"),
}


def unknown_asset_error(asset: str):
    """The 400 UnknownAsset for an asset no instrument lists (deposits, withdrawals, the
    ledger's filter)."""
    return trading_error(
        "UnknownAsset",
        f"unknown asset {asset[:20]!r}; assets are the base and quote of GET /api/v1/symbols",
        field="asset",
    )


@ledger_arithmetic
def _validated(asset: str, amount: Decimal) -> tuple[str, Decimal]:
    places = asset_precisions().get(asset)
    if places is None:
        raise unknown_asset_error(asset)
    if amount <= 0:
        raise trading_error("InvalidNumber", "amount must be greater than zero", field="amount")
    if amount != amount.quantize(Decimal(1).scaleb(-places)):
        raise trading_error(
            "AmountTooPrecise",
            f"amount has more than {places} decimal places, the precision of {asset}",
            field="amount",
        )
    return asset, amount


def _self_credited(user, asset: str) -> Decimal:
    total = LedgerPosting.objects.filter(
        entry__kind=LedgerEntry.Kind.DEPOSIT,
        entry__memo="self-credit",
        account__user=user,
        asset=asset,
    ).aggregate(total=Sum("amount"))["total"]
    return total or Decimal(0)


# Crediting funds creates money: staff need this permission (a superuser has every one), not
# only the staff flag (any staff member, with any API key, could credit any user).
DEPOSIT_PERMISSION = "accounts.add_ledgerentry"


def _credits_deposits(actor) -> bool:
    """Staff with DEPOSIT_PERMISSION credit deposits to anyone."""
    return actor.is_staff and actor.has_perm(DEPOSIT_PERMISSION)


def may_deposit(*, actor) -> bool:
    """Whether `actor` may credit a deposit (to someone, or to themselves in a demo)."""
    return _credits_deposits(actor) or Decimal(settings.DEMO_SELF_CREDIT_LIMIT) > 0


@transaction.atomic
@ledger_arithmetic
def deposit_create(*, user, asset: str, amount: Decimal, actor, http_request=None) -> LedgerEntry:
    """Credit `amount` of `asset` to `user`: by staff with DEPOSIT_PERMISSION, or by the user
    within the demo limit."""
    asset, amount = _validated(asset, amount)
    self_credit = not _credits_deposits(actor)
    if self_credit:
        limit = Decimal(settings.DEMO_SELF_CREDIT_LIMIT)
        if actor.pk != user.pk or limit <= 0:
            raise trading_error(
                "DepositNotAllowed",
                "deposits are credited by exchange staff",
                http_status=403,
            )
        # Read under the user's ledger lock: parallel self-credits had each read the total
        # before any was written (four credits of 600 passed a limit of 1,000).
        users_lock(user_ids=[user.pk])
        already = _self_credited(user, asset)
        if already + amount > limit:
            raise trading_error(
                "DepositNotAllowed",
                f"demo self-credit is limited to {limit.normalize():f} {asset} in total; "
                f"{already.normalize():f} already credited",
                field="amount",
                http_status=403,
            )
    entry = funds_deposit(
        user=user, asset=asset, amount=amount, memo="self-credit" if self_credit else "staff"
    )
    audit_record(
        event_type=AuditEvent.DEPOSIT,
        actor=actor,
        user_id=user.pk,
        payload={
            "asset": asset,
            "amount": amount,
            "entry_id": entry.pk,
            "self_credit": self_credit,
        },
        request=http_request,
    )
    return entry


@transaction.atomic
def withdrawal_create(
    *, user, asset: str, amount: Decimal, actor, http_request=None
) -> LedgerEntry:
    """Pay `amount` of the user's available `asset` out (400 InsufficientBalance otherwise)."""
    asset, amount = _validated(asset, amount)
    entry = funds_withdraw(user=user, asset=asset, amount=amount, memo="withdrawal")
    audit_record(
        event_type=AuditEvent.WITHDRAWAL,
        actor=actor,
        user_id=user.pk,
        payload={"asset": asset, "amount": amount, "entry_id": entry.pk},
        request=http_request,
    )
    return entry


@transaction.atomic
def demo_funds_grant(*, user, amounts: dict[str, Decimal]) -> None:
    """Fund a demo account (the demo market maker and demo traders) from outside, audited as
    deposits by the system."""
    for asset, amount in amounts.items():
        entry = funds_deposit(user=user, asset=asset, amount=amount, memo="demo funds")
        audit_record(
            event_type=AuditEvent.DEPOSIT,
            actor=None,
            user_id=user.pk,
            payload={"asset": asset, "amount": amount, "entry_id": entry.pk, "demo": True},
        )

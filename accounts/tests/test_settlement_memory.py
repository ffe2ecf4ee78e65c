"""What the matching worker's settlement keeps in memory stays bounded over its life."""

from decimal import Decimal

import pytest
from django.db import transaction

from accounts import settlement
from accounts.ledger import funds_hold
from accounts.models import LedgerAccount
from accounts.settlement import HoldRelease, SettlementWriter
from exchange.tests.api_client import make_user

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_account_ids_a_worker_remembers_start_over_at_their_bound(monkeypatch):
    monkeypatch.setattr(settlement, "ACCOUNT_IDS_MAX", 6, raising=False)
    users = [make_user("settled", funds={"USD": Decimal("100")}) for _ in range(5)]
    for user in users:
        funds_hold(user=user, asset="USD", amount=Decimal("10"), order_id=None)
    writer = SettlementWriter()  # one per worker, for as long as it runs
    for user in users:  # each release moves the user's hold and cash accounts
        with transaction.atomic():
            writer.write(
                fills=[],
                releases=[
                    HoldRelease(order_id=1, user_id=user.pk, asset="USD", amount=Decimal("10"))
                ],
            )
        assert len(writer._account_ids) <= 6
    for user in users:
        balances = dict(
            LedgerAccount.objects.filter(user=user, asset="USD").values_list("kind", "balance")
        )
        assert balances == {"cash": Decimal("100"), "hold": Decimal("0")}

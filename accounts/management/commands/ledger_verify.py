"""Check the ledger's invariants: entries balance, accounts sum to zero per asset, cached
balances equal their postings, and users' holds equal their open orders' holds."""

from django.core.management.base import BaseCommand, CommandError

from accounts.selectors import ledger_discrepancies
from exchange.schema_state import schema_migrated_require


class Command(BaseCommand):
    help = "Verify the double-entry ledger; exits non-zero naming each broken invariant."

    def handle(self, *args, **options) -> None:
        schema_migrated_require()
        broken = ledger_discrepancies()
        if broken:
            lines = [f"{name}: {count}" for name, count in broken.items()]
            raise CommandError("ledger inconsistent:\n" + "\n".join(lines))
        self.stdout.write("ledger OK: every entry and every asset sums to zero; holds match")

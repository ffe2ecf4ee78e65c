"""Check the ledger's invariants: entries balance, accounts sum to zero per asset, cached
balances equal their postings, and users' holds equal their open orders' holds."""

from django.core.management.base import BaseCommand, CommandError

from accounts.selectors import ledger_discrepancies, ledger_discrepancy_examples
from exchange.schema_state import schema_migrated_require


class Command(BaseCommand):
    help = (
        "Verify the double-entry ledger; exits non-zero naming each broken invariant and the "
        "first rows that break it."
    )

    def handle(self, *args, **options) -> None:
        schema_migrated_require()
        broken = ledger_discrepancies()
        if broken:
            lines = []
            for name, count in broken.items():
                lines.append(f"{name}: {count}")
                lines += [f"  {example}" for example in ledger_discrepancy_examples(name=name)]
            raise CommandError("ledger inconsistent:\n" + "\n".join(lines))
        self.stdout.write("ledger OK: every entry and every asset sums to zero; holds match")

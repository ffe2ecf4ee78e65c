"""`manage.py audit_verify`: re-walk records and seals; exit 1 naming the first bad record."""

from django.core.management.base import BaseCommand, CommandError

from audit.verify import audit_chain_verify
from exchange.schema_state import schema_migrated_require


class Command(BaseCommand):
    help = "Verify the audit trail's hash chain; names the first record that does not match."

    def add_arguments(self, parser):
        parser.add_argument("--batch-size", type=int, default=20_000)

    def handle(self, *args, batch_size: int, **options) -> None:
        schema_migrated_require()
        result = audit_chain_verify(batch_size=batch_size)
        if not result.ok:
            raise CommandError(
                f"audit chain broken at seq {result.bad_seq}: {result.reason} "
                f"({result.checked} records verified before it)"
            )
        self.stdout.write(
            self.style.SUCCESS(
                f"audit chain ok: {result.checked} sealed records verified, "
                f"last sealed seq {result.last_seq}"
            )
        )

"""`manage.py audit_partitions [--days-ahead N]`: create daily partitions now (on demand)."""

from django.conf import settings
from django.core.management.base import BaseCommand
from django.utils import timezone

from audit.archive import audit_partitions_ensure


class Command(BaseCommand):
    help = "Create today's and the next days' audit partitions (the Celery task does it too)."

    def add_arguments(self, parser):
        parser.add_argument("--days-ahead", type=int, default=None)

    def handle(self, *args, days_ahead: int | None, **options) -> None:
        ahead = settings.AUDIT_PARTITION_DAYS_AHEAD if days_ahead is None else days_ahead
        failed = audit_partitions_ensure(today=timezone.now().date(), days_ahead=ahead)
        for day in failed:
            self.stderr.write(f"{day}: rows already in the default partition; not created")
        self.stdout.write(f"audit partitions ensured for {ahead + 1} days")

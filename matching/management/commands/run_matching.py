"""`python manage.py run_matching --shard N`: run the matching worker of one shard."""

import sys

from django.core.management.base import BaseCommand, CommandError

from exchange.schema_state import schema_migrated_require
from matching.worker import ShardWorker


class Command(BaseCommand):
    help = "Run the matching worker of one shard (a second one for the same shard is a standby)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--shard", type=int, default=0)

    def handle(self, *args, shard: int, **options) -> None:
        schema_migrated_require()
        try:
            worker = ShardWorker(shard=shard)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        worker.install_signal_handlers()
        sys.exit(worker.run())

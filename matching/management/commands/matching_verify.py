"""`python manage.py matching_verify --shard N`: journal replay hash == rebuilt hash?"""

import sys

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from exchange.schema_state import schema_migrated_require
from matching.models import ShardState
from matching.recovery import RecoveryError
from matching.replay import shard_verify


class Command(BaseCommand):
    help = (
        "Replay the shard's journal into a fresh engine and compare its state hash with the "
        "engine rebuilt from PostgreSQL; exits 1 on a mismatch (a journal entry missing, one "
        "that cannot be replayed, or a state that differs), naming what differs."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--shard", type=int, default=0)

    def handle(self, *args, shard: int, **options) -> None:
        schema_migrated_require()
        if not 0 <= shard < settings.MATCHING_SHARDS:
            # As run_matching refuses it: a mistyped shard had read as a passed check.
            raise CommandError(
                f"shard {shard} does not exist (MATCHING_SHARDS={settings.MATCHING_SHARDS})"
            )
        if not ShardState.objects.filter(shard=shard).exists():
            self.stdout.write(f"shard {shard}: no state yet, nothing to verify")
            return
        try:
            result = shard_verify(shard)
        except RecoveryError as exc:
            raise CommandError(f"{exc}\nMISMATCH") from exc
        self.stdout.write(f"shard {shard}: {result.entries} journal entries replayed")
        self.stdout.write(f"replayed hash: {result.replayed_hash}")
        self.stdout.write(f"rebuilt hash:  {result.rebuilt_hash}")
        if result.event_mismatches:
            self.stdout.write(f"entries whose replayed events differ: {result.event_mismatches}")
        if not result.ok:
            for line in [*result.journal_problems, *result.differences]:
                self.stderr.write(line)
            self.stderr.write("MISMATCH")
            sys.exit(1)
        self.stdout.write("OK")

"""`python manage.py matching_verify [--shard N]`: journal replay hash == rebuilt hash, for
one shard or (without --shard) every shard?"""

import sys

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from exchange.schema_state import schema_migrated_require
from matching.models import ShardState
from matching.recovery import RecoveryError
from matching.replay import shard_verify


class Command(BaseCommand):
    help = (
        "Replay a shard's journal into a fresh engine and compare its state hash with the "
        "engine rebuilt from PostgreSQL, for --shard N or, without it, every shard; exits 1 on "
        "a mismatch (a journal entry missing, one that cannot be replayed, or a state that "
        "differs), naming what differs."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--shard", type=int, default=None, help="one shard (default: all)")

    def handle(self, *args, shard: int | None, **options) -> None:
        schema_migrated_require()
        if shard is not None and not 0 <= shard < settings.MATCHING_SHARDS:
            # As run_matching refuses it: a mistyped shard had read as a passed check.
            raise CommandError(
                f"shard {shard} does not exist (MATCHING_SHARDS={settings.MATCHING_SHARDS})"
            )
        # Without --shard, every shard: it had checked shard 0 alone, and an operator of two
        # shards read its OK as the exchange's.
        shards = [shard] if shard is not None else range(settings.MATCHING_SHARDS)
        mismatched = [n for n in shards if not self._verify(n)]
        if mismatched:
            self.stderr.write(f"MISMATCH (shard {', '.join(map(str, mismatched))})")
            sys.exit(1)
        self.stdout.write("OK")

    def _verify(self, shard: int) -> bool:
        """Verify one shard, writing what it found; whether it matched."""
        if not ShardState.objects.filter(shard=shard).exists():
            self.stdout.write(f"shard {shard}: no state yet, nothing to verify")
            return True
        try:
            result = shard_verify(shard)
        except RecoveryError as exc:
            self.stderr.write(f"shard {shard}: {exc}")
            return False
        self.stdout.write(f"shard {shard}: {result.entries} journal entries replayed")
        self.stdout.write(f"replayed hash: {result.replayed_hash}")
        self.stdout.write(f"rebuilt hash:  {result.rebuilt_hash}")
        if result.event_mismatches:
            self.stdout.write(f"entries whose replayed events differ: {result.event_mismatches}")
        for line in [*result.journal_problems, *result.differences]:
            self.stderr.write(line)
        return result.ok

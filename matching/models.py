"""What the matching shards keep in PostgreSQL: commands, the journal, books and shard state."""

from django.db import models


class ShardState(models.Model):
    """One row per shard: the lease epoch that fences out a stale worker, and the engine's
    counters as of the last committed batch (recovery restores them)."""

    shard = models.PositiveSmallIntegerField(primary_key=True)
    lease_epoch = models.BigIntegerField(default=0)
    holder = models.CharField(max_length=200, blank=True, help_text="host:pid of the holder")
    acquired_at = models.DateTimeField(null=True, blank=True)
    apply_seq = models.BigIntegerField(
        default=0, db_default=0, help_text="Journal position of the last batch."
    )
    event_seq = models.BigIntegerField(default=0, db_default=0)
    trade_seq = models.BigIntegerField(default=0, db_default=0)
    last_stamp_ns = models.BigIntegerField(
        default=0, db_default=0, help_text="Last engine time stamp."
    )

    class Meta:
        ordering = ["shard"]

    def __str__(self) -> str:
        return f"shard {self.shard} (epoch {self.lease_epoch})"


class Command(models.Model):
    """A command for a shard's engine, committed with the change that caused it.

    The Redis stream only signals that commands are waiting; this row is the record. The worker
    applies every command exactly once and sets `applied_at` and `apply_seq` in the batch
    transaction that writes its effects.
    """

    class Kind(models.TextChoices):
        PLACE = "place", "Place order"
        CANCEL = "cancel", "Cancel order"
        AMEND = "amend", "Amend order"
        MASS_CANCEL = "mass_cancel", "Mass cancel"
        EXPIRE_DUE = "expire_due", "Expire due orders"
        HALT = "halt", "Halt instrument"
        RESUME = "resume", "Resume instrument"
        ADD_INSTRUMENT = "add_instrument", "Add instrument"
        UPDATE_RULES = "update_rules", "Update instrument rules"

    shard = models.PositiveSmallIntegerField()
    kind = models.CharField(max_length=16, choices=Kind.choices)
    payload = models.JSONField(help_text="Keyword arguments of the engine command, minus ts.")
    order_id = models.BigIntegerField(null=True, blank=True)
    user_id = models.BigIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    applied_at = models.DateTimeField(null=True, blank=True)
    apply_seq = models.BigIntegerField(
        null=True, blank=True, help_text="Journal position; empty when nothing was journaled."
    )
    attempts = models.PositiveSmallIntegerField(
        default=0,
        db_default=0,
        help_text="Failed batches this command was in (2: rejected without applying).",
    )
    reject_code = models.CharField(
        max_length=40,
        blank=True,
        default="",
        db_default="",
        help_text="Why the engine (or the worker) refused it.",
    )
    reject_message = models.CharField(
        max_length=200,
        blank=True,
        default="",
        db_default="",
        help_text="The refusal in words, when the engine said more than its code.",
    )

    class Meta:
        indexes = [
            models.Index(
                fields=["shard", "id"],
                condition=models.Q(applied_at__isnull=True),
                name="command_unapplied",
            ),
            # Only the unapplied ones (the pending-amend check): marking a command applied
            # then writes no entry here (a full index took one per applied command, ~3 us of
            # the worker's batch each). The admin's search by order id scans instead.
            models.Index(
                fields=["order_id"],
                condition=models.Q(applied_at__isnull=True),
                name="command_unapplied_order",
            ),
        ]

    def __str__(self) -> str:
        return f"command {self.pk} {self.kind} shard {self.shard}"


class JournalJSONField(models.JSONField):
    """JSON kept as PostgreSQL `json` (the text, validated) instead of `jsonb`.

    The journal is written once per applied command and only ever read back whole (replay,
    admin), never searched inside: `json` input skips building jsonb's binary form, which is a
    third of the cost of the worker's journal COPY."""

    def db_type(self, connection) -> str:
        return "json"

    def from_db_value(self, value, expression, connection):
        # psycopg parses `json` itself (Django only hands jsonb over as text).
        if value is None or not isinstance(value, str):
            return value
        return super().from_db_value(value, expression, connection)


class JournalEntry(models.Model):
    """A command as the engine applied it: its stamp, the engine tuple and the events, in apply
    order. Replaying a shard's journal into a fresh engine reproduces its state hash."""

    shard = models.PositiveSmallIntegerField()
    apply_seq = models.BigIntegerField()
    command_id = models.BigIntegerField(null=True, blank=True)
    stamp_ns = models.BigIntegerField()
    command = JournalJSONField()
    events = JournalJSONField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["shard", "apply_seq"], name="journal_position_unique"),
        ]

    def __str__(self) -> str:
        return f"journal {self.shard}/{self.apply_seq}"


class BookState(models.Model):
    """Per-instrument book counters as of the last committed batch (WebSocket seqs continue
    across a crash from here)."""

    symbol = models.CharField(max_length=20, primary_key=True)
    shard = models.PositiveSmallIntegerField()
    book_seq = models.BigIntegerField(default=0)
    last_price_ticks = models.BigIntegerField(null=True, blank=True)
    halted = models.BooleanField(default=False)
    position = models.PositiveIntegerField(
        default=0, help_text="Order in which the engine added the instrument (recovery keeps it)."
    )
    spec = models.JSONField(
        default=list,
        help_text="The engine Instrument tuple it applies (tick, lot, limits...): as added, then "
        "as the last update_rules command set it.",
    )

    def __str__(self) -> str:
        return f"book {self.symbol} seq {self.book_seq}"

"""Audit trail tables.

`audit_record` and `audit_seal` are created by migration 0001 with raw SQL: both are
PARTITIONED BY RANGE (day), guarded by triggers that refuse UPDATE, DELETE and TRUNCATE, and
`audit_record`'s insert trigger stamps each row's transaction id and sequence number. Their
models here are unmanaged views of those tables (Django never alters them); the partition key
means the real primary key is (seq, day), while Django addresses rows by `seq` alone, which the
sequence keeps unique.
"""

from django.db import models

from audit.events import AuditChannel, AuditEvent

NS_PER_SECOND = 1_000_000_000
NS_PER_DAY = 86_400 * NS_PER_SECOND


class AuditRecord(models.Model):
    """One event of the trail; written only through `audit.services`, never changed."""

    seq = models.BigIntegerField(primary_key=True, help_text="gap-tolerant, strictly increasing")
    day = models.DateField(help_text="UTC day of ts_ns: the partition key")
    ts_ns = models.BigIntegerField(help_text="UTC time in integer nanoseconds since the epoch")
    event_type = models.CharField(max_length=64, choices=AuditEvent.choices)
    actor_id = models.BigIntegerField(null=True, blank=True, help_text="user id of the actor")
    actor_label = models.CharField(max_length=200, blank=True, default="")
    user_id = models.BigIntegerField(null=True, blank=True, help_text="the user concerned")
    order_id = models.BigIntegerField(null=True, blank=True)
    trade_id = models.BigIntegerField(null=True, blank=True)
    symbol = models.CharField(max_length=32, null=True, blank=True)
    shard = models.IntegerField(null=True, blank=True)
    payload = models.JSONField(default=dict)
    channel = models.CharField(max_length=16, choices=AuditChannel.choices)
    session_hash = models.CharField(
        max_length=64, null=True, blank=True, help_text="SHA-256 of the session key"
    )
    ip = models.GenericIPAddressField(null=True, blank=True)
    api_key_id = models.BigIntegerField(null=True, blank=True)
    api_version = models.CharField(max_length=16, null=True, blank=True)

    class Meta:
        managed = False
        db_table = "audit_record"
        ordering = ["seq"]
        permissions = [("view_audit_trail", "Can view the audit trail")]

    def __str__(self) -> str:
        return f"#{self.seq} {self.event_type}"


class AuditSeal(models.Model):
    """The hash of one sealed record, chained to the previous sealed record's hash."""

    seq = models.BigIntegerField(primary_key=True, help_text="the sealed record's seq")
    day = models.DateField(help_text="the sealed record's day (same partitioning)")
    prev_seq = models.BigIntegerField(null=True, blank=True, help_text="null for the first")
    prev_hash = models.BinaryField(help_text="SHA-256 of the previous seal (zeros first)")
    hash = models.BinaryField(help_text="SHA-256(prev_hash || canonical record)")
    sealed_ns = models.BigIntegerField()

    class Meta:
        managed = False
        db_table = "audit_seal"
        ordering = ["seq"]

    def __str__(self) -> str:
        return f"seal #{self.seq}"


class SealHorizon(models.Model):
    """A point the sealer may seal up to once every transaction older than it has ended.

    Work state of the sealer, not evidence: rows are added and pruned freely.
    """

    seq_bound = models.BigIntegerField(help_text="the record sequence's value when taken")
    xid_bound = models.BigIntegerField(help_text="a transaction id assigned after that read")
    taken_ns = models.BigIntegerField()

    class Meta:
        db_table = "audit_seal_horizon"

    def __str__(self) -> str:
        return f"horizon seq<={self.seq_bound} once xmin>{self.xid_bound}"


class AuditExport(models.Model):
    """One exported day: where the file is, its checksum, and whether retention dropped it."""

    day = models.DateField(unique=True)
    path = models.CharField(max_length=500)
    sha256 = models.CharField(max_length=64)
    record_count = models.BigIntegerField()
    first_seq = models.BigIntegerField(null=True, blank=True)
    last_seq = models.BigIntegerField(null=True, blank=True)
    exported_at = models.DateTimeField(auto_now_add=True)
    dropped_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "audit_export"
        ordering = ["day"]

    def __str__(self) -> str:
        return f"export {self.day}"


class AuditRetentionDrop(models.Model):
    """A day whose partitions retention dropped after export: append-only evidence that lets
    `audit_verify` accept the gap the drop leaves in the chain."""

    day = models.DateField(primary_key=True)
    first_seq = models.BigIntegerField(null=True, blank=True)
    last_seq = models.BigIntegerField(null=True, blank=True)
    record_count = models.BigIntegerField()
    export_sha256 = models.CharField(max_length=64)
    dropped_ns = models.BigIntegerField()

    class Meta:
        managed = False
        db_table = "audit_retention_drop"
        ordering = ["day"]

    def __str__(self) -> str:
        return f"dropped {self.day}"

"""Per-shard state kept in PostgreSQL: the lease epoch that fences out a stale worker."""

from django.db import models


class ShardState(models.Model):
    """One row per shard; every acquisition of the shard's lease bumps `lease_epoch`."""

    shard = models.PositiveSmallIntegerField(primary_key=True)
    lease_epoch = models.BigIntegerField(default=0)
    holder = models.CharField(max_length=200, blank=True, help_text="host:pid of the holder")
    acquired_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["shard"]

    def __str__(self) -> str:
        return f"shard {self.shard} (epoch {self.lease_epoch})"

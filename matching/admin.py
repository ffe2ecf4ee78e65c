"""Staff views of the shards: commands, the journal, books and shard state, all read-only
(the worker is their only writer)."""

from django.contrib import admin

from exchange.admin import ReadOnlyAdmin
from matching.models import BookState, Command, JournalEntry, ShardState


@admin.register(ShardState)
class ShardStateAdmin(ReadOnlyAdmin):
    list_display = (
        "shard",
        "lease_epoch",
        "holder",
        "acquired_at",
        "apply_seq",
        "trade_seq",
        "last_stamp_ns",
    )


@admin.register(Command)
class CommandAdmin(ReadOnlyAdmin):
    list_display = ("id", "shard", "kind", "order_id", "user_id", "created_at", "applied_at")
    list_filter = ("shard", "kind")
    search_fields = ("=id", "=order_id", "=user_id")


@admin.register(JournalEntry)
class JournalEntryAdmin(ReadOnlyAdmin):
    list_display = ("shard", "apply_seq", "command_id", "stamp_ns")
    list_filter = ("shard",)
    search_fields = ("=command_id", "=apply_seq")


@admin.register(BookState)
class BookStateAdmin(ReadOnlyAdmin):
    list_display = ("symbol", "shard", "book_seq", "last_price_ticks", "halted")

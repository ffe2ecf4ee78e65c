"""Staff views of the shards: commands, the journal, books and shard state, all read-only
(the worker is their only writer)."""

from django.conf import settings
from django.contrib import admin

from exchange.admin import ReadOnlyAdmin, typed_integer
from matching.models import BookState, Command, JournalEntry, ShardState


class ShardFilter(admin.SimpleListFilter):
    """The shards to filter by, from the shard rows and the configured count: Django's own
    filter of a field's values ran SELECT DISTINCT shard over every command (or journal row)
    on each load of the list, a read of the whole table."""

    title = "shard"
    parameter_name = "shard"

    def lookups(self, request, model_admin):
        shards = set(ShardState.objects.values_list("shard", flat=True))
        shards.update(range(settings.MATCHING_SHARDS))
        return [(str(shard), str(shard)) for shard in sorted(shards)]

    def queryset(self, request, queryset):
        if self.value() is None:
            return queryset
        shard = typed_integer(self.value())
        return queryset.none() if shard is None else queryset.filter(shard=shard)


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
    list_filter = (ShardFilter, "kind")
    search_fields = ("=id", "=order_id", "=user_id")


@admin.register(JournalEntry)
class JournalEntryAdmin(ReadOnlyAdmin):
    list_display = ("shard", "apply_seq", "command_id", "stamp_ns")
    list_filter = (ShardFilter,)
    search_fields = ("=command_id", "=apply_seq")


@admin.register(BookState)
class BookStateAdmin(ReadOnlyAdmin):
    list_display = ("symbol", "shard", "book_seq", "last_price_ticks", "halted")

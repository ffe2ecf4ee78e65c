from django.contrib import admin

from exchange.models import Instrument


@admin.register(Instrument)
class InstrumentAdmin(admin.ModelAdmin):
    list_display = (
        "symbol",
        "base_asset",
        "quote_asset",
        "tick_size",
        "lot_size",
        "status",
        "shard",
    )
    list_filter = ("status", "quote_asset", "shard")
    search_fields = ("symbol", "base_asset", "quote_asset")
    readonly_fields = ("shard", "created_at")

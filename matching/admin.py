from django.contrib import admin

from matching.models import ShardState


@admin.register(ShardState)
class ShardStateAdmin(admin.ModelAdmin):
    list_display = ("shard", "lease_epoch", "holder", "acquired_at")

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

from django.contrib import admin, messages
from django.contrib.auth.admin import GroupAdmin as DjangoGroupAdmin
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.contrib.auth.models import Group
from django.db import transaction
from django.db.models import Count
from django_otp.plugins.otp_static.models import StaticDevice
from django_otp.plugins.otp_totp.models import TOTPDevice

from accounts.api_keys import api_key_revoke
from accounts.forms import StaffUserChangeForm, StaffUserCreationForm
from accounts.models import (
    APIKey,
    DailyVolume,
    FeeTier,
    FeeTierAssignment,
    LedgerAccount,
    LedgerEntry,
    LedgerPosting,
    QuotePresence,
    QuotePresenceSample,
    User,
)
from exchange.admin import ReadOnlyAdmin, changed_fields_save
from exchange.models import Instrument, decimal_plain
from exchange.services import orders_cancel_for_deactivated_user

# What only a superuser may change of a user: who is staff and what powers anyone has. Staff
# with `change_user` alone (support) had ticked is_superuser on their own account.
POWER_FIELDS = ("is_staff", "is_superuser", "groups", "user_permissions")


@admin.register(User)
class UserAdmin(DjangoUserAdmin):
    list_display = ("username", "email", "is_staff", "is_active", "date_joined")
    form = StaffUserChangeForm
    add_form = StaffUserCreationForm
    add_fieldsets = (
        (
            None,
            {
                "classes": ("wide",),
                "fields": ("username", "email", "usable_password", "password1", "password2"),
            },
        ),
    )

    def get_readonly_fields(self, request, obj=None):
        fields = super().get_readonly_fields(request, obj)
        return fields if request.user.is_superuser else (*fields, *POWER_FIELDS)

    def save_model(self, request, obj, form, change) -> None:
        """A user deactivated has every open order cancelled on their behalf (reason `staff`),
        in the same transaction: the orders had stayed on the book, able to fill, while their
        owner could no longer sign in to cancel them."""
        deactivated = change and "is_active" in form.changed_data and not obj.is_active
        promoted = change and any(
            name in form.changed_data and getattr(obj, name)
            for name in ("is_staff", "is_superuser")
        )
        if change:
            # A password its owner changed meanwhile had been undone, the old one valid again.
            changed_fields_save(obj, form)
        else:
            super().save_model(request, obj, form, change)
        if deactivated:
            cancelled = orders_cancel_for_deactivated_user(
                user=obj, actor=request.user, http_request=request
            )
            if cancelled:
                self.message_user(
                    request, f"{obj} is deactivated: cancel sent for {cancelled} open order(s)."
                )
        if promoted:
            # A key made before the promotion was made without the second factor staff need:
            # it had carried the new powers (crediting deposits, say) past two-factor
            # authentication. Staff make new keys behind it.
            revoked = 0
            for key in APIKey.objects.filter(user_id=obj.pk, revoked_at__isnull=True):
                api_key_revoke(api_key=key, actor=request.user, request=request)
                revoked += 1
            if revoked:
                self.message_user(
                    request,
                    f"{obj} is staff now: their {revoked} API key(s) made before are revoked "
                    "(staff make keys behind two-factor authentication).",
                )

    def has_change_permission(self, request, obj=None):
        # Nor may they change another staff member (a password reset is a takeover of that
        # account's powers: support reset a treasurer's password and credited itself a million
        # USD), nor delete one; their own account they may edit, its powers read-only.
        if obj is not None and not _may_manage(request.user, obj, own=True):
            return False
        return super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        if obj is not None and not _may_manage(request.user, obj, own=False):
            return False
        return super().has_delete_permission(request, obj)


def _may_manage(actor, user, *, own: bool) -> bool:
    """A superuser manages every account; other staff ordinary users only (and, with `own`,
    themselves)."""
    if actor.is_superuser or not (user.is_staff or user.is_superuser):
        return True
    return own and user.pk == actor.pk


if admin.site.is_registered(Group):
    admin.site.unregister(Group)


@admin.register(Group)
class GroupAdmin(DjangoGroupAdmin):
    """A group's permissions are its members' powers, so only a superuser sets them: staff with
    `auth.change_group` had ticked `accounts.add_ledgerentry` on a group they were in (the
    compliance group) and credited deposits, past the rule that only a superuser grants powers.
    Other staff may still name groups."""

    def get_readonly_fields(self, request, obj=None):
        fields = super().get_readonly_fields(request, obj)
        return fields if request.user.is_superuser else (*fields, "permissions")


# ---- fee tiers ---------------------------------------------------------------------------------


@admin.register(FeeTier)
class FeeTierAdmin(admin.ModelAdmin):
    """Tiers are edited here; new rates apply to orders placed afterwards (rates are frozen on
    each order), and users move tier at the next assessment (nightly, or when their volume
    moves). Edits are audited as staff actions."""

    list_display = (
        "name",
        "min_volume",
        "maker_fee_pct",
        "taker_fee_pct",
        "min_uptime_pct",
        "updated_at",
    )
    ordering = ("min_volume_30d", "name")

    @admin.display(description="min volume 30d", ordering="min_volume_30d")
    def min_volume(self, tier: FeeTier) -> str:
        # The column's twelve decimal places read "0E-12" for the base tier.
        return decimal_plain(tier.min_volume_30d)


@admin.register(FeeTierAssignment)
class FeeTierAssignmentAdmin(ReadOnlyAdmin):
    list_display = ("user", "tier", "volume_30d", "uptime_pct", "assigned_at", "assessed_at")
    list_filter = ("tier",)
    list_select_related = ("user", "tier")
    search_fields = ("user__username", "user__email")


# A row per user and day, kept for good: the list narrows by day with a filter of fixed choices.
# A date hierarchy read the whole table on each load (MIN/MAX and SELECT DISTINCT of the day,
# which no index leads with) to draw its years and months.
@admin.register(DailyVolume)
class DailyVolumeAdmin(ReadOnlyAdmin):
    list_display = ("user", "day", "quote_volume", "updated_at")
    list_select_related = ("user",)
    list_filter = (("day", admin.DateFieldListFilter),)
    search_fields = ("user__username", "user__email")


@admin.register(QuotePresence)
class QuotePresenceAdmin(ReadOnlyAdmin):
    list_display = ("user", "day", "samples_quoting", "samples_present")
    list_select_related = ("user",)
    list_filter = (("day", admin.DateFieldListFilter),)
    search_fields = ("user__username", "user__email")


@admin.register(QuotePresenceSample)
class QuotePresenceSampleAdmin(ReadOnlyAdmin):
    list_display = ("day", "samples", "last_sampled_at")
    date_hierarchy = "day"


# ---- API keys -----------------------------------------------------------------------------------


@admin.register(APIKey)
class APIKeyAdmin(ReadOnlyAdmin):
    """Keys are created by their owners (web session); staff look, and may revoke one (a key
    leaked or misused: it had taken deactivating its whole user). The encrypted secret is
    never shown."""

    actions = ["revoke_keys"]

    list_display = ("key", "label", "user", "permissions", "created_at", "revoked_at")
    list_filter = ("can_trade", "can_withdraw", ("revoked_at", admin.EmptyFieldListFilter))
    list_select_related = ("user",)
    search_fields = ("key", "label", "user__username", "user__email")
    fields = (
        "user",
        "label",
        "key",
        "permissions",
        "ip_allowlist",
        "created_at",
        "revoked_at",
        "last_used_at",
        "last_used_ip",
    )
    readonly_fields = fields

    def has_revoke_permission(self, request) -> bool:
        return request.user.has_perm("accounts.change_apikey")

    @admin.action(description="Revoke the selected keys", permissions=["revoke"])
    def revoke_keys(self, request, queryset) -> None:
        revoked = 0
        for api_key in queryset.select_related("user"):
            if not _may_manage(request.user, api_key.user, own=True):
                self.message_user(
                    request,
                    f"Key {api_key.key}: only a superuser may revoke another staff member's key.",
                    messages.WARNING,
                )
                continue
            if api_key.revoked_at is None:
                with transaction.atomic():  # the key's row is locked, the record written with it
                    api_key_revoke(api_key=api_key, actor=request.user, request=request)
                revoked += 1
        self.message_user(request, f"Revoked {revoked} key(s).")


class AssetFilter(admin.SimpleListFilter):
    """The assets of the listed instruments (deposits and orders take no other): Django's own
    filter of the field's values ran SELECT DISTINCT asset over every account on each load."""

    title = "asset"
    parameter_name = "asset"

    def lookups(self, request, model_admin):
        assets = set()
        for base, quote in Instrument.objects.values_list("base_asset", "quote_asset"):
            assets.update((base, quote))
        return [(asset, asset) for asset in sorted(assets)]

    def queryset(self, request, queryset):
        value = self.value()
        return queryset if value is None else queryset.filter(asset=value)


@admin.register(LedgerAccount)
class LedgerAccountAdmin(ReadOnlyAdmin):
    list_display = ("id", "user", "kind", "asset", "balance", "updated_at")
    list_filter = ("kind", AssetFilter)
    list_select_related = ("user",)
    search_fields = ("user__username", "user__email", "asset")


class LedgerPostingInline(admin.TabularInline):
    model = LedgerPosting
    fields = ("account", "asset", "amount")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(LedgerEntry)
class LedgerEntryAdmin(ReadOnlyAdmin):
    list_display = ("id", "kind", "user", "order_id", "trade_id", "memo", "created_at")
    list_filter = ("kind",)
    list_select_related = ("user",)
    search_fields = ("=order_id", "=trade_id", "user__username")
    inlines = [LedgerPostingInline]


# ---- second factors ----------------------------------------------------------------------------


class _OwnerManagedDeviceAdmin(admin.ModelAdmin):
    """A second factor is changed or deleted only by who may manage its owner's account (see
    _may_manage): staff with the device permissions had reset a superuser's 2FA, which
    UserAdmin keeps them from doing through the account itself."""

    def has_change_permission(self, request, obj=None) -> bool:
        if obj is not None and not _may_manage(request.user, obj.user, own=True):
            return False
        return super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None) -> bool:
        if obj is not None and not _may_manage(request.user, obj.user, own=True):
            return False
        return super().has_delete_permission(request, obj)

    def save_model(self, request, obj, form, change) -> None:
        # A rename had written back the device's replay guard (the last time step used) and its
        # failed-code count over a sign-in that committed meanwhile: its code could be used
        # again, and its failures were forgotten.
        if change:
            changed_fields_save(obj, form)
        else:
            super().save_model(request, obj, form, change)


class TOTPDeviceAdmin(_OwnerManagedDeviceAdmin):
    """A user's TOTP devices, without their secret. django-otp's own admin showed each
    device's key, its otpauth:// URI and its QR code: anyone allowed to view devices could
    have cloned any user's second factor, staff's included, and no page view is audited.
    Staff can see that a device exists, rename it, and delete it (to reset a lost one);
    a device is enrolled by its owner, who alone sees its secret."""

    list_display = ("user", "name", "confirmed", "created_at", "last_used_at")
    fields = ("user", "name", "confirmed", "created_at", "last_used_at")
    readonly_fields = ("user", "confirmed", "created_at", "last_used_at")
    search_fields = ("user__username", "user__email")

    def has_add_permission(self, request) -> bool:
        return False


if admin.site.is_registered(TOTPDevice):  # django-otp's, if its admin module came first
    admin.site.unregister(TOTPDevice)
admin.site.register(TOTPDevice, TOTPDeviceAdmin)


class RecoveryCodesAdmin(_OwnerManagedDeviceAdmin):
    """A user's recovery codes (django-otp's static device), without the codes. django-otp's
    own admin listed each code in an editable field: anyone allowed to view devices could have
    read any user's codes, staff's included (one, with the password, passes the second factor),
    or added codes of their own choosing. Staff see how many codes are left and may delete the
    device (a user who lost them enrols again); only its owner ever sees the codes."""

    list_display = ("user", "name", "codes_left", "created_at", "last_used_at")
    fields = ("user", "name", "codes_left", "created_at", "last_used_at")
    readonly_fields = fields
    search_fields = ("user__username", "user__email")
    list_select_related = ("user",)

    def get_queryset(self, request):
        # Counted with the list, not with a query per device listed.
        return super().get_queryset(request).annotate(codes=Count("token_set"))

    @admin.display(description="Codes left")
    def codes_left(self, device: StaticDevice) -> int:
        return device.codes

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


if admin.site.is_registered(StaticDevice):
    admin.site.unregister(StaticDevice)
admin.site.register(StaticDevice, RecoveryCodesAdmin)

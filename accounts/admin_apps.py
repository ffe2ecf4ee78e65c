"""The admin app with the two-factor admin site as its default site (see admin_site.py)."""

from django.contrib.admin.apps import AdminConfig


class TwoFactorAdminConfig(AdminConfig):
    """`django.contrib.admin`, but `admin.site` is `TwoFactorAdminSite`: every
    `@admin.register` lands on the site that requires a verified 2FA session."""

    default_site = "accounts.admin_site.TwoFactorAdminSite"

    def ready(self) -> None:
        super().ready()
        from accounts.admin_site import admin_actions_take_ids_only

        admin_actions_take_ids_only()

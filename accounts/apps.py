from django.apps import AppConfig


class AccountsConfig(AppConfig):
    """Users, API keys, 2FA, the ledger, deposits/withdrawals and fee tiers."""

    name = "accounts"

    def ready(self) -> None:
        from django.db.models.signals import post_save

        # Registers the OpenAPI description of signed API-key requests.
        from accounts import api_key_schema  # noqa: F401
        from accounts.api_keys import user_saved_keys_recheck
        from accounts.models import User

        post_save.connect(user_saved_keys_recheck, sender=User, dispatch_uid="api-key-cache")

from django.apps import AppConfig


class AccountsConfig(AppConfig):
    """Users, API keys, 2FA, the ledger, deposits/withdrawals and fee tiers."""

    name = "accounts"

    def ready(self) -> None:
        from django.contrib.auth.signals import user_logged_out
        from django.db.models.signals import post_save

        # Registers the OpenAPI description of signed API-key requests.
        from accounts import api_key_schema  # noqa: F401
        from accounts.api_keys import user_saved_keys_recheck
        from accounts.models import User
        from accounts.web_sessions import (
            user_logged_out_sessions_ended,
            user_saved_sessions_recheck,
        )

        post_save.connect(user_saved_keys_recheck, sender=User, dispatch_uid="api-key-cache")
        post_save.connect(user_saved_sessions_recheck, sender=User, dispatch_uid="web-sessions")
        user_logged_out.connect(user_logged_out_sessions_ended, dispatch_uid="web-sessions")

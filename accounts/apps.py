from django.apps import AppConfig


class AccountsConfig(AppConfig):
    """Users, API keys, 2FA, the ledger, deposits/withdrawals and fee tiers."""

    name = "accounts"

    def ready(self) -> None:
        # Registers the OpenAPI description of signed API-key requests.
        from accounts import api_key_schema  # noqa: F401

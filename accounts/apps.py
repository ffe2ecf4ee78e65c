from django.apps import AppConfig


class AccountsConfig(AppConfig):
    """Users, API keys, 2FA, the ledger, deposits/withdrawals and fee tiers."""

    name = "accounts"

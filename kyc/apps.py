from django.apps import AppConfig


class KycConfig(AppConfig):
    """Verification tiers, documents, review workflow, AML rules and alerts, sanctions."""

    name = "kyc"
    verbose_name = "KYC / AML"

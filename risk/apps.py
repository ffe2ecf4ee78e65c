from django.apps import AppConfig


class RiskConfig(AppConfig):
    """Positions, P&L, margin, limits, liquidation, circuit breakers."""

    name = "risk"

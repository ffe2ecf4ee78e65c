from django.apps import AppConfig


class ExchangeConfig(AppConfig):
    """The trading core: instruments, orders, trades, fees, market data."""

    name = "exchange"
    verbose_name = "Exchange"

    def ready(self) -> None:
        from exchange import checks  # noqa: F401 (registers the deploy checks)

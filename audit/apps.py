from django.apps import AppConfig


class AuditConfig(AppConfig):
    """The append-only, hash-chained audit trail and its query API."""

    name = "audit"

    def ready(self) -> None:
        from audit import signals

        signals.connect()

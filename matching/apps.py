from django.apps import AppConfig


class MatchingConfig(AppConfig):
    """The shard matching worker around the framework-free engine in matching/engine."""

    name = "matching"

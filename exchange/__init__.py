"""The exchange project package: settings, URLs, ASGI and Celery apps, and the trading core."""

from exchange.celery import app as celery_app

__all__ = ["celery_app"]

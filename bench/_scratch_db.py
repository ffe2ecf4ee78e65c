"""A throwaway PostgreSQL database for the Django benchmarks (created, migrated, dropped)."""

import contextlib
import os
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import psycopg


@contextmanager
def scratch_django(name: str):
    """Create database `name` on DATABASE_URL's server, set Django up against it (migrated,
    with a Redis key prefix of its own), yield, then drop it."""
    base = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/exchange")
    admin_url = urlunsplit(urlsplit(base)._replace(path="/postgres"))
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.execute(f'CREATE DATABASE "{name}"')
    os.environ["DATABASE_URL"] = urlunsplit(urlsplit(base)._replace(path=f"/{name}"))
    os.environ["REDIS_KEY_PREFIX"] = f"{name}:"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "exchange.settings")
    try:
        import django
        from django.core.management import call_command

        django.setup()
        call_command("migrate", verbosity=0)
        yield
    finally:
        from django.db import connections

        connections.close_all()
        with contextlib.suppress(Exception):  # Redis cleanup is best effort
            from exchange.redis_connection import redis_client

            client = redis_client()
            keys = list(client.scan_iter(match=f"{name}:*", count=1000))
            if keys:
                client.delete(*keys)
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

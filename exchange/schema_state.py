"""Whether the database has every migration this code needs (the workers and the verify
commands refuse to run against one that does not: a missing table was a traceback, or a
worker exiting "database connection lost" to be restarted again and again)."""

from django.core.management.base import CommandError
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections
from django.db.migrations.executor import MigrationExecutor


def migrations_unapplied(*, using: str = DEFAULT_DB_ALIAS) -> list[str]:
    """The migrations (`app.name`) the database still lacks, in the order `migrate` applies
    them."""
    executor = MigrationExecutor(connections[using])
    plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
    return [f"{migration.app_label}.{migration.name}" for migration, _backwards in plan]


def schema_migrated_require(*, using: str = DEFAULT_DB_ALIAS) -> None:
    """Raise a CommandError naming what is missing unless the database is fully migrated (or
    saying it is out of reach)."""
    name = connections[using].settings_dict["NAME"]
    try:
        missing = migrations_unapplied(using=using)
    except DatabaseError as exc:
        raise CommandError(f"database {name} is out of reach: {str(exc).strip()}") from exc
    if missing:
        shown = ", ".join(missing[:5]) + (
            f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        )
        raise CommandError(
            f"database {name} is not migrated: {len(missing)} migration(s) not applied "
            f"({shown}); run `python manage.py migrate` first"
        )

"""Instants as the API and the audit trail write them."""

import datetime as dt


def iso_z(value: dt.datetime | None) -> str | None:
    """ISO 8601 in UTC with `Z`, as DRF's DateTimeField renders it (without building one)."""
    if value is None:
        return None
    text = value.astimezone(dt.UTC).isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text

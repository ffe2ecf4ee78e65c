"""API shapes of the audit trail."""

from __future__ import annotations

import datetime as dt
import re

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers
from rest_framework.fields import empty

from audit.chain import iso_ns
from audit.events import AuditChannel, AuditEvent
from audit.models import NS_PER_SECOND

# ASCII digits only, as sent (\d matched any Unicode digit, which int() then read).
_ISO_RE = re.compile(
    r"^(?P<date>[0-9]{4}-[0-9]{2}-[0-9]{2})"
    r"(?:[T ](?P<time>[0-9]{2}:[0-9]{2}(?::[0-9]{2})?)(?:\.(?P<frac>[0-9]{1,9}))?"
    r"(?P<tz>Z|[+-][0-9]{2}:?[0-9]{2})?)?\Z"
)


def parse_iso_ns(text: str) -> int:
    """Parse ISO 8601 (date, or date-time with up to 9 fractional digits; no zone = UTC) to
    integer nanoseconds since the epoch. Raises ValueError."""
    match = _ISO_RE.match(text)
    if not match:
        raise ValueError("not an ISO 8601 date or date-time")
    time_part = match["time"] or "00:00:00"
    if len(time_part) == 5:
        time_part += ":00"
    tz = match["tz"] or "+00:00"
    tz = "+00:00" if tz == "Z" else tz
    if len(tz) == 5:
        tz = tz[:3] + ":" + tz[3:]
    moment = dt.datetime.fromisoformat(f"{match['date']}T{time_part}{tz}")
    frac = (match["frac"] or "").ljust(9, "0")
    return int(moment.timestamp()) * NS_PER_SECOND + int(frac or 0)


@extend_schema_field(OpenApiTypes.DATETIME)
class NanoTimestampField(serializers.Field):
    """ISO 8601 input parsed to integer nanoseconds (UTC)."""

    default_error_messages = {"invalid": "Not an ISO 8601 timestamp (e.g. 2026-11-25T14:22:12Z)."}

    def get_value(self, dictionary):
        # DRF reads an empty form or query value of an optional field as absent: `?start=` had
        # listed the user's whole activity, where every other time filter refuses it.
        return dictionary.get(self.field_name, empty)

    def to_internal_value(self, data) -> int:
        try:
            return parse_iso_ns(str(data))
        except (ValueError, OverflowError):
            self.fail("invalid")

    def to_representation(self, value: int) -> str:
        return iso_ns(value)


class UserActivityQuery(serializers.Serializer):
    """Query parameters of a user's activity: an optional time window (ISO 8601, UTC)."""

    start = NanoTimestampField(required=False, help_text="inclusive, ISO 8601")
    end = NanoTimestampField(required=False, help_text="inclusive, ISO 8601")


class AuditActorSerializer(serializers.Serializer):
    id = serializers.IntegerField(source="actor_id", allow_null=True)
    label = serializers.CharField(source="actor_label")


class AuditSubjectsSerializer(serializers.Serializer):
    user_id = serializers.IntegerField(allow_null=True)
    order_id = serializers.IntegerField(allow_null=True)
    trade_id = serializers.IntegerField(allow_null=True)
    symbol = serializers.CharField(allow_null=True)
    shard = serializers.IntegerField(allow_null=True)


class AuditRecordSerializer(serializers.Serializer):
    """One audit record; `hash` is null until the sealer has sealed it."""

    seq = serializers.IntegerField()
    ts = serializers.SerializerMethodField(help_text="ISO 8601 UTC, 9 fractional digits")
    ts_ns = serializers.IntegerField(help_text="UTC nanoseconds since the epoch")
    event_type = serializers.ChoiceField(choices=AuditEvent.choices)
    actor = AuditActorSerializer(source="*")
    subjects = AuditSubjectsSerializer(source="*")
    payload = serializers.JSONField()
    channel = serializers.ChoiceField(choices=AuditChannel.choices)
    ip = serializers.IPAddressField(allow_null=True)
    session = serializers.CharField(
        source="session_hash", allow_null=True, help_text="SHA-256 of the session key"
    )
    api_key_id = serializers.IntegerField(allow_null=True)
    api_version = serializers.CharField(allow_null=True)
    hash = serializers.SerializerMethodField(help_text="hex SHA-256 chain hash, null if unsealed")

    def get_ts(self, record) -> str:
        return iso_ns(record.ts_ns)

    def get_hash(self, record) -> str | None:
        value = getattr(record, "seal_hash", None)
        return bytes(value).hex() if value is not None else None

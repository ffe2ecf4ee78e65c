"""Writing the audit trail: `audit_record` and its bulk variant `audit_record_many`.

Both insert with the caller's database connection, so the record joins the caller's
transaction: a change and its record commit together or not at all. Call them inside the
`transaction.atomic()` of the outermost service. The insert trigger assigns each record's `seq`
and transaction id; the sealer hashes committed records later (see audit/sealer.py).

Request context: with a `request`, the record also carries the client IP (REMOTE_ADDR: the
deployment's proxy must set it; forwarded headers are not trusted here), the API key id
(`request.api_key_id`, when API keys exist), the API version (`v1` from `/api/v1/...` or DRF's
`request.version`), the channel (unless given: admin, web or ws by path; an /api/ request is web
when the browser's session authenticated it, as the web UI's pages do, REST otherwise) and the
session as
`session_hash`: the hex SHA-256 of the session key. The raw key is a credential, so it is never
stored; the hash still lets compliance group one session's records, or match a known key.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import orjson
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection
from rest_framework.authentication import SessionAuthentication

from audit.events import AuditChannel, AuditEvent
from audit.models import NS_PER_DAY
from exchange.db_cursors import bound_cursor
from exchange.timestamps import iso_z

_EPOCH_DAY = dt.date(1970, 1, 1)
_API_VERSION_RE = re.compile(r"^/api/(v\d+)/")

# `seq` and `txid` are left out: the insert trigger sets them (and would overwrite them).
# The JSON column goes in binary (%b): a text-format array escapes each of its quotes in Python
# (a regex substitution per quote: ~50 µs a payload).
INSERT_MANY_SQL = """
INSERT INTO audit_record (
    day, ts_ns, event_type, actor_id, actor_label, user_id, order_id, trade_id,
    symbol, shard, payload, channel, session_hash, ip, api_key_id, api_version)
SELECT * FROM unnest(
    %s::date[], %s::bigint[], %s::varchar[], %s::bigint[], %s::varchar[], %s::bigint[],
    %s::bigint[], %s::bigint[], %s::varchar[], %s::integer[], %b::jsonb[], %s::varchar[],
    %s::varchar[], %s::inet[], %s::bigint[], %s::varchar[])
RETURNING seq
"""


@dataclass(slots=True)
class AuditEntry:
    """One record to write; `ts_ns` defaults to now (UTC nanoseconds)."""

    event_type: str
    actor_id: int | None = None
    actor_label: str = ""
    user_id: int | None = None
    order_id: int | None = None
    trade_id: int | None = None
    symbol: str | None = None
    shard: int | None = None
    payload: dict[str, Any] = field(default_factory=dict)
    channel: str = AuditChannel.SYSTEM
    session_hash: str | None = None
    ip: str | None = None
    api_key_id: int | None = None
    api_version: str | None = None
    ts_ns: int | None = None


_days: dict[int, dt.date] = {}  # days since the epoch -> date: a batch's rows share a day or two


def day_of(ts_ns: int) -> dt.date:
    """The UTC day of a nanosecond timestamp (the partition key)."""
    number = ts_ns // NS_PER_DAY
    day = _days.get(number)
    if day is None:
        if len(_days) >= 1024:
            _days.clear()
        day = _days[number] = _EPOCH_DAY + dt.timedelta(days=number)
    return day


def session_hash(session_key: str | None) -> str | None:
    """The stored form of a session key: its SHA-256 in hex (never the key itself)."""
    if not session_key:
        return None
    return hashlib.sha256(session_key.encode()).hexdigest()


def _actor_fields(actor: Any) -> tuple[int | None, str]:
    if actor is None:
        return None, "system"
    if isinstance(actor, str):
        return None, actor[:200]
    if getattr(actor, "is_authenticated", False):
        return actor.pk, actor.get_username()[:200]
    return None, "anonymous"


def _channel_of(request: Any) -> str:
    path = getattr(request, "path", "") or ""
    if path.startswith("/admin/"):
        return AuditChannel.ADMIN
    if path.startswith("/api/"):
        # The web UI's pages call the API with the browser's session cookie (and CSRF token);
        # API clients sign their requests with a key.
        if isinstance(getattr(request, "successful_authenticator", None), SessionAuthentication):
            return AuditChannel.WEB
        return AuditChannel.REST
    if path.startswith("/ws/"):
        return AuditChannel.WS
    return AuditChannel.WEB


def _api_version_of(request: Any) -> str | None:
    version = getattr(request, "version", None)
    if version:
        return str(version)[:16]
    match = _API_VERSION_RE.match(getattr(request, "path", "") or "")
    return match.group(1) if match else None


def _request_fields(request: Any) -> dict[str, Any]:
    session = getattr(request, "session", None)
    meta = getattr(request, "META", {}) or {}
    return {
        "session_hash": session_hash(getattr(session, "session_key", None)),
        "ip": meta.get("REMOTE_ADDR") or None,
        "api_key_id": getattr(request, "api_key_id", None),
        "api_version": _api_version_of(request),
    }


def audit_entry(
    *,
    event_type: AuditEvent | str,
    actor: Any = None,
    user_id: int | None = None,
    order_id: int | None = None,
    trade_id: int | None = None,
    symbol: str | None = None,
    shard: int | None = None,
    payload: dict[str, Any] | None = None,
    request: Any = None,
    channel: AuditChannel | str | None = None,
    ts_ns: int | None = None,
) -> AuditEntry:
    """Build an `AuditEntry` from an actor (a user, a label such as `worker:host:pid`, or None
    for the system) and an optional HTTP request; see `audit_record` for the arguments."""
    actor_id, actor_label = _actor_fields(actor)
    entry = AuditEntry(
        event_type=str(event_type),
        actor_id=actor_id,
        actor_label=actor_label,
        user_id=user_id,
        order_id=order_id,
        trade_id=trade_id,
        symbol=symbol,
        shard=shard,
        payload=payload or {},
        ts_ns=ts_ns,
    )
    if request is not None:
        for name, value in _request_fields(request).items():
            setattr(entry, name, value)
        entry.channel = channel or _channel_of(request)
    else:
        entry.channel = channel or AuditChannel.SYSTEM
    return entry


def audit_record(
    *,
    event_type: AuditEvent | str,
    actor: Any = None,
    user_id: int | None = None,
    order_id: int | None = None,
    trade_id: int | None = None,
    symbol: str | None = None,
    shard: int | None = None,
    payload: dict[str, Any] | None = None,
    request: Any = None,
    channel: AuditChannel | str | None = None,
    ts_ns: int | None = None,
) -> int:
    """Write one audit record in the caller's transaction and return its sequence number.

    `actor` is the user acting (None: the system; a string: a process label). The subject ids
    name what the event is about. `payload` is JSON (Decimals, datetimes and UUIDs become
    strings; NaN and infinities are refused). `channel` defaults from the request's path, or to
    `system` without a request. `ts_ns` defaults to `time.time_ns()`.
    """
    entry = audit_entry(
        event_type=event_type,
        actor=actor,
        user_id=user_id,
        order_id=order_id,
        trade_id=trade_id,
        symbol=symbol,
        shard=shard,
        payload=payload,
        request=request,
        channel=channel,
        ts_ns=ts_ns,
    )
    return audit_record_many(records=[entry])[0]


class _PayloadEncoder(DjangoJSONEncoder):
    """Django's encoder, but a Decimal is written in fixed point: "0.00000001", where str()
    gives "1E-8" (a tick size of a listing, a price of a cheap coin), and an aware datetime in
    UTC with `Z` to the microsecond, as the API writes it (Django's cut it to the millisecond:
    a GTD order's recorded expire_at was up to 1 ms before the one it expired at)."""

    def default(self, o):
        if isinstance(o, Decimal):
            return format(o, "f")
        if isinstance(o, dt.datetime) and o.utcoffset() is not None:
            return iso_z(o)
        return super().default(o)


# One encoder for every record (json.dumps(cls=...) would build a new one per call).
_PAYLOAD_ENCODER = _PayloadEncoder(allow_nan=False, separators=(",", ":"))


_FLAT_JSON_TYPES = frozenset((str, int, bool, type(None)))


def _payload_json(payload: dict[str, Any]) -> str:
    """The payload's JSON text. orjson (an order of magnitude faster) for the usual flat object
    of strings, integers, booleans and nulls, such as the matching worker writes thousands of a
    batch; the encoder above for anything else (Decimals, datetimes, floats, nested values).
    Either text is the same JSON value, which jsonb stores normalized."""
    if all(type(k) is str and type(v) in _FLAT_JSON_TYPES for k, v in payload.items()):
        try:
            return orjson.dumps(payload).decode()
        except TypeError:  # an integer beyond 64 bits
            pass
    return _PAYLOAD_ENCODER.encode(payload)


_COLUMNS = (
    "day, ts_ns, event_type, actor_id, actor_label, user_id, order_id, trade_id, "
    "symbol, shard, payload, channel, session_hash, ip, api_key_id, api_version"
)
COPY_SQL = f"COPY audit_record ({_COLUMNS}) FROM STDIN"
ROW_TRADE_ID = 7


def audit_rows(*, records: Sequence[AuditEntry]) -> list[tuple]:
    """The column values of each record (validated), in COPY_SQL's column order: what
    `audit_rows_copy` writes. `ROW_TRADE_ID` is the position of `trade_id`."""
    now = time.time_ns()
    valid_events = set(AuditEvent.values)
    valid_channels = set(AuditChannel.values)
    rows = []
    for entry in records:
        if entry.event_type not in valid_events:
            raise ValueError(f"unknown audit event type {entry.event_type!r}")
        if entry.channel not in valid_channels:
            raise ValueError(f"unknown audit channel {entry.channel!r}")
        ts_ns = entry.ts_ns if entry.ts_ns is not None else now
        rows.append(
            (
                day_of(ts_ns),
                ts_ns,
                entry.event_type,
                entry.actor_id,
                entry.actor_label,
                entry.user_id,
                entry.order_id,
                entry.trade_id,
                entry.symbol,
                entry.shard,
                _payload_json(entry.payload),
                entry.channel,
                entry.session_hash,
                entry.ip,
                entry.api_key_id,
                entry.api_version,
            )
        )
    return rows


def audit_record_many(*, records: Sequence[AuditEntry] | Iterable[AuditEntry]) -> list[int]:
    """Write many records with one set-based INSERT (unnest of arrays) in the caller's
    transaction; returns their sequence numbers in the order given."""
    records = list(records)
    if not records:
        return []
    columns: list[list[Any]] = [
        list(column) for column in zip(*audit_rows(records=records), strict=True)
    ]
    with bound_cursor() as cursor:
        cursor.execute(INSERT_MANY_SQL, columns)
        return [row[0] for row in cursor.fetchall()]


def audit_record_copy(*, records: Sequence[AuditEntry] | Iterable[AuditEntry]) -> int:
    """Write many records with COPY in the caller's transaction; returns how many.

    Same records as `audit_record_many` (the BEFORE INSERT trigger assigns `seq` and `txid`:
    row triggers fire on COPY too), without handing the sequence numbers back. For the matching
    worker, which writes thousands per batch and needs none of them: COPY skips the per-value
    quoting of an INSERT's parameters."""
    return audit_rows_copy(rows=audit_rows(records=list(records)))


def audit_rows_copy(*, rows: Sequence[tuple]) -> int:
    """COPY rows built by `audit_rows` (possibly on another thread, earlier) in the caller's
    transaction; returns how many."""
    if not rows:
        return 0
    connection.ensure_connection()
    # Django's error types (a dropped connection is an OperationalError, answered 503): the
    # raw psycopg error had made an order entry batch a 500.
    with (
        connection.wrap_database_errors,
        connection.connection.cursor() as cursor,
        cursor.copy(COPY_SQL) as copy,
    ):
        write_row = copy.write_row
        for row in rows:
            write_row(row)
    return len(rows)

"""The hash chain's definition: canonical serialization of a record and the link function.

hash(record) = SHA-256(prev_hash || canonical(record)), prev_hash being the previous sealed
record's hash (32 zero bytes for the first). canonical(record) is the UTF-8 JSON of the
object below with sorted keys and no whitespace (`json.dumps(obj, sort_keys=True,
separators=(",", ":"), ensure_ascii=False)`); the exported JSONL carries every one of these
fields, so anyone can re-check an export without the database:

    {"seq", "ts_ns", "event_type", "actor": {"id", "label"},
     "subjects": {"user_id", "order_id", "trade_id", "symbol", "shard"},
     "payload", "channel", "ip", "session", "api_key_id", "api_version"}
"""

import datetime as dt
import hashlib
import json
from typing import Any

from audit.models import NS_PER_SECOND

GENESIS_HASH = bytes(32)

# Columns read for hashing and export, in this order (see `record_content`).
RECORD_COLUMNS = (
    "seq, day, ts_ns, event_type, actor_id, actor_label, user_id, order_id, trade_id, symbol, "
    "shard, payload, channel, host(ip), session_hash, api_key_id, api_version"
)


def record_content(row: tuple) -> dict[str, Any]:
    """The hashed content of a record from a row of `RECORD_COLUMNS`."""
    (
        seq,
        _day,
        ts_ns,
        event_type,
        actor_id,
        actor_label,
        user_id,
        order_id,
        trade_id,
        symbol,
        shard,
        payload,
        channel,
        ip,
        session_hash,
        api_key_id,
        api_version,
    ) = row
    return {
        "seq": seq,
        "ts_ns": ts_ns,
        "event_type": event_type,
        "actor": {"id": actor_id, "label": actor_label},
        "subjects": {
            "user_id": user_id,
            "order_id": order_id,
            "trade_id": trade_id,
            "symbol": symbol,
            "shard": shard,
        },
        "payload": json.loads(payload) if isinstance(payload, str) else payload,
        "channel": channel,
        "ip": ip,
        "session": session_hash,
        "api_key_id": api_key_id,
        "api_version": api_version,
    }


def canonical_bytes(content: dict[str, Any]) -> bytes:
    """The exact bytes that are hashed for a record's content."""
    return json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def link_hash(prev_hash: bytes, content: dict[str, Any]) -> bytes:
    """The chained hash of a record given the previous sealed record's hash."""
    return hashlib.sha256(prev_hash + canonical_bytes(content)).digest()


def iso_ns(ts_ns: int) -> str:
    """ISO 8601 UTC with nine fractional digits and a `Z`: 2026-11-25T14:22:12.123456789Z."""
    seconds, nanos = divmod(ts_ns, NS_PER_SECOND)
    moment = dt.datetime.fromtimestamp(seconds, tz=dt.UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{nanos:09d}Z"

"""Command rows <-> engine tuples, and engine tuples/events <-> journal JSON.

A Command row carries `kind` and `payload` (the keyword arguments of the engine constructor in
`matching.engine.protocol`, minus `ts`); the worker stamps it and builds the tuple here. The
journal stores the tuple exactly as applied, so a replay needs no payload rules.

Normalization (so recovery from the Order row reproduces the engine record exactly): a place's
`expire_at` is kept only for GTD/DAY and floored to whole microseconds (what a PostgreSQL
timestamp holds), `stop_price` only for stop orders.
"""

import datetime as dt
import json
from typing import Any

import orjson

from matching.engine import Instrument
from matching.engine import protocol as p

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_STOP_TYPES = (p.STOP_MARKET, p.STOP_LIMIT)
_EXPIRING_TIFS = (p.GTD, p.DAY)


class InvalidPayload(ValueError):
    """The command row cannot be turned into an engine command (missing or unknown fields)."""


_COMPACT = json.JSONEncoder(separators=(",", ":"))


def json_text(value: Any) -> str:
    """Compact JSON text of plain data (journal rows, Redis messages): orjson, an order of
    magnitude faster than the standard encoder; the standard one for what orjson refuses
    (an integer beyond 64 bits, a non-string key)."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return _COMPACT.encode(value)


def ns_to_datetime(ns: int) -> dt.datetime:
    """Engine nanoseconds -> aware UTC datetime (microsecond precision, floored)."""
    return EPOCH + dt.timedelta(microseconds=ns // 1000)


def datetime_to_ns(moment: dt.datetime) -> int:
    """Aware datetime -> integer nanoseconds since the epoch (exact, no float)."""
    return (moment - EPOCH) // dt.timedelta(microseconds=1) * 1000


# A place's or amend's session close (ns), for the worker (matching.batch_loop), not the engine:
# past it when the command reaches the engine, the command is refused MarketClosed unapplied.
SESSION_CLOSE_KEY = "session_close_ns"


def closed_before(payload: Any, stamp: int) -> bool:
    """The command's session closed at or before `stamp` (False without a session close)."""
    closes = payload.get(SESSION_CLOSE_KEY) if type(payload) is dict else None
    return type(closes) is int and stamp >= closes


def _place(ts: int, payload: dict) -> tuple:
    args = dict(payload)
    args.pop(SESSION_CLOSE_KEY, None)
    if args.get("order_type", p.LIMIT) not in _STOP_TYPES:
        args["stop_price"] = 0
    expire_at = args.get("expire_at") or 0
    if args.get("tif", p.GTC) in _EXPIRING_TIFS and isinstance(expire_at, int):
        args["expire_at"] = expire_at - expire_at % 1000
    else:
        args["expire_at"] = 0
    return p.place(ts=ts, **args)


def _instrument(payload: dict) -> Instrument:
    spec = payload.get("instrument", payload)
    if isinstance(spec, list | tuple):
        return Instrument.from_tuple(tuple(spec))
    return Instrument(**spec)


def _add_instrument(ts: int, payload: dict) -> tuple:
    return p.add_instrument(ts=ts, instrument=_instrument(payload))


def _update_rules(ts: int, payload: dict) -> tuple:
    # Beside the rules, `day_expire_at` when the session hours changed (the DAY orders' new
    # expiry), floored to whole microseconds like a placed order's `expire_at`.
    rules = dict(payload)
    day_expire_at = rules.pop("day_expire_at", None)
    if isinstance(day_expire_at, int):
        day_expire_at -= day_expire_at % 1000
    return p.update_instrument(ts=ts, instrument=_instrument(rules), day_expire_at=day_expire_at)


def _expire_due(ts: int, payload: dict) -> tuple:
    # `now` is the scheduler's clock as enqueued (a test may inject any instant).
    return p.expire_due(ts=ts, now=int(payload["now"]))


def _cancel(ts: int, payload: dict) -> tuple:
    # `reason` (a cancel by staff) is for the order's row and audit record, not the engine.
    return p.cancel(ts=ts, **{k: v for k, v in payload.items() if k != "reason"})


def _amend(ts: int, payload: dict) -> tuple:
    # `hold_delta` is for the ledger (see matching.batch_writer), the session close for the
    # worker, not the engine.
    fields = {k: v for k, v in payload.items() if k != "hold_delta" and k != SESSION_CLOSE_KEY}
    return p.amend(ts=ts, **fields)


# A halt's payload beside its symbol: staff's words and whether it delists, for the audit trail
# and the market-data feed, not the engine (a delisting halts the book as a halt does).
HALT_NOTE_KEYS = ("reason", "delist")


def halt_note(payload: dict) -> dict | None:
    """What a halt's payload says beyond what the engine takes (None when nothing)."""
    return {k: payload[k] for k in HALT_NOTE_KEYS if k in payload} or None


def _halt(ts: int, payload: dict) -> tuple:
    return p.halt(ts=ts, **{k: v for k, v in payload.items() if k not in HALT_NOTE_KEYS})


_BUILDERS = {
    "place": _place,
    "cancel": _cancel,
    "amend": _amend,
    "mass_cancel": lambda ts, payload: p.mass_cancel(ts=ts, **payload),
    "expire_due": _expire_due,
    "halt": _halt,
    "resume": lambda ts, payload: p.resume(ts=ts, **payload),
    "add_instrument": _add_instrument,
    "update_rules": _update_rules,
}

_INSTRUMENT_OPS = (p.OP_ADD_INSTRUMENT, p.OP_UPDATE_INSTRUMENT)


def engine_command(kind: str, payload: dict, ts: int) -> tuple:
    """The engine tuple for a command row stamped with `ts`; InvalidPayload if malformed."""
    builder = _BUILDERS.get(kind)
    if builder is None:
        raise InvalidPayload(f"unknown command kind {kind!r}")
    try:
        return builder(ts, payload)
    except (TypeError, KeyError, ValueError) as exc:
        raise InvalidPayload(f"{kind}: {exc}") from exc


def command_to_json(cmd: tuple) -> list[Any]:
    """A command tuple as JSON-ready data (an Instrument becomes its plain tuple; an update's
    `day_expire_at` follows it)."""
    if cmd[0] in _INSTRUMENT_OPS:
        return [cmd[0], cmd[1], list(cmd[2].as_tuple()), *cmd[3:]]
    return list(cmd)


def command_from_json(data: list) -> tuple:
    """Inverse of `command_to_json`."""
    if data[0] in _INSTRUMENT_OPS:
        return (data[0], data[1], Instrument.from_tuple(tuple(data[2])), *data[3:])
    return tuple(data)

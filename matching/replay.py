"""Determinism check: replay a shard's journal into a fresh engine and compare it with the
engine rebuilt from PostgreSQL (the same state `run_matching` recovers)."""

import gc
import json
from dataclasses import dataclass

from django.db import connection, transaction

from matching.command_codec import command_from_json
from matching.engine import Engine
from matching.recovery import engine_state_read


@dataclass
class VerifyResult:
    """Both hashes, how many journal entries were replayed and how many events differed."""

    replayed_hash: str
    rebuilt_hash: str
    entries: int
    event_mismatches: int
    differences: list[str]

    @property
    def ok(self) -> bool:
        return self.replayed_hash == self.rebuilt_hash and not self.event_mismatches


def journal_replay(shard: int) -> tuple[Engine, int, int]:
    """A fresh engine with the shard's journal applied in order; returns (engine, entries,
    entries whose replayed events differ from the journaled ones)."""
    engine = Engine()
    entries = mismatches = 0
    raw = connection.connection
    with raw.cursor(name="journal_replay") as cursor:
        cursor.itersize = 5000
        cursor.execute(
            "SELECT command, events FROM matching_journalentry WHERE shard = %s ORDER BY apply_seq",
            [shard],
        )
        for command, events in cursor:
            if isinstance(command, str):
                command, events = json.loads(command), json.loads(events)
            replayed = engine.apply(command_from_json(command))
            entries += 1
            if json.loads(json.dumps(replayed)) != events:
                mismatches += 1
    return engine, entries, mismatches


def state_differences(replayed: dict, rebuilt: dict, limit: int = 5) -> list[str]:
    """Where two export_state() dicts differ (first few differing entries per part)."""
    found = []
    for part in ("instruments", "counters", "books", "orders", "stops"):
        a, b = replayed[part], rebuilt[part]
        if part == "counters":
            a, b = [a], [b]
        if len(a) != len(b):
            found.append(f"{part}: {len(a)} replayed vs {len(b)} rebuilt")
        diffs = [(x, y) for x, y in zip(a, b, strict=False) if tuple(x) != tuple(y)]
        found += [f"{part}: replayed {x} != rebuilt {y}" for x, y in diffs[:limit]]
    return found


def shard_verify(shard: int) -> VerifyResult:
    """Replay vs rebuild, both read from one REPEATABLE READ snapshot (safe while the worker
    runs)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            replayed, entries, mismatches = journal_replay(shard)
            state = engine_state_read(shard)[0]
        rebuilt = Engine.bulk_load(state)
        return VerifyResult(
            replayed.state_hash(),
            rebuilt.state_hash(),
            entries,
            mismatches,
            state_differences(replayed.export_state(), rebuilt.export_state()),
        )
    finally:
        if was_enabled:
            gc.enable()

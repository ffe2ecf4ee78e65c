"""Determinism check: replay a shard's journal into a fresh engine and compare it with the
engine rebuilt from PostgreSQL (the same state `run_matching` recovers)."""

import gc
import json
from dataclasses import dataclass, field

from django.db import connection, transaction

from matching.command_codec import command_from_json
from matching.engine import Engine
from matching.recovery import engine_state_read, shard_state_read


@dataclass
class VerifyResult:
    """Both hashes, how many journal entries were replayed and how many events differed."""

    replayed_hash: str
    rebuilt_hash: str
    entries: int
    event_mismatches: int
    differences: list[str]
    # Journal positions missing, an entry that cannot be replayed, the first entry whose
    # events differ, a journal that ends before or after the shard's counter.
    journal_problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            self.replayed_hash == self.rebuilt_hash
            and not self.event_mismatches
            and not self.journal_problems
        )


def journal_replay(
    shard: int, problems: list[str] | None = None, *, last_apply_seq: int | None = None
) -> tuple[Engine, int, int]:
    """A fresh engine with the shard's journal applied in order; returns (engine, entries,
    entries whose replayed events differ from the journaled ones).

    What is wrong with the journal itself goes to `problems`, by journal position: positions
    missing (up to `last_apply_seq`, the shard's counter), the first entry whose events
    differ, and an entry that cannot be replayed (the replay stops there)."""
    keep_going = problems is not None
    problems = [] if problems is None else problems
    engine = Engine()
    entries = mismatches = 0
    expected = 1
    raw = connection.connection
    with raw.cursor(name="journal_replay") as cursor:
        cursor.itersize = 5000
        cursor.execute(
            "SELECT apply_seq, command_id, command, events FROM matching_journalentry "
            "WHERE shard = %s ORDER BY apply_seq",
            [shard],
        )
        for apply_seq, command_id, command, events in cursor:
            if apply_seq != expected:
                problems.append(_missing(expected, apply_seq - 1))
            expected = apply_seq + 1
            try:
                if isinstance(command, str):
                    command, events = json.loads(command), json.loads(events)
                replayed = engine.apply(command_from_json(command))
            except Exception as exc:  # a corrupt row: say which, not a traceback
                if not keep_going:
                    raise
                problems.append(
                    f"journal entry {apply_seq} (command {command_id}) cannot be replayed: "
                    f"{type(exc).__name__}: {exc}; the replay stops there"
                )
                return engine, entries, mismatches
            entries += 1
            if json.loads(json.dumps(replayed)) != events:
                if not mismatches:
                    problems.append(
                        f"journal entry {apply_seq} (command {command_id}) is the first whose "
                        "replayed events differ from the journaled ones"
                    )
                mismatches += 1
    if last_apply_seq is not None and expected - 1 != last_apply_seq:
        if expected - 1 < last_apply_seq:
            problems.append(_missing(expected, last_apply_seq) + " (the shard has applied them)")
        else:
            problems.append(
                f"journal goes on to entry {expected - 1} but the shard has applied "
                f"{last_apply_seq}"
            )
    return engine, entries, mismatches


def _missing(first: int, last: int) -> str:
    which = f"entry {first}" if first == last else f"entries {first} to {last}"
    return f"journal {which} missing"


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
            problems: list[str] = []
            last_apply_seq = shard_state_read(shard).apply_seq
            replayed, entries, mismatches = journal_replay(
                shard, problems, last_apply_seq=last_apply_seq
            )
            state = engine_state_read(shard)[0]
        rebuilt = Engine.bulk_load(state)
        return VerifyResult(
            replayed.state_hash(),
            rebuilt.state_hash(),
            entries,
            mismatches,
            state_differences(replayed.export_state(), rebuilt.export_state()),
            problems,
        )
    finally:
        if was_enabled:
            gc.enable()

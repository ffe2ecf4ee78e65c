"""Rebuild a shard's engine from PostgreSQL with `Engine.bulk_load` (no matching, gc off).

Instruments come from BookState (one row per instrument the engine added, in add order, with
the engine spec it applies). Every instrument reaches the engine through a journaled
`add_instrument` command and each later change of its rules through a journaled `update_rules`
command, so a replay of the journal from an empty engine reproduces the same instruments;
`instruments_enqueue` queues `add_instrument` for every Instrument row of the shard the engine
does not know yet.

Open orders are read in priority-seq order (= queue order within each level) with the integer
conversions done in SQL, streamed through a server-side cursor.
"""

import gc
import logging
import time
from dataclasses import dataclass

from django.conf import settings
from django.db import connection, transaction

from exchange.models import Instrument as InstrumentRow
from matching.engine import STATE_VERSION, Engine
from matching.engine import protocol as p
from matching.instruments import engine_instrument_spec
from matching.models import BookState, Command, ShardState
from matching.services import command_enqueue

logger = logging.getLogger(__name__)

_STP_CASE = " ".join(
    f"WHEN '{name}' THEN {index}" for index, name in enumerate(p.STP_MODE_NAMES) if index
)

# One row per live order, already in the engine's record layout (see API.md), after a leading
# "is an untriggered stop" flag. Decimal -> integer conversions use the engine's spec of the
# instrument (f.*), passed in as arrays.
# A blank stp_mode is STP_DEFAULT (0), as the engine keeps it: the instrument's default applies
# when the order matches.
OPEN_ORDERS_SQL = f"""
SELECT o.status = 'untriggered',
       o.id, o.user_id, f.symbol, o.side = 'buy',
       CASE o.order_type
            WHEN 'limit' THEN {p.LIMIT}
            WHEN 'market' THEN {p.MARKET}
            WHEN 'stop_loss' THEN CASE WHEN o.status = 'untriggered'
                                       THEN {p.STOP_MARKET} ELSE {p.MARKET} END
            ELSE CASE WHEN o.status = 'untriggered' THEN {p.STOP_LIMIT} ELSE {p.LIMIT} END
       END,
       CASE WHEN o.order_type = 'stop_loss' OR o.price IS NULL THEN 0
            ELSE (o.price / f.tick)::bigint END,
       ((o.remaining_quantity - o.reserve_quantity) / f.lot)::bigint,
       (o.reserve_quantity / f.lot)::bigint,
       COALESCE((o.display_quantity / f.lot)::bigint, 0),
       (o.filled_quantity / f.lot)::bigint,
       o.priority_seq,
       CASE o.time_in_force WHEN 'GTC' THEN {p.GTC} WHEN 'IOC' THEN {p.IOC}
            WHEN 'FOK' THEN {p.FOK} WHEN 'GTD' THEN {p.GTD} ELSE {p.DAY} END,
       CASE WHEN o.time_in_force IN ('GTD', 'DAY') AND o.expire_at IS NOT NULL
            THEN (extract(epoch FROM o.expire_at) * 1000000)::bigint * 1000 ELSE 0 END,
       o.post_only::int * {p.POST_ONLY} + o.post_only_adjust::int * {p.POST_ONLY_ADJUST},
       CASE WHEN o.order_type IN ('stop_loss', 'stop_limit')
            THEN COALESCE((o.stop_price / f.tick)::bigint, 0) ELSE 0 END,
       COALESCE(o.engine_max_quote, 0),
       (o.quote_spent * f.minor)::bigint,
       o.maker_fee_ppm, o.taker_fee_ppm,
       CASE o.stp_mode {_STP_CASE} ELSE 0 END
  FROM exchange_order o
  JOIN unnest(%s::bigint[], %s::text[], %s::numeric[], %s::numeric[], %s::numeric[])
       AS f(instrument_id, symbol, tick, lot, minor)
    ON f.instrument_id = o.instrument_id
 WHERE o.is_open AND o.status IN ('new', 'partially_filled', 'untriggered')
 ORDER BY o.priority_seq
"""


class RecoveryError(Exception):
    """The database does not describe an engine that can be rebuilt (a corrupted row)."""


@dataclass
class Recovered:
    """The rebuilt engine and the shard counters it continues from."""

    engine: Engine
    apply_seq: int
    last_stamp_ns: int
    instrument_ids: dict[str, int]
    read_seconds: float
    load_seconds: float
    orders: int
    stops: int


def shard_state_read(shard: int) -> ShardState:
    """The shard's state row (created by the lease on acquisition)."""
    return ShardState.objects.get(shard=shard)


def engine_state_read(shard: int) -> tuple[dict, dict[str, int], int, int]:
    """The export_state() dict of the shard as of the last committed batch, read from the
    database, plus symbol -> Instrument id; returns (state, ids, order count, stop count)."""
    state = shard_state_read(shard)
    books = list(BookState.objects.filter(shard=shard).order_by("position"))
    instruments = [tuple(book.spec) for book in books]
    symbols = [book.symbol for book in books]
    named = list(dict.fromkeys([*symbols, *(spec[0] for spec in instruments)]))
    ids = dict(InstrumentRow.objects.filter(symbol__in=named).values_list("symbol", "id"))
    unknown = [symbol for symbol in named if symbol not in ids]
    if unknown:
        raise RecoveryError(
            f"shard {shard}: books without an instrument row: {', '.join(unknown)} "
            "(matching_bookstate names a symbol exchange_instrument does not have)"
        )
    # Instrument tuple layout: (symbol, tick_size, lot_size, quote_decimals, ..., stp_default).
    params = [
        [ids[spec[0]] for spec in instruments],
        [spec[0] for spec in instruments],
        [spec[1] for spec in instruments],
        [spec[2] for spec in instruments],
        [10 ** spec[3] for spec in instruments],
    ]
    orders: list[tuple] = []
    stops: list[tuple] = []
    if instruments:
        add_order, add_stop = orders.append, stops.append
        raw = connection.connection
        with raw.transaction(), raw.cursor(name="recovery_orders") as cursor:
            # The open-order index is not in priority order (it must not change on updates,
            # see Order.is_open): the sort of every live order has to fit in memory.
            raw.execute("SET LOCAL work_mem = '512MB'")
            cursor.itersize = 20_000
            cursor.execute(OPEN_ORDERS_SQL, params)
            for row in cursor:
                (add_stop if row[0] else add_order)(row[1:])
    export = {
        "version": STATE_VERSION,
        "instruments": instruments,
        "counters": (state.event_seq, state.trade_seq),
        "books": [(b.symbol, b.halted, b.book_seq, b.last_price_ticks) for b in books],
        "orders": orders,
        "stops": stops,
    }
    return export, ids, len(orders), len(stops)


def engine_recover(shard: int) -> Recovered:
    """Rebuild the shard's engine from PostgreSQL (gc disabled while loading)."""
    connection.ensure_connection()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        started = time.perf_counter()
        state, ids, n_orders, n_stops = engine_state_read(shard)
        read_done = time.perf_counter()
        engine = Engine.bulk_load(state)
        load_done = time.perf_counter()
        del state
    finally:
        if gc_was_enabled:
            gc.freeze()  # the loaded book is long-lived: keep it out of future collections
            gc.enable()
    shard_state = shard_state_read(shard)
    logger.info(
        "shard engine recovered",
        extra={
            "shard": shard,
            "orders": n_orders,
            "stops": n_stops,
            "read_s": round(read_done - started, 3),
            "load_s": round(load_done - read_done, 3),
        },
    )
    return Recovered(
        engine=engine,
        apply_seq=shard_state.apply_seq,
        last_stamp_ns=shard_state.last_stamp_ns,
        instrument_ids=ids,
        read_seconds=read_done - started,
        load_seconds=load_done - read_done,
        orders=n_orders,
        stops=n_stops,
    )


def instruments_unserved() -> list[tuple[str, int]]:
    """(symbol, shard) of every instrument on a shard beyond MATCHING_SHARDS: no worker takes
    their commands (MATCHING_SHARDS lowered below a shard that holds instruments)."""
    return list(
        InstrumentRow.objects.filter(shard__gte=settings.MATCHING_SHARDS)
        .order_by("shard", "symbol")
        .values_list("symbol", "shard")
    )


def instruments_enqueue(*, shard: int, engine: Engine) -> list[str]:
    """Queue an add_instrument command for every Instrument of the shard unknown to the engine
    (and not already queued); returns the symbols queued."""
    known = {inst.symbol for inst in engine.instruments()}
    queued = []
    with transaction.atomic():
        pending = {
            (payload.get("instrument") or payload).get("symbol")
            for payload in Command.objects.filter(
                shard=shard, kind=Command.Kind.ADD_INSTRUMENT, applied_at__isnull=True
            ).values_list("payload", flat=True)
            if isinstance(payload, dict)
        }
        for row in InstrumentRow.objects.filter(shard=shard).order_by("id"):
            if row.symbol in known or row.symbol in pending:
                continue
            command_enqueue(
                shard=shard,
                kind=Command.Kind.ADD_INSTRUMENT,
                payload=engine_instrument_spec(row),
            )
            queued.append(row.symbol)
    return queued

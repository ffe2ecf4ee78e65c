"""One PostgreSQL transaction per batch of applied commands, written with set-based SQL.

`prepare` takes everything from the engine right after the batch (plain rows, no engine
references), so the engine can move on while `execute` writes it, possibly on another thread.

`execute`, in order: the lease epoch is checked under a row lock on the shard-state row (a
worker whose epoch moved writes nothing); order updates, trades and applied commands are
staged with COPY into per-session temp tables, the journal is COPYed; one multi-statement
round trip then updates the orders (from events, and from `engine.order()` for the orders
still live), marks the commands applied, upserts the book states, sets the shard counters and
inserts the trades; the audit rows go in last with COPY (they need the Trade ids). The caller's
transaction commits; a failure anywhere rolls the whole batch back.
"""

import dataclasses
import json
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import psycopg
from django.conf import settings
from django.db import connection, transaction

from accounts.ledger import USERS_LOCK_SQL, users_lock_params
from accounts.settlement import HoldRelease, SettlementWriter, TradeFill
from accounts.volume import VOLUME_QUOTE_ASSET, daily_volume_add, daily_volume_rows
from audit.events import AuditEvent
from audit.services import ROW_TRADE_ID, AuditEntry, audit_rows, audit_rows_copy
from exchange.db_cursors import transaction_pipeline
from exchange.errors import rejection_body
from exchange.holds import buy_cost_minor
from exchange.serializers import iso_z
from matching.command_codec import command_to_json, json_text, ns_to_datetime
from matching.engine import Engine, Instrument
from matching.engine import protocol as p

ENDED = (p.FILLED, p.CANCELLED, p.EXPIRED, p.REJECTED)
# What the engine did to an instrument, as audited ("added" is audited at listing).
INSTRUMENT_AUDIT_EVENTS = {
    "halted": AuditEvent.INSTRUMENT_HALTED,
    "resumed": AuditEvent.INSTRUMENT_RESUMED,
    "updated": AuditEvent.INSTRUMENT_RULES_CHANGED,
}


REJECT_MESSAGES = {
    p.INSTRUMENT_HALTED: "trading is halted: new orders and amends are refused, cancels are taken",
    p.FOK_UNFILLABLE: "the fill-or-kill order cannot be filled in full",
    p.UNKNOWN_INSTRUMENT: "the matching engine does not know this instrument",
    p.INVALID_EXPIRE_AT: "expire_at had passed when the matching engine received the order",
    # Order entry had checked the rules before a change reached it (GET /symbols has them).
    p.INVALID_QUANTITY: "quantity is below the instrument's minimum, which has just changed",
    p.BELOW_MIN_NOTIONAL: "the order's value is below the instrument's minimum notional, which "
    "has just changed",
    "CommandFailed": "the matching worker could not apply this order",
    "InvalidCommand": "the matching engine could not read this order",
    "MarketClosed": "the trading session had closed when the matching engine received the order",
}


# The reason an order rejected without the engine ends with (by its code; else `invalid`).
REASONS_WITHOUT_ENGINE = {"MarketClosed": "market_closed"}


def reject_message(ev: tuple, inst: Instrument | None) -> str:
    """A human message for an engine rejection of a PLACE (stored in Order.reject_message)."""
    code, detail = ev[p.R_CODE], ev[p.R_DETAIL]
    if code == p.POST_ONLY_WOULD_MATCH and detail is not None and inst is not None:
        return f"Order would match immediately at {inst.price_text(detail)}"
    return REJECT_MESSAGES.get(code, f"rejected by the matching engine: {code}")


# The audit event of a command the engine refused, by its opcode (a place's is the order's
# rejection; a refused cancel or amend leaves the order as it was).
REFUSED_EVENTS = {
    p.OP_CANCEL: AuditEvent.ORDER_CANCEL_REFUSED,
    p.OP_AMEND: AuditEvent.ORDER_AMEND_REFUSED,
}


KIND_OPCODES = {"cancel": p.OP_CANCEL, "amend": p.OP_AMEND}
ACCEPTED = str(AuditEvent.ORDER_ACCEPTED)  # as an AuditEntry's event_type
# The audit records of an order ended (apart from ENDED, the statuses of one).
ENDED_EVENTS = {str(AuditEvent.ORDER_CANCELLED), str(AuditEvent.ORDER_EXPIRED)}
STATE = ("status", "filled", "remaining", "price", "command_id")  # an order.accepted's


def _subjects_fill(audits: list[AuditEntry]) -> None:
    """Give the refusals of cancels and amends their order's user and symbol: the engine
    names neither when the order is no longer in it, and the record then stayed out of the
    user's activity and the symbol's records. One query, only when there are such records."""
    missing = [e for e in audits if e.order_id is not None and e.user_id is None]
    if not missing:
        return
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT o.id, o.user_id, i.symbol FROM exchange_order o"
            " JOIN exchange_instrument i ON i.id = o.instrument_id WHERE o.id = ANY(%s)",
            [list({e.order_id for e in missing})],
        )
        subjects = {order_id: (user_id, symbol) for order_id, user_id, symbol in cursor}
    for entry in missing:
        if entry.order_id in subjects:
            entry.user_id, found_symbol = subjects[entry.order_id]
            entry.symbol = entry.symbol or found_symbol


def _refused(a: "Applied") -> bool:
    """Whether the engine refused command `a` itself. Its events may hold another order's
    rejection too: a fill-or-kill stop that its trades triggered and that cannot fill is
    rejected among them, as a place of its own order. Counted as the command's refusal, an
    amend that had traded was answered 400 FokUnfillable, its quantity not stored and its
    added hold given back, and the batch then failed to commit (its hold went negative)."""
    return any(_own_refusal(a, ev) for ev in a.events if ev[0] == p.EV_REJECT)


def _own_refusal(a: "Applied", ev: tuple) -> bool:
    """Whether EV_REJECT `ev` refuses command `a` (not a stop it triggered)."""
    op = a.cmd[0]
    return ev[p.R_OPCODE] == op and (op != p.OP_PLACE or ev[p.R_ORDER_ID] in (None, a.cmd[3]))


class LeaseFenced(Exception):
    """The shard's lease epoch moved: another worker owns the shard now."""


class AlreadyApplied(Exception):
    """A command of the batch was already marked applied: the batch must not commit."""


@dataclass(slots=True)
class Applied:
    """A command as the worker handled it in this batch."""

    command_id: int
    kind: str
    stamp_ns: int
    cmd: tuple | None  # the engine tuple; None when the engine never saw it (poison)
    events: list = field(default_factory=list)
    apply_seq: int | None = None  # journal position; None when nothing was journaled
    reject_code: str = ""
    order_id: int | None = None
    # The placed/amended order's priority seq right after this command if it rests: the row
    # keeps it even when a later command of the same batch closes the order.
    priority_seq: int | None = None
    # An amend's change of the order's hold (its payload's `hold_delta`, in the hold's asset):
    # an increase was held when it was requested, a decrease is released once applied.
    hold_delta: Decimal | None = None
    # A cancel's reason when not the user's own (its payload's `reason`: "staff"), which the
    # engine does not know: the order ends with it instead of "user".
    cancel_reason: str | None = None
    # The refusal in words when its code alone does not say it all (a post-only amend: the
    # price it would have matched at).
    reject_message: str = ""
    # A halt's `reason` and `delist` as staff sent them (its payload's), which the engine does
    # not know: for the audit record and the market-data feed's status frame.
    halt_note: dict | None = None


def _status_change(symbol: str, action: str, a: Applied) -> dict[str, Any]:
    """A halt or resume the engine applied, as the market-data feed announces it: the
    instrument's new status as REST's ticker names it, and staff's reason if they gave one."""
    note = a.halt_note or {}
    status = "trading" if action == "resumed" else "delisted" if note.get("delist") else "halted"
    change = {"symbol": symbol, "status": status, "ts_ns": a.stamp_ns}
    if note.get("reason"):
        change["reason"] = note["reason"]
    return change


class _OrderUpdate:
    """What a batch did to one order (absolute engine values and deltas for sums)."""

    __slots__ = (
        "amended",
        "d_fees",
        "d_quote",
        "d_spent",
        "d_value",
        "expire_at",
        "expiry_moved",
        "filled",
        "fills",
        "held_revert",
        "hold_only",
        "hold_release",
        "id",
        "max_quote",
        "need",
        "price",
        "quantity",
        "reason",
        "rebudget",
        "reject_code",
        "reject_message",
        "remaining",
        "reserve",
        "seq",
        "spent",
        "status",
        "stp_reduced",
        "symbol",
        "triggered",
        "user_id",
    )

    def __init__(self, order_id: int, symbol: str | None, user_id: int | None) -> None:
        self.id = order_id
        self.symbol = symbol
        self.user_id = user_id
        self.status: str | None = None
        self.reason = ""
        self.reject_code = ""
        self.reject_message = ""
        self.filled: int | None = None
        self.remaining: int | None = None
        self.reserve = 0
        self.spent: int | None = None
        self.d_spent = 0
        self.d_quote = 0
        self.d_value = 0  # price ticks x quantity lots of the batch's fills (exact)
        self.d_fees = 0
        # The batch's fills of it: (engine trade seq, price, quantity, fee, liquidity).
        self.fills: list[tuple[int, int, int, int, str]] | None = None
        self.price: int | None = None
        self.seq: int | None = None
        self.max_quote: int | None = None
        self.expire_at: int | None = None
        self.quantity: int | None = None  # a new total quantity from an amend of this batch
        self.hold_release = Decimal(0)  # released by an amend of this batch
        self.held_revert = Decimal(0)  # a refused amend's change of held_amount, undone
        # A stop triggered in this batch: its own status is gone by the batch's end (it became
        # a market or limit order in the same command), the orders channel still tells it.
        self.triggered = False
        self.amended = False  # an amend of this batch changed it (the orders channel says so)
        # Touched only to give back a refused amend's hold: no news for the orders channel.
        self.hold_only = False
        self.stp_reduced = False  # self-trade prevention took quantity off it (decrement_both)
        # It may now need less hold than it has (repriced lower, decremented, amended, or a
        # buy resting after fills below its price): `need` is then what its rest needs, in
        # quote minor units for a buy, lots for a sell (None: not reckoned, keep the hold).
        self.rebudget = False
        self.need: int | None = None
        # Its expiry moved: its instrument's session hours changed (a DAY order).
        self.expiry_moved = False


class DecimalText:
    """The texts of an instrument's integer ticks, lots and quote minor units (`price_text`,
    `qty_text`, `quote_text`: fixed point, never "8.5E-7"), remembered: a batch writes the same
    few prices and quantities thousands of times into its audit payloads and market-data
    summaries."""

    __slots__ = ("_minor", "_price", "_qty", "inst")
    LIMIT = 50_000  # entries per kind before the memo starts over

    def __init__(self, inst: Instrument) -> None:
        self.inst = inst
        self._price: dict[int, str] = {}
        self._qty: dict[int, str] = {}
        self._minor: dict[int, str] = {}

    def price(self, ticks: int) -> str:
        text = self._price.get(ticks)
        if text is None:
            if len(self._price) >= self.LIMIT:
                self._price.clear()
            text = self._price[ticks] = self.inst.price_text(ticks)
        return text

    def qty(self, lots: int) -> str:
        text = self._qty.get(lots)
        if text is None:
            if len(self._qty) >= self.LIMIT:
                self._qty.clear()
            text = self._qty[lots] = self.inst.qty_text(lots)
        return text

    def quote(self, minor: int) -> str:
        text = self._minor.get(minor)
        if text is None:
            if len(self._minor) >= self.LIMIT:
                self._minor.clear()
            text = self._minor[minor] = self.inst.quote_text(minor)
        return text


@dataclass
class BatchOutcome:
    """What the batch committed, for the after-commit Redis side effects."""

    command_ids: list[int]
    symbols: set[str]
    trades: list[dict[str, Any]]
    orders: list[dict[str, Any]]
    balances: list[dict[str, Any]] = field(default_factory=list)  # set once written
    # Instruments halted, resumed or delisted: {"symbol", "status", "reason"?, "ts_ns"}.
    statuses: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class PreparedBatch:
    """A batch as it will be written: plain data, taken from the engine when prepared."""

    applied: list[Applied]
    specs: dict[str, Instrument]
    symbols: set[str]
    order_rows: list[tuple]
    factors: tuple
    trade_rows: list[tuple]
    command_params: list[str]
    journal_rows: list[tuple]
    books: list[list] | None
    counters: tuple
    audit_rows: list[tuple]  # trade_id: the engine trade seq until the Trade row exists
    amend_releases: list[tuple]  # (order_id, user_id, symbol, is_buy, amount)
    outcome: BatchOutcome
    # The users whose ledger the batch writes (trades, releases), locked before any id is
    # drawn, all in one sorted statement (see `_staged_apply`).
    ledger_users: list[int] = field(default_factory=list)
    # (order_id, amount): the held_amount change of an amend refused because its order had
    # ended in an earlier batch, undone on that order's row (its hold went back when it ended).
    ended_held_reverts: list[tuple] = field(default_factory=list)
    # Orders that may give hold back (a `need`), in id order: locked first (ORDERS_LOCK_SQL).
    reducible: list[int] = field(default_factory=list)


# A refused amend's change of held_amount, undone on orders that ended in an earlier batch.
HELD_REVERT_SQL = """
UPDATE exchange_order o SET held_amount = o.held_amount - r.amount
  FROM unnest(%s::bigint[], %s::numeric[]) AS r(id, amount)
 WHERE o.id = r.id
"""

# Integers (lots, ticks, minor units) are scaled to Decimal in SQL by the engine instrument's
# tick_size / lot_size / 10**-quote_decimals (f, joined by position k): the same arithmetic as
# the Instrument helpers, without dumping thousands of Decimals from Python per batch.
#
# Orders that end in the batch also give back what is left of their hold, in the same
# statement: `hold_left` is the hold after this batch's fills and amend releases; an order that
# ends keeps 0 and the rows returned name the amounts for the ledger. (A second UPDATE of the
# ended rows cost another row version each, and two foreign-key checks each at commit, since
# PostgreSQL re-checks a row's keys when it updates a version its own transaction wrote.)
# A live order with a `need` (see BatchWriter._hold_needs) gives back what it holds above
# it (`reduced`), in the same statement, and its held_amount (its budget over its life) drops
# by as much, so that an amend reckons its change from what is really held. Not while an amend
# of it waits for the engine: its hold change is in the row already, and the need (from the
# engine, before that amend) knows nothing of it; the batch that applies the amend reckons
# again. The rows were locked by ORDERS_LOCK_SQL earlier in the transaction, so no amend can
# commit between this statement's snapshot and its read of the row; this batch's own commands
# are marked applied before this statement.
# Every updated order is returned, with its side and client_order_id, which the orders
# channel's frames say (the engine has no client_order_id, nor the side of an ended order).
# RETURNING shows only the new row, so the ended rows and those with a need are read once more
# (LATERAL, by primary key) FOR NO KEY UPDATE: the lock makes that read the latest version,
# the one the UPDATE then changes, so an amend committed meanwhile (it adds to hold_remaining)
# is released too.
_HOLD_LEFT = """x.hold_remaining - u.hold_release - CASE WHEN x.side = 'buy'
                       THEN COALESCE(u.spent * u.minor, x.quote_spent) + u.d_spent * u.minor
                            - x.quote_spent
                       ELSE COALESCE(u.filled * u.lot, x.filled_quantity) - x.filled_quantity
                   END"""
ORDERS_UPDATE_SQL = """
WITH updated AS (
    UPDATE exchange_order o SET
        status = u.status,
        is_open = u.open,
        reason = u.reason,
        reject_code = u.reject_code,
        reject_message = u.reject_message,
        quantity = COALESCE(u.quantity * u.lot, o.quantity),
        filled_quantity = COALESCE(u.filled * u.lot, o.filled_quantity),
        remaining_quantity = COALESCE(u.remaining * u.lot, o.remaining_quantity),
        reserve_quantity = u.reserve * u.lot,
        cumulative_quote = o.cumulative_quote + u.d_quote * u.minor,
        filled_value = o.filled_value + u.d_value * u.tick * u.lot,
        fees = o.fees + u.d_fees * u.minor,
        quote_spent = COALESCE(u.spent * u.minor, o.quote_spent) + u.d_spent * u.minor,
        price = COALESCE(u.price * u.tick, o.price),
        priority_seq = COALESCE(u.seq, o.priority_seq),
        hold_remaining = CASE WHEN e.hold_left > 0 AND NOT u.open THEN 0
            ELSE o.hold_remaining - u.hold_release - CASE WHEN o.side = 'buy'
                THEN COALESCE(u.spent * u.minor, o.quote_spent) + u.d_spent * u.minor
                     - o.quote_spent
                ELSE COALESCE(u.filled * u.lot, o.filled_quantity) - o.filled_quantity END
                - COALESCE(e.reduced, 0)
            END,
        held_amount = o.held_amount - u.held_revert - COALESCE(e.reduced, 0),
        engine_max_quote = COALESCE(u.max_quote, o.engine_max_quote),
        expire_at = COALESCE(u.expire_at, o.expire_at),
        updated_at = now()
      FROM (SELECT u.*, f.tick, f.lot, f.minor,
                   u.status IN ('pending_new', 'new', 'partially_filled', 'untriggered',
                                'triggered') AS open
              FROM batch_order_update u
              JOIN unnest(%s::numeric[], %s::numeric[], %s::numeric[]) WITH ORDINALITY
                   AS f(tick, lot, minor, k)
                ON f.k = u.k) u
      LEFT JOIN LATERAL (
            SELECT HOLD_LEFT AS hold_left,
                   CASE WHEN u.open AND NOT EXISTS (
                            SELECT FROM matching_command c
                             WHERE c.order_id = x.id AND c.kind = 'amend'
                               AND c.applied_at IS NULL)
                        THEN GREATEST(HOLD_LEFT - u.need
                            * CASE WHEN x.side = 'buy' THEN u.minor ELSE u.lot END, 0)
                   END AS reduced
              FROM exchange_order x
             WHERE x.id = u.id AND (NOT u.open OR u.need IS NOT NULL)
            OFFSET 0 FOR NO KEY UPDATE) e ON true
     WHERE o.id = u.id
    RETURNING o.id, o.user_id, o.side, o.instrument_id, o.client_order_id,
              CASE WHEN u.open THEN e.reduced ELSE e.hold_left END AS hold_left,
              u.open AS live
)
SELECT r.id, r.user_id,
       CASE WHEN r.hold_left > 0 THEN
            CASE WHEN r.side = 'buy' THEN i.quote_asset ELSE i.base_asset END END,
       r.hold_left, r.side, r.client_order_id, r.live
  FROM updated r
  JOIN exchange_instrument i ON i.id = r.instrument_id
""".replace("HOLD_LEFT", _HOLD_LEFT)

# The orders a batch may give hold back from, locked first (in id order) so that an amend of one
# either committed before the batch's statements read it or waits for the batch's commit.
ORDERS_LOCK_SQL = """
SELECT FROM exchange_order WHERE id = ANY(%s::bigint[]) ORDER BY id FOR NO KEY UPDATE
"""

TRADES_INSERT_SQL = """
INSERT INTO exchange_trade (
    instrument_id, engine_trade_seq, price, quantity, quote_quantity, maker_order_id,
    taker_order_id, maker_user_id, taker_user_id, taker_side, maker_fee, taker_fee,
    executed_at, executed_at_ns)
SELECT i.instrument_id, t.engine_trade_seq, t.price * f.tick, t.qty * f.lot,
       t.notional * f.minor, t.maker_order_id, t.taker_order_id, t.maker_user_id,
       t.taker_user_id, t.taker_side, t.maker_fee * f.minor, t.taker_fee * f.minor,
       t.executed_at, t.executed_at_ns
  FROM batch_trade t
  JOIN unnest(%s::numeric[], %s::numeric[], %s::numeric[]) WITH ORDINALITY AS f(tick, lot, minor, k)
    ON f.k = t.k
  JOIN unnest(%s::text[], %s::bigint[]) AS i(symbol, instrument_id) ON i.symbol = t.symbol
 ORDER BY t.engine_trade_seq
RETURNING id, engine_trade_seq
"""

# Three array literals made by `_command_params` (no staging table: one COPY round trip and
# a temp-table write fewer per batch).
COMMANDS_APPLIED_SQL = """
UPDATE matching_command c
   SET applied_at = now(), apply_seq = u.apply_seq, reject_code = u.reject_code,
       reject_message = u.reject_message
  FROM unnest(%s::bigint[], %s::bigint[], %s::text[], %s::text[])
       AS u(id, apply_seq, reject_code, reject_message)
 WHERE c.id = u.id AND c.applied_at IS NULL
"""

# The rows a batch stages for the orders update and the trades insert: (column, type).
# d_quote and d_fees are numeric: they sum one order's fills in the batch, and a large sell
# filled by several buyers passes 64 bits even though each trade fits (a buy's budget, which
# bounds its trades, is below protocol.MAX_UNITS).
ORDER_ROW_COLUMNS = (
    ("id", "bigint"), ("k", "int"), ("status", "text"), ("reason", "text"),
    ("reject_code", "text"), ("reject_message", "text"), ("filled", "bigint"),
    ("remaining", "bigint"), ("reserve", "bigint"), ("d_quote", "numeric"), ("d_fees", "numeric"),
    ("spent", "bigint"), ("d_spent", "bigint"), ("price", "bigint"), ("seq", "bigint"),
    ("max_quote", "bigint"), ("expire_at", "timestamptz"), ("hold_release", "numeric"),
    ("held_revert", "numeric"), ("quantity", "bigint"), ("d_value", "numeric"),
    ("need", "bigint"),
)  # fmt: skip
TRADE_ROW_COLUMNS = (
    ("symbol", "text"), ("k", "int"), ("engine_trade_seq", "bigint"), ("price", "bigint"),
    ("qty", "bigint"), ("notional", "bigint"), ("maker_order_id", "bigint"),
    ("taker_order_id", "bigint"), ("maker_user_id", "bigint"), ("taker_user_id", "bigint"),
    ("taker_side", "text"), ("maker_fee", "bigint"), ("taker_fee", "bigint"),
    ("executed_at", "timestamptz"), ("executed_at_ns", "bigint"),
)  # fmt: skip

# A large batch stages its rows with COPY into per-session temp tables (psycopg formats COPY
# rows in C; the same values as array parameters cost milliseconds of Python per thousand),
# emptied at every commit. A small one passes them as array parameters instead: a transaction
# that touched those tables truncates them at commit, which cost a small batch more than the
# rest of its commit.
INLINE_ROWS_MAX = 64


def _staging_table(name: str, columns: tuple) -> str:
    body = ", ".join(f"{column} {kind}" for column, kind in columns)
    return f"CREATE TEMP TABLE IF NOT EXISTS {name} ({body}) ON COMMIT DELETE ROWS"


def _inline_rows(alias: str, columns: tuple) -> str:
    """The staged rows as array parameters, one per column, in a FROM clause."""
    arrays = ", ".join(f"%s::{kind}[]" for _, kind in columns)
    return f"unnest({arrays}) AS {alias}({', '.join(column for column, _ in columns)})"


STAGING_SQL = ";\n".join(
    (
        _staging_table("batch_order_update", ORDER_ROW_COLUMNS),
        _staging_table("batch_trade", TRADE_ROW_COLUMNS),
    )
)
ORDERS_UPDATE_INLINE_SQL = ORDERS_UPDATE_SQL.replace(
    "FROM batch_order_update u", "FROM " + _inline_rows("u", ORDER_ROW_COLUMNS)
)
TRADES_INSERT_INLINE_SQL = TRADES_INSERT_SQL.replace(
    "FROM batch_trade t", "FROM " + _inline_rows("t", TRADE_ROW_COLUMNS)
)
assert ORDERS_UPDATE_INLINE_SQL != ORDERS_UPDATE_SQL
assert TRADES_INSERT_INLINE_SQL != TRADES_INSERT_SQL

# The JSON column goes in binary (%b): a text-format array escapes each of its quotes in Python
# (a regex substitution per quote: ~50 µs a payload).
BOOKS_UPSERT_SQL = """
INSERT INTO matching_bookstate (symbol, shard, book_seq, last_price_ticks, halted, position, spec)
SELECT * FROM unnest(
    %s::text[], %s::int[], %s::bigint[], %s::bigint[], %s::bool[], %s::int[], %b::jsonb[])
ON CONFLICT (symbol) DO UPDATE
   SET shard = EXCLUDED.shard, book_seq = EXCLUDED.book_seq,
       last_price_ticks = EXCLUDED.last_price_ticks, halted = EXCLUDED.halted,
       spec = EXCLUDED.spec
"""

SHARD_STATE_SQL = """
UPDATE matching_shardstate
   SET apply_seq = COALESCE(%s, apply_seq), event_seq = %s, trade_seq = %s,
       last_stamp_ns = %s
 WHERE shard = %s AND lease_epoch = %s
"""


def _array_text(values: list[str]) -> str:
    """A PostgreSQL array literal of already-formatted elements."""
    return "{" + ",".join(values) + "}"


def _quoted(text: str) -> str:
    """An array literal element for any text (the reject codes are identifiers anyway)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _command_params(applied: list[Applied]) -> list[str]:
    """COMMANDS_APPLIED_SQL's arrays as literals: ids, journal positions (NULL when not
    journaled), reject codes and reject messages."""
    return [
        _array_text([str(a.command_id) for a in applied]),
        _array_text(["NULL" if a.apply_seq is None else str(a.apply_seq) for a in applied]),
        _array_text([_quoted(a.reject_code) for a in applied]),
        _array_text([_quoted(a.reject_message) for a in applied]),
    ]


def _raw_cursor() -> psycopg.Cursor:
    """A psycopg cursor with server-side binding on Django's connection (inside its
    transaction): Django's default client-side binding quotes every array element in Python."""
    connection.ensure_connection()
    return psycopg.Cursor(connection.connection)


def lease_epoch_check(*, shard: int, epoch: int) -> None:
    """Lock the shard-state row for this transaction and raise LeaseFenced unless the epoch is
    ours; a takeover's epoch bump then waits for this batch to commit or roll back."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT lease_epoch FROM matching_shardstate WHERE shard = %s FOR UPDATE; "
            # The batch joins a few thousand staged rows to large tables by primary key: index
            # lookups, never a hash join over a full scan (which grows with history).
            "SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off",
            [shard],
        )
        row = cursor.fetchone()
    if row is None or row[0] != epoch:
        raise LeaseFenced(f"shard {shard}: epoch is {row and row[0]}, ours is {epoch}")


class BatchWriter:
    """Writes batches for one shard under one lease epoch."""

    def __init__(
        self, *, shard: int, epoch: int, actor_label: str, instrument_ids: dict[str, int]
    ) -> None:
        self.shard = shard
        self.epoch = epoch
        self.actor_label = actor_label
        self.instrument_ids = instrument_ids
        self.assets: dict[str, tuple[str, str]] = {}  # symbol -> (base asset, quote asset)
        self.settlement = SettlementWriter()
        self._staging_for = None  # the connection whose staging tables exist
        self._texts: dict[str, DecimalText] = {}  # symbol -> memo for its current spec

    # ---- public --------------------------------------------------------------------------
    def write(self, *, engine: Engine, applied: list[Applied]) -> BatchOutcome:
        """Write the batch in one transaction (raises, rolled back, on any failure)."""
        prepared = self.prepare(engine=engine, applied=applied)
        self.execute(prepared)
        return prepared.outcome

    def session_prepare(self) -> None:
        """Connect this thread and create its staging tables (before the first batch)."""
        connection.ensure_connection()
        if self._staging_for is not connection.connection:  # a new session (or reconnected)
            with connection.cursor() as cursor:
                cursor.execute(STAGING_SQL)
            # This session's batch statements are prepared (also with Django's pool off, which
            # turns preparing off elsewhere) and planned once: their plans are index lookups by
            # primary key whatever the batch's size (hash and merge joins are off for the
            # batch), so a plan per batch is waste.
            connection.connection.prepare_threshold = settings.DB_PREPARE_THRESHOLD
            with connection.cursor() as cursor:
                cursor.execute("SET plan_cache_mode = force_generic_plan")
            self._staging_for = connection.connection

    def prepare(self, *, engine: Engine, applied: list[Applied]) -> "PreparedBatch":
        """Everything the batch will write, read from the engine now (its state right after
        this batch): the engine may move on to the next batch before this one commits."""
        specs = {inst.symbol: inst for inst in engine.instruments()}
        texts = self._texts_for(specs)
        statuses: list[dict[str, Any]] = []
        updates, trades, symbols, audits = self._collect(applied, specs, texts, statuses)
        _subjects_fill(audits)
        amend_releases, ended_held_reverts = self._amend_holds(engine, applied, updates)
        self._live_orders(engine, updates)
        self._hold_needs(engine, specs, updates)
        order_rows, factors, factor_k = self._order_rows(updates, specs)
        last_seq = max((a.apply_seq for a in applied if a.apply_seq is not None), default=None)
        ledger_users = {uid for t in trades for uid in (t[p.T_MAKER_USER_ID], t[p.T_TAKER_USER_ID])}
        ledger_users.update(
            u.user_id for u in updates.values() if u.status in ENDED or u.hold_release
        )
        ledger_users.update(release[1] for release in amend_releases)
        # Those whose orders may give hold back (`reduced`, found by the orders UPDATE).
        ledger_users.update(u.user_id for u in updates.values() if u.need is not None)
        ledger_users.discard(None)
        return PreparedBatch(
            applied=applied,
            specs=specs,
            symbols=symbols,
            order_rows=order_rows,
            factors=factors,
            trade_rows=self._trade_rows(trades, factor_k),
            command_params=_command_params(applied),
            journal_rows=self._journal_rows(applied),
            books=self._book_params(engine, symbols),
            # The engine's counters (the same two that export_state() reports).
            counters=(
                last_seq,
                engine.ev_seq,
                engine.trade_seq,
                max(a.stamp_ns for a in applied),
            ),
            audit_rows=audit_rows(records=audits),
            amend_releases=amend_releases,
            ended_held_reverts=ended_held_reverts,
            ledger_users=sorted(ledger_users),
            reducible=sorted(u.id for u in updates.values() if u.need is not None),
            outcome=BatchOutcome(
                command_ids=[a.command_id for a in applied],
                symbols=symbols,
                trades=[self._trade_summary(t, texts) for t in trades],
                # Not an order whose only change is a refused amend's hold, given back: the
                # engine left it as it was (its frame had read `accepted` again).
                orders=[self._order_summary(u, texts) for u in updates.values() if not u.hold_only],
                statuses=statuses,
            ),
        )

    def _texts_for(self, specs: dict[str, Instrument]) -> dict[str, DecimalText]:
        texts = self._texts
        for symbol, inst in specs.items():
            memo = texts.get(symbol)
            if memo is None or memo.inst is not inst:  # new, or its spec was replaced
                texts[symbol] = DecimalText(inst)
        return texts

    def execute(self, prepared: "PreparedBatch") -> None:
        """Write a prepared batch in one transaction on this thread's connection (raises,
        rolled back, on any failure). Reads nothing from the engine."""
        self.session_prepare()
        try:
            trade_ids, order_refs = self._execute(prepared)
        except BaseException:
            self.settlement.forget()  # accounts it created are rolled back
            raise
        # Committed: market data names trades by their Trade row id, as the REST API does (an
        # order's fills on the orders channel too), and an order frame says the order's side
        # and client_order_id, read back by the batch's own UPDATE.
        for trade in prepared.outcome.trades:
            trade["trade_id"] = trade_ids.get(trade["trade_id"], trade["trade_id"])
        for summary in prepared.outcome.orders:
            ref = order_refs.get(summary["order_id"])
            if ref is not None:
                summary["side"], summary["client_order_id"] = ref
            for fill in summary.get("fills", ()):
                fill["trade_id"] = trade_ids.get(fill["trade_id"], fill["trade_id"])

    def _execute(
        self, prepared: "PreparedBatch"
    ) -> tuple[dict[int, int], dict[int, tuple[str, str | None]]]:
        with transaction.atomic():
            lease_epoch_check(shard=self.shard, epoch=self.epoch)
            # An amend that failed twice releases a hold with no event naming its symbol.
            released = {symbol for _, _, symbol, _, _ in prepared.amend_releases}
            self._instrument_ids_refresh(prepared.symbols | released)
            # Stage the rows (COPY, or array parameters for a small batch), then apply them
            # with one pipeline of prepared statements.
            inline = max(len(prepared.order_rows), len(prepared.trade_rows)) <= INLINE_ROWS_MAX
            if not inline:
                self._copy("batch_order_update", prepared.order_rows)
                self._copy("batch_trade", prepared.trade_rows)
            self._journal_write(prepared.journal_rows)
            trade_ids, updated = self._staged_apply(prepared, inline=inline)
            audits = prepared.audit_rows
            if trade_ids:  # engine trade seq -> Trade row id
                t = ROW_TRADE_ID
                audits = [
                    row if row[t] is None else (*row[:t], trade_ids.get(row[t]), *row[t + 1 :])
                    for row in audits
                ]
            audit_rows_copy(rows=audits)
            # Settlement last: it locks the batch's users and accounts (the exchange's fee and
            # rebate accounts among them), which order entry and the other shards' batches wait
            # for until this commits; written before the audit rows, it held them through the
            # batch's largest COPY as well.
            prepared.outcome.balances = self.settlement.write(
                fills=self._fills(prepared, trade_ids),
                releases=[
                    *self._amend_hold_releases(prepared),
                    *(
                        HoldRelease(*row[:4], "reduced" if row[6] else "")
                        for row in updated
                        if row[2] is not None
                    ),
                ],
            )
            self._volume_add(prepared)
        return trade_ids, {row[0]: (row[4], row[5]) for row in updated}

    # ---- collecting ------------------------------------------------------------------------
    def _collect(
        self,
        applied: list[Applied],
        specs: dict[str, Instrument],
        texts: dict[str, DecimalText],
        statuses: list[dict[str, Any]],
    ):
        updates: dict[int, _OrderUpdate] = {}
        trades: list[tuple] = []
        symbols: set[str] = set()
        audits: list[AuditEntry] = []

        def upd(order_id: int, symbol: str | None, user_id: int | None) -> _OrderUpdate:
            u = updates.get(order_id)
            if u is None:
                u = updates[order_id] = _OrderUpdate(order_id, symbol, user_id)
            return u

        for a in applied:
            if a.cmd is None:  # rejected without the engine (failed twice, session closed)
                reason = REASONS_WITHOUT_ENGINE.get(a.reject_code, p.R_INVALID)
                if a.kind == "place" and a.order_id is not None:
                    u = upd(a.order_id, None, None)
                    u.status, u.reason, u.reject_code = p.REJECTED, reason, a.reject_code
                    u.reject_message = REJECT_MESSAGES.get(a.reject_code, "")
                    u.filled = u.remaining = 0
                if a.order_id is not None:  # the order's own command, or its amend or cancel
                    event = REFUSED_EVENTS.get(KIND_OPCODES.get(a.kind), AuditEvent.ORDER_REJECTED)
                    audits.append(self._audit(event, a, order_id=a.order_id,
                                              payload={"command": a.kind, "reason": reason,
                                                       "code": a.reject_code}))  # fmt: skip
                continue
            op = a.cmd[0]
            subject = a.cmd[3] if op == p.OP_PLACE else (a.cmd[2] if op == p.OP_AMEND else None)
            triggered: set[int] = set()
            reduced: set[int] = set()  # resting orders decrement_both took quantity off
            # Where a placed order's `order.accepted` goes: before the records its arrival
            # caused (its fills, a trigger, a self-trade prevented), and only once.
            start, accepted_at = len(audits), -1
            for ev in a.events:
                kind = ev[0]
                symbol = ev[3]
                if symbol is not None:
                    symbols.add(symbol)
                if kind == p.EV_ORDER:
                    (_, _, _, sym, oid, uid, status, reason, filled, remaining, price,
                     spent) = ev  # fmt: skip
                    if a.cancel_reason and status == p.CANCELLED and reason == p.R_USER:
                        reason = a.cancel_reason
                        ev = (*ev[:7], reason, *ev[8:])
                    u = upd(oid, sym, uid)
                    if status == p.TRIGGERED:
                        u.triggered = True
                    elif op == p.OP_AMEND and oid == subject:
                        u.amended = u.rebudget = True
                    u.status, u.reason = status, reason or ""
                    u.filled, u.remaining = filled, remaining
                    u.price = price or None
                    u.spent, u.d_spent = spent, 0
                    entry = self._order_audit(a, ev, subject, op, triggered, reduced, texts)
                    if oid != subject or op != p.OP_PLACE or entry.event_type != ACCEPTED:
                        placed = op == p.OP_PLACE and oid == subject
                        if placed and accepted_at < 0 and entry.event_type in ENDED_EVENTS:
                            # Taken in and ended by the same command (an IOC's or a market
                            # order's unfilled rest, a taker self-trade prevention cancelled):
                            # accepted first all the same, with its state after the command.
                            state = {k: v for k, v in entry.payload.items() if k in STATE}
                            accepted = self._audit(ACCEPTED, a, order_id=oid, user_id=uid,
                                                   symbol=sym, payload=state)  # fmt: skip
                            audits.insert(start, accepted)
                            accepted_at = start
                        audits.append(entry)
                    elif accepted_at < 0:
                        audits.insert(start, entry)
                        accepted_at = start
                    else:  # its state after the command (decrement_both had reported it)
                        audits[accepted_at] = entry
                elif kind == p.EV_TRADE:
                    self._trade_collect(ev, upd)
                    trades.append(ev)
                    audits.extend(self._trade_audits(a, ev, texts))
                elif kind == p.EV_REJECT:
                    if _own_refusal(a, ev):  # not a triggered stop's rejection
                        a.reject_code = a.reject_code or ev[p.R_CODE]
                        if not a.reject_message:  # a refused amend had said only "refused"
                            a.reject_message = reject_message(ev, specs.get(ev[3]))
                    oid = ev[p.R_ORDER_ID]
                    if (
                        ev[p.R_OPCODE] == p.OP_PLACE
                        and oid is not None
                        and ev[p.R_CODE] != p.DUPLICATE_ORDER_ID
                    ):
                        u = upd(oid, ev[3], ev[p.R_USER_ID])
                        u.status, u.reason, u.reject_code = p.REJECTED, ev[p.R_REASON], ev[7]
                        u.reject_message = reject_message(ev, specs.get(ev[3]))
                        u.filled = u.remaining = 0  # refused before any fill
                    detail = ev[p.R_DETAIL]
                    if ev[p.R_CODE] == p.POST_ONLY_WOULD_MATCH and ev[3] in texts:
                        detail = texts[ev[3]].price(detail)  # the price, not engine ticks
                    audits.append(
                        self._audit(
                            REFUSED_EVENTS.get(ev[p.R_OPCODE], AuditEvent.ORDER_REJECTED),
                            a,
                            order_id=oid,
                            user_id=ev[p.R_USER_ID],
                            symbol=ev[3],
                            payload={
                                "command": a.kind,
                                "code": ev[p.R_CODE],
                                "reason": ev[p.R_REASON],
                                "detail": detail,
                            },
                        )
                    )
                elif kind == p.EV_EXPIRY_MOVED:  # new session hours moved a DAY order
                    (_, _, _, sym, oid, uid, expire_at, previous) = ev
                    u = upd(oid, sym, uid)
                    # Kept for one that also expires at once (only live ones are read again).
                    u.expiry_moved, u.expire_at = True, expire_at
                    audits.append(
                        self._audit(
                            AuditEvent.ORDER_EXPIRY_CHANGED,
                            a,
                            order_id=oid,
                            user_id=uid,
                            symbol=sym,
                            payload={
                                "expire_at": iso_z(ns_to_datetime(expire_at)),
                                "previous_expire_at": iso_z(ns_to_datetime(previous)),
                                "reason": "session_hours_changed",
                                "command_id": a.command_id,
                            },
                        )
                    )
                elif kind == p.EV_STP:
                    (_, _, _, sym, mode, taker, maker, uid, price, qty) = ev
                    if mode == "decrement_both":  # the resting one (the taker's is news)
                        resting = upd(maker, sym, uid)
                        resting.stp_reduced = resting.rebudget = True
                        reduced.add(maker)
                        upd(taker, sym, uid).rebudget = True
                    payload = {
                        "mode": mode,
                        "taker_order_id": taker,
                        "maker_order_id": maker,
                        "price": texts[sym].price(price),
                        "quantity": texts[sym].qty(qty),
                        "command_id": a.command_id,
                    }
                    # Under both orders: the resting one's history had shown only a change
                    # by the system, with no reason.
                    audits.extend(
                        self._audit(
                            AuditEvent.SELF_TRADE_PREVENTED,
                            a,
                            order_id=order_id,
                            user_id=uid,
                            symbol=sym,
                            payload={**payload, "role": role},
                        )
                        for order_id, role in ((taker, "incoming"), (maker, "resting"))
                    )
                elif kind == p.EV_INSTRUMENT and ev[p.I_ACTION] in INSTRUMENT_AUDIT_EVENTS:
                    action = ev[p.I_ACTION]
                    payload = {"command_id": a.command_id}  # its request names it too
                    if action == "updated":  # the rules the engine now applies
                        payload |= dataclasses.asdict(a.cmd[2])
                        if len(a.cmd) > 3:  # new session hours: the DAY orders' new expiry
                            payload["day_orders_expire_at"] = iso_z(ns_to_datetime(a.cmd[3]))
                    else:
                        payload |= a.halt_note or {}
                        statuses.append(_status_change(symbol, action, a))
                    event = INSTRUMENT_AUDIT_EVENTS[action]
                    audits.append(self._audit(event, a, symbol=symbol, payload=payload))
            if a.priority_seq is not None and subject in updates:
                updates[subject].seq = a.priority_seq
            # A post-only buy repriced behind the best ask needs less than its price held.
            if op == p.OP_PLACE and a.cmd[5] and a.cmd[11] & p.POST_ONLY_ADJUST:
                placed = updates.get(subject)
                if placed is not None:
                    placed.rebudget = True
            # An amend the engine accepted sets the order's new total quantity.
            if op == p.OP_AMEND and a.cmd[4] is not None and subject in updates and not _refused(a):
                updates[subject].quantity = a.cmd[4]
        return updates, trades, symbols, [e for e in audits if e is not None]

    @staticmethod
    def _trade_collect(ev: tuple, upd) -> None:
        (_, _, _, sym, tseq, price, qty, notional, m_oid, m_uid, t_oid, t_uid, t_buy,
         m_fee, t_fee, m_status, m_filled, m_rem, t_filled, t_rem) = ev  # fmt: skip
        m = upd(m_oid, sym, m_uid)
        m.fills = m.fills or []
        m.fills.append((tseq, price, qty, m_fee, "maker"))
        # A maker trades at its own price: an order filled to its end in this batch has no
        # later event to give it (its last frame on the orders channel showed none).
        m.status, m.filled, m.remaining, m.price = m_status, m_filled, m_rem, price
        m.d_quote += notional
        m.d_value += price * qty
        m.d_fees += m_fee
        if not t_buy:
            m.d_spent += notional + m_fee
        t = upd(t_oid, sym, t_uid)
        t.rebudget = t.rebudget or t_buy  # what it saved below its price, if it rests
        t.fills = t.fills or []
        t.fills.append((tseq, price, qty, t_fee, "taker"))
        t.filled, t.remaining = t_filled, t_rem
        t.status = p.FILLED if t_rem == 0 else p.PARTIALLY_FILLED
        t.d_quote += notional
        t.d_value += price * qty
        t.d_fees += t_fee
        if t_buy:
            t.d_spent += notional + t_fee

    @staticmethod
    def _amend_holds(engine: Engine, applied: list[Applied], updates: dict[int, _OrderUpdate]):
        """Hold changes of the batch's amends, for orders still live after the batch (an order
        that ended gives back its whole hold anyway): a decrease the engine applied is released;
        a refused increase is released and the order's held_amount changes back. An amend that
        failed twice (never applied) counts as refused. An order that ended gets its held_amount
        back too: returned apart for one that ended in an earlier batch."""
        releases, ended_reverts = [], []
        for a in applied:
            if a.cmd is not None and a.cmd[0] == p.OP_AMEND:
                order_id, refused = a.cmd[2], _refused(a)
            elif a.cmd is None and a.kind == "amend" and a.order_id is not None:
                order_id, refused = a.order_id, True
            else:
                continue
            delta = a.hold_delta or Decimal(0)
            if not delta and not refused:
                continue  # applied: its order's event marks it for the need's reckoning
            live = engine.order(order_id)
            if live is None:
                # Its hold went back whole when it ended; only the row's held_amount still
                # read the amend's (a filled 20 x 99.90 buy said 1201.31 held).
                if refused and delta:
                    ended = updates.get(order_id)
                    if ended is not None:
                        ended.held_revert += delta
                    else:
                        ended_reverts.append((order_id, delta))
                continue
            release = (delta if delta > 0 else Decimal(0)) if refused else max(-delta, Decimal(0))
            if not release and not refused:
                continue
            u = updates.get(live["order_id"])
            if u is None:
                u = updates[live["order_id"]] = _OrderUpdate(
                    live["order_id"], live["symbol"], live["user_id"]
                )
                u.hold_only = True
            if refused:
                # Even with nothing to revert: a batch that ran while the amend waited for the
                # engine gave nothing back (a price-only amend refused, say), this one reckons.
                u.held_revert += delta
                u.rebudget = True
            if release:
                u.hold_release += release
                releases.append(
                    (live["order_id"], live["user_id"], live["symbol"], live["is_buy"], release)
                )
        return releases, ended_reverts

    def _amend_hold_releases(self, prepared: "PreparedBatch") -> list[HoldRelease]:
        releases = []
        for order_id, user_id, symbol, is_buy, amount in prepared.amend_releases:
            base, quote = self.assets[symbol]
            asset = quote if is_buy else base
            releases.append(HoldRelease(order_id, user_id, asset, amount, "amend"))
        return releases

    def _fills(self, prepared: "PreparedBatch", trade_ids: dict[int, int]) -> list[TradeFill]:
        """The batch's trades in ledger terms (Decimal amounts in each instrument's assets)."""
        fills = []
        specs = prepared.specs
        for (sym, _k, tseq, _price, qty, notional, _m_oid, t_oid, m_uid, t_uid, taker_side,
             m_fee, t_fee, _ts, _ts_ns) in prepared.trade_rows:  # fmt: skip
            inst = specs[sym]
            base, quote = self.assets[sym]
            to_quote = inst.minor_to_quote
            taker_buys = taker_side == "buy"
            fills.append(
                TradeFill(
                    trade_id=trade_ids[tseq],
                    taker_order_id=t_oid,
                    buyer_id=t_uid if taker_buys else m_uid,
                    seller_id=m_uid if taker_buys else t_uid,
                    base=base,
                    quote=quote,
                    quantity=inst.lots_to_qty(qty),
                    notional=to_quote(notional),
                    buyer_fee=to_quote(t_fee if taker_buys else m_fee),
                    seller_fee=to_quote(m_fee if taker_buys else t_fee),
                )
            )
        return fills

    def _volume_add(self, prepared: "PreparedBatch") -> None:
        """Count the batch's trades in both users' daily volume (the fee tiers' 30 days): those
        of instruments quoted in the tiers' currency."""
        if not prepared.trade_rows:
            return
        specs, assets = prepared.specs, self.assets
        legs = (
            (m_uid, t_uid, ts.date(), specs[sym].minor_to_quote(notional))
            for (sym, _k, _tseq, _price, _qty, notional, _m_oid, _t_oid, m_uid, t_uid, _side,
                 _m_fee, _t_fee, ts, _ts_ns) in prepared.trade_rows
            if assets[sym][1] == VOLUME_QUOTE_ASSET
        )  # fmt: skip
        with psycopg.Cursor(connection.connection) as cursor:
            daily_volume_add(cursor=cursor, rows=daily_volume_rows(legs))

    @staticmethod
    def _live_orders(engine: Engine, updates: dict[int, _OrderUpdate]) -> None:
        """Orders still live after the batch take their full current record from the engine."""
        live_state = engine.live_state
        for u in updates.values():
            live = live_state(u.id)
            if live is None:
                u.reserve = 0
                if u.status in ENDED:
                    u.remaining = 0
                continue
            (u.status, u.filled, u.remaining, u.reserve, price, u.seq, u.spent, u.max_quote,
             expire_at) = live  # fmt: skip
            u.reason = ""
            u.price = price or None
            u.d_spent = 0
            u.expire_at = expire_at or None

    @staticmethod
    def _hold_needs(engine: Engine, specs: dict[str, Instrument], updates) -> None:
        """What the rest of each live order marked `rebudget` needs held: a sell its remaining
        lots; a priced buy its remaining lots at its price with the fee and the fee rounding
        reserve, as order entry and amends reckon it (`buy_cost_minor`). The batch's UPDATE
        gives back what the order holds above that.

        The engine's spending cap (max_quote) stays where it was, so the need must bound every
        way the rest can still be paid for: at the higher of its two fee rates (a fee tier may
        charge makers more than takers), and only where a lot at its price is worth at least
        one minor unit (below that each fill costs at least one unit whatever its size, and only
        the cap stops the order: it keeps its hold). A stop-loss buy (no price: held at a
        collar) keeps its hold too; an ended order gives back all of its hold anyway."""
        for u in updates.values():
            if not u.rebudget:
                continue
            live = engine.order(u.id)
            if live is None:
                continue
            if not live["is_buy"]:
                u.need = live["remaining"]
                continue
            inst, price = specs[live["symbol"]], live["price"]
            if price and price * inst.k_num >= inst.k_den:
                fee_ppm = max(live["maker_fee_ppm"], live["taker_fee_ppm"])
                u.need = buy_cost_minor(inst, price, live["remaining"], fee_ppm)

    # ---- audit -------------------------------------------------------------------------------
    def _audit(self, event_type, a: Applied, **fields) -> AuditEntry:
        return AuditEntry(
            event_type=str(event_type),
            actor_label=self.actor_label,
            shard=self.shard,
            ts_ns=a.stamp_ns,
            **fields,
        )

    def _order_audit(
        self, a, ev, subject, op, triggered: set[int], reduced: set[int], texts
    ) -> AuditEntry | None:
        (_, _, _, sym, oid, uid, status, reason, filled, remaining, price, _spent) = ev
        text = texts[sym]
        payload = {
            "status": status,
            "filled": text.qty(filled),
            "remaining": text.qty(remaining),
            "command_id": a.command_id,
        }
        if price:
            payload["price"] = text.price(price)
        if status == p.CANCELLED:
            event = AuditEvent.ORDER_CANCELLED
            payload["who"] = (
                "user" if reason == p.R_USER else "staff" if reason == "staff" else "system"
            )
            payload["why"] = reason
            # The command that ended it: a mass cancel's request is recorded once, without an
            # order (its record names this command_id), so the order's history says which.
            payload["command"] = a.kind
        elif status == p.EXPIRED:
            event, payload["why"] = AuditEvent.ORDER_EXPIRED, reason
        elif status == p.TRIGGERED:
            event = AuditEvent.ORDER_TRIGGERED
            triggered.add(oid)
        elif status == p.REJECTED:
            event, payload["reason"] = AuditEvent.ORDER_REJECTED, reason
        elif oid in reduced or reason == p.R_STP:  # decrement_both: it stays open, with less
            event, payload["why"] = AuditEvent.ORDER_REDUCED, p.R_STP
        elif op == p.OP_AMEND and oid == subject:
            event = AuditEvent.ORDER_AMENDED
        elif oid == subject:
            event = AuditEvent.ORDER_ACCEPTED
        elif oid in triggered:
            # A stop triggered by another command: accepted when placed, its trigger and fills
            # recorded now; what it became is in those (it read `order.accepted` again).
            return None
        else:
            event = AuditEvent.ORDER_AMENDED
        return self._audit(event, a, order_id=oid, user_id=uid, symbol=sym, payload=payload)

    def _trade_audits(self, a: Applied, ev: tuple, texts) -> list[AuditEntry]:
        """A trade's records: one under each side's order and user (`liquidity` says which),
        so that each order's history and each user's activity hold its fills (the resting
        order's fills were named only inside the incoming order's record)."""
        (_, _, _, sym, tseq, price, qty, notional, m_oid, m_uid, t_oid, t_uid, t_buy, m_fee,
         t_fee, *_rest) = ev  # fmt: skip
        text = texts[sym]
        payload = {
            "engine_trade_seq": tseq,
            "maker_order_id": m_oid,
            "taker_order_id": t_oid,
            "maker_user_id": m_uid,
            "taker_user_id": t_uid,
            "maker_side": "sell" if t_buy else "buy",
            "price": text.price(price),
            "quantity": text.qty(qty),
            "quote_quantity": text.quote(notional),
            "maker_fee": text.quote(m_fee),
            "taker_fee": text.quote(t_fee),
        }
        return [
            self._audit(
                AuditEvent.TRADE_EXECUTED,
                a,
                order_id=order_id,
                user_id=user_id,
                trade_id=tseq,  # replaced by the Trade row id once inserted
                symbol=sym,
                payload={**payload, "liquidity": liquidity},
            )
            for order_id, user_id, liquidity in ((t_oid, t_uid, "taker"), (m_oid, m_uid, "maker"))
        ]

    # ---- writing -----------------------------------------------------------------------------
    def _instrument_ids_refresh(self, symbols: set[str]) -> None:
        missing = [s for s in symbols if s not in self.instrument_ids or s not in self.assets]
        if missing:
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT symbol, id, base_asset, quote_asset FROM exchange_instrument "
                    "WHERE symbol = ANY(%s)",
                    [missing],
                )
                for symbol, instrument_id, base, quote in cursor.fetchall():
                    self.instrument_ids[symbol] = instrument_id
                    self.assets[symbol] = (base, quote)

    @staticmethod
    def _order_rows(updates: dict[int, _OrderUpdate], specs) -> tuple[list[tuple], tuple, dict]:
        """Staging rows for the orders update, the per-instrument scale factors, and each
        symbol's position k in them."""
        factors: dict[str | None, int] = {}
        ticks, lots, minors = [], [], []
        for symbol, inst in [*specs.items(), (None, None)]:
            factors[symbol] = len(ticks) + 1
            # A row rejected without the engine has no instrument: unit factors, zero deltas.
            ticks.append(Decimal(inst.tick_size) if inst else Decimal(1))
            lots.append(Decimal(inst.lot_size) if inst else Decimal(1))
            minors.append(Decimal(1).scaleb(-inst.quote_decimals) if inst else Decimal(1))
        cols: list[list] = [[] for _ in range(22)]
        (c_id, c_k, c_status, c_reason, c_code, c_message, c_filled, c_rem, c_res, c_dq, c_df,
         c_spent, c_ds, c_price, c_seq, c_mq, c_exp, c_release, c_revert, c_qty,
         c_dv, c_need) = cols  # fmt: skip
        for u in updates.values():
            c_id.append(u.id)
            c_k.append(factors[u.symbol if u.symbol in factors else None])
            c_status.append(u.status)
            c_reason.append(u.reason)
            c_code.append(u.reject_code)
            c_message.append(u.reject_message)
            c_filled.append(u.filled)
            c_rem.append(u.remaining)
            c_res.append(u.reserve)
            c_dq.append(u.d_quote)
            c_df.append(u.d_fees)
            c_spent.append(u.spent)
            c_ds.append(u.d_spent)
            c_price.append(u.price)
            c_seq.append(u.seq)
            c_mq.append(u.max_quote)
            c_exp.append(None if u.expire_at is None else ns_to_datetime(u.expire_at))
            c_release.append(u.hold_release)
            c_revert.append(u.held_revert)
            c_qty.append(u.quantity)
            c_dv.append(u.d_value)
            c_need.append(u.need)
        return list(zip(*cols, strict=True)), (ticks, lots, minors), factors

    @staticmethod
    def _trade_rows(trades: list[tuple], factor_k: dict) -> list[tuple]:
        """Staging rows for the trades insert (integers; SQL scales them like the orders)."""
        rows = []
        for ev in trades:
            (_, _, ts, sym, tseq, price, qty, notional, m_oid, m_uid, t_oid, t_uid, t_buy,
             m_fee, t_fee, *_rest) = ev  # fmt: skip
            rows.append(
                (sym, factor_k[sym], tseq, price, qty, notional, m_oid, t_oid, m_uid, t_uid,
                 "buy" if t_buy else "sell", m_fee, t_fee, ns_to_datetime(ts), ts)
            )  # fmt: skip
        return rows

    def _journal_rows(self, applied: list[Applied]) -> list[tuple]:
        encode = json_text
        shard = self.shard
        instrument_ops = (p.OP_ADD_INSTRUMENT, p.OP_UPDATE_INSTRUMENT)
        # A command tuple encodes as the array command_to_json makes of it (orjson writes
        # tuples as arrays); only an added or updated instrument needs its spec turned into
        # plain data.
        return [
            (
                shard,
                a.apply_seq,
                a.command_id,
                a.stamp_ns,
                encode(command_to_json(a.cmd) if a.cmd[0] in instrument_ops else a.cmd),
                encode(a.events),
            )
            for a in applied
            if a.apply_seq is not None
        ]

    def _journal_write(self, rows: list[tuple]) -> None:
        if not rows:
            return
        with (
            _raw_cursor() as raw,
            raw.copy(
                "COPY matching_journalentry "
                "(shard, apply_seq, command_id, stamp_ns, command, events) FROM STDIN"
            ) as copy,
        ):
            write_row = copy.write_row
            for row in rows:
                write_row(row)

    def _book_params(self, engine: Engine, symbols: set[str]) -> list[list] | None:
        if not symbols:
            return None
        instruments = engine.instruments()
        position = {inst.symbol: i for i, inst in enumerate(instruments)}
        rows = [s for s in sorted(symbols) if s in position]
        if not rows:
            return None
        specs = {inst.symbol: inst for inst in instruments}
        return [
            rows,
            [self.shard] * len(rows),
            [engine.book_seq(s) for s in rows],
            [engine.last_price(s) for s in rows],
            [engine.is_halted(s) for s in rows],
            [position[s] for s in rows],
            [json.dumps(list(specs[s].as_tuple())) for s in rows],
        ]

    @staticmethod
    def _copy(table: str, rows: list[tuple]) -> None:
        if rows:
            with _raw_cursor() as cursor, cursor.copy(f"COPY {table} FROM STDIN") as copy:
                write_row = copy.write_row
                for row in rows:
                    write_row(row)

    def _staged_apply(
        self, prepared: "PreparedBatch", *, inline: bool
    ) -> tuple[dict[int, int], list[tuple]]:
        """Orders, hold releases, commands, books, shard counters and trades from the staged
        rows (`inline`: passed here as arrays, not staged), in one round trip; returns engine
        trade seq -> Trade row id, and (order id, user id, asset, amount, side,
        client_order_id) of each order updated, its asset None unless the order ended with a
        hold to give back (`amount`)."""
        statements: list[tuple[str, str, list]] = []
        if prepared.reducible:
            statements.append(("lock", ORDERS_LOCK_SQL, [prepared.reducible]))
        # The commands first: the orders UPDATE must see this batch's amends applied.
        statements.append(("commands", COMMANDS_APPLIED_SQL, [*prepared.command_params]))
        if prepared.order_rows:
            if inline:
                columns = [list(column) for column in zip(*prepared.order_rows, strict=True)]
                params = [*columns, *prepared.factors]
                statements.append(("orders", ORDERS_UPDATE_INLINE_SQL, params))
            else:
                statements.append(("orders", ORDERS_UPDATE_SQL, [*prepared.factors]))
        if prepared.ended_held_reverts:
            ids, amounts = zip(*prepared.ended_held_reverts, strict=True)
            statements.append(("held", HELD_REVERT_SQL, [list(ids), list(amounts)]))
        if prepared.books:
            statements.append(("books", BOOKS_UPSERT_SQL, [*prepared.books]))
        counters = [*prepared.counters, self.shard, self.epoch]
        statements.append(("shard", SHARD_STATE_SQL, counters))
        if prepared.ledger_users:
            # Every user whose ledger the batch writes is locked here, in one sorted statement,
            # as every ledger writer locks them (see accounts.ledger), and before any Trade or
            # ledger id is drawn: so a user's fills and postings are numbered in commit order,
            # across shards too (GET /fills lists by id; a fill of one shard committed below an
            # id of another already read was skipped by a client reading down to the last id
            # it had seen). Orders were locked first, as by every writer; the settlement's own
            # lock of these users is then a no-op (locking some there, after these, would take
            # them out of order).
            statements.append(("users", USERS_LOCK_SQL, users_lock_params(prepared.ledger_users)))
        if prepared.trade_rows:
            ids = self.instrument_ids
            trade_params = [*prepared.factors, list(ids), list(ids.values())]
            if inline:
                columns = [list(column) for column in zip(*prepared.trade_rows, strict=True)]
                statements.append(("trades", TRADES_INSERT_INLINE_SQL, [*columns, *trade_params]))
            else:
                statements.append(("trades", TRADES_INSERT_SQL, trade_params))
        trade_ids: dict[int, int] = {}
        released: list[tuple] = []
        # Prepared statements (planned once per session: re-planning these joins cost more
        # than executing them for a small batch), sent together in one pipeline round trip
        # (ending with a Sync alone: see transaction_pipeline).
        conn = connection.connection
        results: list[tuple[str, psycopg.Cursor]] = []
        with transaction_pipeline():
            for name, sql, params in statements:
                cursor = psycopg.Cursor(conn)
                cursor.execute(sql, params, prepare=True)
                results.append((name, cursor))
        for name, cursor in results:
            with cursor:
                if name == "commands" and cursor.rowcount != len(prepared.applied):
                    raise AlreadyApplied(
                        f"shard {self.shard}: {len(prepared.applied) - cursor.rowcount} "
                        "command(s) of the batch were already applied"
                    )
                if name == "shard" and cursor.rowcount != 1:
                    raise LeaseFenced(f"shard {self.shard}: epoch {self.epoch} no longer ours")
                if name == "trades":
                    trade_ids = {tseq: trade_id for trade_id, tseq in cursor.fetchall()}
                if name == "orders":
                    released = cursor.fetchall()
        return trade_ids, released

    # ---- summaries for market data -------------------------------------------------------------
    @staticmethod
    def _trade_summary(ev: tuple, texts) -> dict[str, Any]:
        text = texts[ev[3]]
        return {
            "symbol": ev[3],
            "trade_id": ev[p.T_TRADE_SEQ],
            "price": text.price(ev[p.T_PRICE]),
            "quantity": text.qty(ev[p.T_QTY]),
            "taker_side": "buy" if ev[p.T_TAKER_IS_BUY] else "sell",
            "ts_ns": ev[p.E_TS],
        }

    @staticmethod
    def _order_summary(u: _OrderUpdate, texts) -> dict[str, Any]:
        text = texts.get(u.symbol) if u.symbol else None
        summary: dict[str, Any] = {"order_id": u.id, "user_id": u.user_id, "status": u.status}
        if text is not None:
            summary["symbol"] = u.symbol
            if u.filled is not None:
                summary["filled"] = text.qty(u.filled)
            if u.remaining is not None:
                summary["remaining"] = text.qty(u.remaining)
            if u.price is not None:
                summary["price"] = text.price(u.price)
            if u.fills:
                # As REST's fills (trade_id the engine's seq until the commit names the row).
                summary["fills"] = [
                    {
                        "trade_id": tseq,
                        "price": text.price(price),
                        "quantity": text.qty(qty),
                        "fee": text.quote(fee),
                        "liquidity": liquidity,
                    }
                    for tseq, price, qty, fee, liquidity in u.fills
                ]
        if u.amended:
            summary["amended"] = True
            if not u.d_value and u.status not in ENDED:
                # Nothing filled in this batch: its status (partially_filled, say) is not news
                # of a fill.
                summary["event"] = "amended"
        if u.stp_reduced and not u.d_value and u.status in (p.NEW, p.PARTIALLY_FILLED):
            # Self-trade prevention took quantity off an order that stays open: it had read
            # `accepted` again, remaining lower with no fill and no reason.
            summary["event"] = "reduced"
            summary["reason"] = "stp"
        elif u.reason:
            summary["reason"] = u.reason
        if u.reject_code:
            summary["rejection"] = rejection_body(u.reject_code, u.reject_message)
        if u.triggered:
            summary["triggered"] = True
        if u.expiry_moved and u.expire_at is not None and u.status not in ENDED:
            summary["expire_at"] = iso_z(ns_to_datetime(u.expire_at))  # "Z", as REST writes it
            if "event" not in summary and not (u.d_value or u.triggered):
                summary["event"] = "expiry_changed"  # nothing else happened to it
        return summary

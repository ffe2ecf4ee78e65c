"""Reads of the trading core: orders and fills scoped to their owner, and market data."""

import datetime as dt
import json
import logging
import time
from decimal import ROUND_HALF_EVEN, Decimal

import redis
from django.db import connection
from django.db.models import Count, Max, Min, Q, QuerySet, Sum
from django.utils import timezone

from exchange.api_errors import SERVICE_UNAVAILABLE_BODY, SERVICE_UNAVAILABLE_HEADERS
from exchange.db_cursors import bound_cursor
from exchange.errors import ApiError, echoed, trading_error
from exchange.models import Instrument, Order, Trade
from exchange.order_rules import session_open_at
from exchange.redis_connection import (
    change_counter_bump,
    change_counter_read,
    redis_get,
    redis_key,
)
from matching.command_codec import datetime_to_ns
from matching.models import BookState, Command
from matching.transport import book_snapshot_key

logger = logging.getLogger(__name__)


def instruments_listed() -> QuerySet[Instrument]:
    """Every instrument that is not delisted, by symbol."""
    return Instrument.objects.exclude(status=Instrument.Status.DELISTED).order_by("symbol")


# Instruments read on the order path, per process, for a moment: their scale cannot change
# once they have orders, and halts are decided by the engine, not by this copy. An edit of
# their rules or session hours bumps a counter (instrument_rules_changed) that every read
# checks: for up to these seconds after staff gave a 24/7 book hours that had closed, each
# web process took DAY orders with the old expiry (80 rested on the closed book) and let
# orders through that MarketClosed should have refused.
INSTRUMENT_CACHE_SECONDS = 2.0
_instrument_cache: dict[str, tuple[float, bytes | None, Instrument]] = {}
_instrument_ids: dict[int, str] = {}  # instrument id -> symbol


def instrument_rules_key() -> str:
    return redis_key("instruments", "rules-changed")


def instrument_rules_changed() -> None:
    """Tell every process's instrument cache to read again (call once the edit committed)."""
    change_counter_bump(
        instrument_rules_key(), unsignalled="instrument change not signalled to the caches"
    )
    _instrument_cache.clear()


def instruments_trading_state(symbols: list[str]) -> dict[str, tuple[str, str, bool]]:
    """(status, status_reason, whether its trading session is open now) of each symbol that is
    listed, from the instrument cache (for the socket's status frames)."""
    now = timezone.now()
    states = {}
    for symbol in symbols:
        try:
            instrument = instrument_by_symbol(symbol)
        except ApiError:
            continue
        states[symbol] = (
            instrument.status,
            instrument.status_reason,
            session_open_at(instrument, now),
        )
    return states


def instrument_by_symbol(symbol: str) -> Instrument:
    cached = _instrument_cache.get(symbol)
    now = time.monotonic()
    version = change_counter_read(instrument_rules_key())  # None without Redis: read again
    if (
        cached is not None
        and now - cached[0] < INSTRUMENT_CACHE_SECONDS
        and version is not None
        and version == cached[1]
    ):
        return cached[2]
    try:
        instrument = Instrument.objects.get(symbol=symbol)
    except Instrument.DoesNotExist:
        raise trading_error(
            "UnknownSymbol",
            f"unknown symbol {echoed(symbol)}; see GET /api/v1/symbols",
            field="symbol",
        ) from None
    _instrument_cache[symbol] = (now, version, instrument)
    return instrument


def instrument_by_id(instrument_id: int) -> Instrument:
    """An instrument by primary key, from the same per-process cache as by symbol."""
    cached = _instrument_ids.get(instrument_id)
    if cached is not None:
        instrument = instrument_by_symbol(cached)
        if instrument.pk == instrument_id:
            return instrument
    instrument = Instrument.objects.get(pk=instrument_id)
    _instrument_ids[instrument_id] = instrument.symbol
    version = change_counter_read(instrument_rules_key())
    _instrument_cache[instrument.symbol] = (time.monotonic(), version, instrument)
    return instrument


def orders_for_user(
    *,
    user,
    symbol: str | None = None,
    status: str | None = None,
    start: dt.datetime | None = None,
    end: dt.datetime | None = None,
) -> QuerySet[Order]:
    """The user's orders, newest first; `status="open"` means any status that can still trade,
    `"closed"` any that cannot (filled, cancelled, expired, rejected)."""
    orders = Order.objects.filter(user=user).select_related("instrument")
    if symbol:
        orders = orders.filter(instrument__symbol=symbol)
    if status == "open":
        orders = orders.filter(status__in=Order.OPEN_STATUSES)
    elif status == "closed":
        orders = orders.exclude(status__in=Order.OPEN_STATUSES)
    elif status:
        orders = orders.filter(status=status)
    if start:
        orders = orders.filter(created_at__gte=start)
    if end:
        orders = orders.filter(created_at__lt=end)
    return orders


# The order path reads orders and fills with plain SQL: the ORM's query building and model
# loading cost more CPU than the queries themselves.
_ORDER_FIELDS = Order._meta.concrete_fields
_ORDER_ATTNAMES = [f.attname for f in _ORDER_FIELDS]
_ORDER_SELECT = "SELECT {} FROM exchange_order".format(", ".join(f.column for f in _ORDER_FIELDS))
_ORDER_STATE_FIELDS = [f for f in _ORDER_FIELDS if not f.is_relation and not f.primary_key]
_ORDER_STATE_SQL = "SELECT {} FROM exchange_order WHERE id = %s".format(
    ", ".join(f.column for f in _ORDER_STATE_FIELDS)
)
_FILLS_SQL = """
SELECT id, price, quantity, maker_order_id = %(order)s AS is_maker, maker_fee, taker_fee
  FROM exchange_trade
 WHERE maker_order_id = %(order)s OR taker_order_id = %(order)s
 ORDER BY id
"""


def order_for_user(*, user, order_id: int | None = None, client_order_id: str | None = None):
    """One of the user's orders (its instrument from the per-process cache); another user's
    order is indistinguishable from none (404)."""
    if order_id is not None:
        where, key = "WHERE id = %s AND user_id = %s", order_id
    else:
        where, key = "WHERE client_order_id = %s AND user_id = %s", client_order_id
    with bound_cursor() as cursor:
        cursor.execute(f"{_ORDER_SELECT} {where}", [key, user.pk])
        row = cursor.fetchone()
    if row is None:
        raise trading_error("OrderNotFound", "no such order", http_status=404)
    order = Order.from_db(connection.alias, _ORDER_ATTNAMES, row)
    order.instrument = instrument_by_id(order.instrument_id)
    return order


def command_outcome(command_id: int) -> Command:
    """A command's id, applied_at, reject_code and reject_message (the rest of the row is not
    read)."""
    with bound_cursor() as cursor:
        cursor.execute(
            "SELECT applied_at, reject_code, reject_message FROM matching_command WHERE id = %s",
            [command_id],
        )
        applied_at, reject_code, reject_message = cursor.fetchone()
    return Command(
        pk=command_id,
        applied_at=applied_at,
        reject_code=reject_code,
        reject_message=reject_message,
    )


def order_state_refresh(order: Order) -> None:
    """Re-read what the matching worker changes on `order` (not its instrument or user)."""
    with bound_cursor() as cursor:
        cursor.execute(_ORDER_STATE_SQL, [order.pk])
        row = cursor.fetchone()
    for field, value in zip(_ORDER_STATE_FIELDS, row, strict=True):
        setattr(order, field.attname, value)


def fills_for_order(order: Order) -> list[dict]:
    """The order's fills in execution order, from its own side (fee and liquidity)."""
    with bound_cursor() as cursor:
        cursor.execute(_FILLS_SQL, {"order": order.pk})
        rows = cursor.fetchall()
    return [
        {
            "trade_id": str(trade_id),
            "price": price,
            "quantity": quantity,
            "fee": maker_fee if is_maker else taker_fee,
            "liquidity": "maker" if is_maker else "taker",
        }
        for trade_id, price, quantity, is_maker, maker_fee, taker_fee in rows
    ]


def fills_for_user(*, user, symbol: str | None = None) -> QuerySet[Trade]:
    trades = Trade.objects.filter(Q(maker_user=user) | Q(taker_user=user)).select_related(
        "instrument"
    )
    if symbol:
        trades = trades.filter(instrument__symbol=symbol)
    return trades


def book_snapshot(symbol: str) -> dict | None:
    """The top-50 book the shard worker wrote to Redis after its last batch (None: none yet,
    lost, or Redis out of reach: order entry then falls back on PostgreSQL)."""
    try:
        return _book_snapshot_stored(symbol)
    except ApiError:
        return None


def book_snapshot_to_show(symbol: str) -> dict | None:
    """`book_snapshot` for the order book API: Redis out of reach is a 503 to retry, not a
    book with nothing in it (it had answered an empty book at seq 0, and a spread of none).
    So is a snapshot Redis lost (a wipe, a restart without its data) that the worker has not
    written again yet (it does at its next heartbeat, or when it is back and has recovered):
    a book that has changed since it was listed (its seq, kept in PostgreSQL, is past 0) had
    read as empty at seq 0, for as long as its worker was away. None: a book never changed."""
    snapshot = _book_snapshot_stored(symbol)
    if snapshot is None and book_has_changed(symbol):
        logger.warning(
            "book snapshot missing: the worker has not restored it yet", extra={"symbol": symbol}
        )
        raise _book_unavailable("the order book is being restored for a moment: retry shortly")
    return snapshot


def book_has_changed(symbol: str) -> bool:
    """Whether the book has changed since it was listed (its seq, kept in PostgreSQL, is past
    0): without a snapshot in Redis, such a book's snapshot was lost, not never written."""
    return BookState.objects.filter(symbol=symbol, book_seq__gt=0).exists()


def _book_snapshot_stored(symbol: str) -> dict | None:
    """The book's snapshot as Redis holds it (None: none there); Redis out of reach is a 503."""
    try:
        raw = redis_get(book_snapshot_key(symbol))
    except redis.RedisError as exc:
        logger.warning("book snapshot unavailable", extra={"symbol": symbol, "why": str(exc)})
        raise _book_unavailable(
            "the order book is out of reach for a moment: retry shortly"
        ) from exc
    return json.loads(raw) if raw else None


def _book_unavailable(message: str) -> ApiError:
    return ApiError(
        error=SERVICE_UNAVAILABLE_BODY["error"],
        code=SERVICE_UNAVAILABLE_BODY["code"],
        message=message,
        http_status=503,
        headers=SERVICE_UNAVAILABLE_HEADERS,
    )


def book_depth(*, instrument: Instrument, depth: int) -> dict:
    snapshot = book_snapshot_to_show(instrument.symbol) or {"seq": 0, "bids": [], "asks": []}
    return {
        "symbol": instrument.symbol,
        "seq": snapshot["seq"],
        "bids": [_level(level) for level in snapshot["bids"][:depth]],
        "asks": [_level(level) for level in snapshot["asks"][:depth]],
    }


def _level(level: list) -> dict:
    price, quantity, orders = level
    return {"price": price, "quantity": quantity, "orders": orders}


def snapshot_top(snapshot: dict | None) -> dict:
    """Best bid and ask of a book snapshot with the quantity shown at each (None for an empty
    side, or without a snapshot)."""
    top = {}
    for side, name in (("bids", "best_bid"), ("asks", "best_ask")):
        best = snapshot[side][0] if snapshot and snapshot[side] else None
        top[name] = Decimal(best[0]) if best else None
        top[f"{name}_size"] = Decimal(best[1]) if best else None
    return top


def book_spread(*, instrument: Instrument) -> dict:
    snapshot = book_snapshot_to_show(instrument.symbol)
    top = snapshot_top(snapshot)
    bid, ask = top["best_bid"], top["best_ask"]
    spread = mid = bps = None
    if bid is not None and ask is not None:
        spread = ask - bid
        mid = (ask + bid) / 2
        bps = (spread / mid * 10_000).quantize(Decimal("0.01"), rounding=ROUND_HALF_EVEN)
    return {
        "symbol": instrument.symbol,
        "seq": snapshot["seq"] if snapshot else 0,
        "best_bid": bid,
        "best_ask": ask,
        "spread": spread,
        "spread_bps": bps,
        "mid": mid,
    }


def best_ask(instrument: Instrument, snapshot: dict | None) -> Decimal | None:
    """The best ask: from the worker's book snapshot, or, when it shows none (Redis wiped or out
    of reach, or no ask when the worker last wrote it), the lowest price among the sells in the
    database that rest or are on their way to the engine: a limit sell stored before this
    order reaches the engine before it (a market buy's budget is priced from it: without it,
    it was held nothing and, meeting that sell, ended cancelled, max_quote, having filled
    nothing)."""
    if snapshot is not None:
        best = snapshot_top(snapshot)["best_ask"]
        if best is not None:
            return best
    return Order.objects.filter(
        Q(status__in=(Order.Status.NEW, Order.Status.PARTIALLY_FILLED, Order.Status.TRIGGERED))
        | Q(status=Order.Status.PENDING_NEW, order_type=Order.Type.LIMIT),
        instrument=instrument,
        is_open=True,
        side=Order.Side.SELL,
        price__isnull=False,
    ).aggregate(best=Min("price"))["best"]


def band_reference(instrument: Instrument, snapshot: dict | None) -> Decimal | None:
    """The price band's reference: the last price in the worker's book snapshot, or from the
    database when Redis has no snapshot (the engine enforces the band in any case)."""
    if snapshot is None:
        return reference_price(instrument)
    last = snapshot.get("last_price")
    return Decimal(last) if last is not None else None


def reference_price(instrument: Instrument) -> Decimal | None:
    """The last trade price, the reference of the price band (None before the first trade)."""
    ticks = (
        BookState.objects.filter(symbol=instrument.symbol)
        .values_list("last_price_ticks", flat=True)
        .first()
    )
    return None if ticks is None else ticks * instrument.tick_size


def trades_recent(*, instrument: Instrument) -> QuerySet[Trade]:
    # Each trade's representation reads its instrument (tick and lot size): joined, or a page of
    # 1,000 trades took 1,000 more queries, on a public endpoint.
    return Trade.objects.filter(instrument=instrument).select_related("instrument")


# A ticker's status: the instrument's, or `closed` outside its trading session.
TICKER_STATUSES = (*Instrument.Status.values, "closed")


def ticker_24h(*, instrument: Instrument, now: dt.datetime | None = None) -> dict:
    """Last price, best bid and ask, and the rolling 24 hours' volume, high, low and change.
    The best bid and ask come from the worker's book snapshot: Redis out of reach is a 503, as
    for the order book (the ticker had said "no bid, no ask" of a book with both)."""
    stats = trading_24h(instrument=instrument, now=now)
    return {**stats, **snapshot_top(book_snapshot_to_show(instrument.symbol))}


def trading_24h(*, instrument: Instrument, now: dt.datetime | None = None) -> dict:
    """The ticker without the book: status, last price and the rolling 24 hours' volume, high,
    low and change, all from PostgreSQL."""
    now = now or timezone.now()
    window = Trade.objects.filter(instrument=instrument, executed_at__gte=now - dt.timedelta(1))
    stats = window.aggregate(
        volume=Sum("quantity"),
        quote_volume=Sum("quote_quantity"),
        high=Max("price"),
        low=Min("price"),
        trades=Count("id"),
    )
    last = Trade.objects.filter(instrument=instrument).order_by("-id").first()
    first = window.order_by("id").first()
    change = change_pct = None
    if last is not None and first is not None:
        change = last.price - first.price
        # `+ 0` drops the sign of a change that rounds to zero: it had read "-0.00".
        change_pct = (change / first.price * 100).quantize(
            Decimal("0.01"), rounding=ROUND_HALF_EVEN
        ) + 0
    return {
        "symbol": instrument.symbol,
        # `closed` outside the trading session: orders are refused MarketClosed then.
        "status": "closed"
        if instrument.status == Instrument.Status.TRADING and not session_open_at(instrument, now)
        else instrument.status,
        # Staff's reason for a halt or delisting, if they gave one.
        "status_reason": instrument.status_reason or None,
        "last_price": last.price if last else None,
        "volume_24h": stats["volume"] or Decimal(0),
        "quote_volume_24h": stats["quote_volume"] or Decimal(0),
        "high_24h": stats["high"],
        "low_24h": stats["low"],
        "trades_24h": stats["trades"],
        "open_24h": first.price if first else None,
        "change_24h": change,
        "change_pct_24h": change_pct,
    }


# Candle intervals of GET /api/v1/candles/{symbol}: name -> bucket width.
CANDLE_INTERVALS = {
    "1m": dt.timedelta(minutes=1),
    "5m": dt.timedelta(minutes=5),
    "1h": dt.timedelta(hours=1),
    "1d": dt.timedelta(days=1),
}

# Buckets start at whole multiples of the width counted from this instant (UTC midnight), so a
# 1d candle is a UTC day and a 5m candle starts at :00, :05, ...
CANDLE_ORIGIN = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)

_CANDLES_SQL = """
    SELECT date_bin(%(width)s, executed_at, %(origin)s) AS open_time,
           (array_agg(price ORDER BY id))[1] AS open,
           max(price) AS high,
           min(price) AS low,
           (array_agg(price ORDER BY id DESC))[1] AS close,
           sum(quantity) AS volume,
           sum(quote_quantity) AS quote_volume,
           count(*) AS trades,
           max(id) AS last_trade_id
      FROM exchange_trade
     WHERE instrument_id = %(instrument_id)s
       AND executed_at >= %(start)s AND executed_at < %(end)s AND executed_at_ns < %(end_ns)s
  GROUP BY 1
  ORDER BY 1 DESC
     LIMIT %(limit)s
"""


def candles_for_instrument(
    *,
    instrument: Instrument,
    interval: str,
    limit: int,
    end: dt.datetime,
    end_extra_ns: int = 0,
) -> list[dict]:
    """OHLC and volume of the instrument's trades per `interval` bucket (UTC-aligned), the
    `limit` latest buckets that start before `end`, oldest first. Buckets without a trade are
    absent. Aggregated in PostgreSQL (date_bin); open and close are the first and last trade by
    trade id, the engine's execution order; `last_trade_id` is a bucket's highest trade id (a
    client folding live trades into the candles counts only higher ones). `end_extra_ns`
    (0-999) are the nanoseconds of the end past its microsecond: a trade is before it by its
    nanosecond time (its `executed_at` is cut to the microsecond: a trade 300 ns before an end
    500 ns past a microsecond had been left out, the end cut to that microsecond)."""
    width = CANDLE_INTERVALS[interval]
    end_ns = datetime_to_ns(end) + end_extra_ns
    if end_extra_ns:
        end += dt.timedelta(microseconds=1)
    # The last bucket is the one holding the instant just before `end` (trades before `end`
    # only: with the default `end` of now, that is the live, partial candle).
    last_open = (
        CANDLE_ORIGIN + (end - CANDLE_ORIGIN - dt.timedelta(microseconds=1)) // width * width
    )
    start = last_open - width * (limit - 1)
    with connection.cursor() as cursor:
        cursor.execute(
            _CANDLES_SQL,
            {
                "width": width,
                "origin": CANDLE_ORIGIN,
                "instrument_id": instrument.pk,
                "start": start,
                "end": end,
                "end_ns": end_ns,
                "limit": limit,
            },
        )
        names = [column.name for column in cursor.description]
        rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    rows.reverse()
    return rows


def exchange_metrics() -> dict:
    """Volume, trade count and fee revenue (maker, taker, rebates paid, net) per symbol."""
    rows = (
        Trade.objects.values(
            "instrument__symbol", "instrument__quote_asset", "instrument__quote_precision"
        )
        .annotate(
            volume=Sum("quantity"),
            quote_volume=Sum("quote_quantity"),
            trades=Count("id"),
            taker_fees=Sum("taker_fee"),
            maker_fees=Sum("maker_fee", filter=Q(maker_fee__gt=0)),
            rebates=Sum("maker_fee", filter=Q(maker_fee__lt=0)),
        )
        .order_by("instrument__symbol")
    )
    symbols = []
    totals: dict[str, dict] = {}
    for row in rows:
        maker = row["maker_fees"] or Decimal(0)
        taker = row["taker_fees"] or Decimal(0)
        rebates = -(row["rebates"] or Decimal(0))
        entry = {
            "symbol": row["instrument__symbol"],
            "quote_asset": row["instrument__quote_asset"],
            "quote_precision": row["instrument__quote_precision"],
            "volume": row["volume"],
            "quote_volume": row["quote_volume"],
            "trades": row["trades"],
            "maker_fees": maker,
            "taker_fees": taker,
            "rebates_paid": rebates,
            "net_fee_revenue": maker + taker - rebates,
        }
        symbols.append(entry)
        total = totals.setdefault(
            entry["quote_asset"],
            {
                "quote_asset": entry["quote_asset"],
                "quote_precision": entry["quote_precision"],
                "quote_volume": Decimal(0),
                "trades": 0,
                "maker_fees": Decimal(0),
                "taker_fees": Decimal(0),
                "rebates_paid": Decimal(0),
                "net_fee_revenue": Decimal(0),
            },
        )
        for key in ("quote_volume", "trades", "maker_fees", "taker_fees", "rebates_paid"):
            total[key] += entry[key]
        total["net_fee_revenue"] += entry["net_fee_revenue"]
        total["quote_precision"] = max(total["quote_precision"], entry["quote_precision"])
    return {"symbols": symbols, "totals": list(totals.values())}


def table_rows_estimate(*, table: str) -> int:
    """PostgreSQL's estimate of a table's rows (pg_class.reltuples, as ANALYZE and autovacuum
    keep it; a partitioned table's is the sum of its partitions'), read without touching a row.
    0 for a table never analyzed."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT COALESCE(SUM(GREATEST(reltuples, 0)), 0)::bigint FROM pg_class "
            "WHERE oid = to_regclass(%s) "
            "OR oid IN (SELECT inhrelid FROM pg_inherits WHERE inhparent = to_regclass(%s))",
            [table, table],
        )
        return cursor.fetchone()[0]

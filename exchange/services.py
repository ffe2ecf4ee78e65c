"""Writes of the trading core. Each public service owns its transaction and its audit rows.

`order_place`, `order_cancel`, `order_amend` and `orders_mass_cancel` are the one path every
channel (web, REST, WebSocket, FIX) uses: validate, authorize, hold, then in ONE transaction
the order row, the command for the shard's engine and the audit record. The engine's answer
arrives later (see `exchange.replies`).
"""

import copy
import dataclasses
import datetime as dt
import hashlib
import json
import logging
from dataclasses import dataclass, fields
from decimal import Decimal

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import DEFAULT_DB_ALIAS, IntegrityError, connections, transaction
from django.utils import timezone
from rest_framework.exceptions import APIException

from accounts.fee_tiers import FeeRates
from accounts.funds import DEMO_FUNDS, demo_funds_grant
from accounts.ledger import HoldRequest, funds_hold, funds_hold_many
from accounts.models import LedgerAccount
from audit.events import AuditEvent
from audit.services import AuditEntry, audit_entry, audit_record, audit_record_copy
from exchange.api_errors import error_answer
from exchange.db_cursors import bound_cursor
from exchange.errors import ApiError, trading_error
from exchange.fees import fee_tier_rates_for
from exchange.holds import best_ask_ticks, buy_cost_minor, buy_hold_minor, held_amount
from exchange.models import Instrument, Order
from exchange.order_rules import (
    ORDER_TYPES,
    TIME_IN_FORCE,
    OrderRequest,
    buy_value_check,
    check_band,
    check_display_minimums,
    check_minimums,
    check_price_max,
    check_session,
    check_shape,
    day_expiry,
    engine_instrument_for,
    price_ticks,
    quantity_lots,
    quote_minor,
    session_close_ns,
    session_open_at,
    to_ns,
)
from exchange.redis_connection import redis_read_ahead
from exchange.replies import release_db_connection
from exchange.selectors import (
    band_reference,
    best_ask,
    book_snapshot,
    instrument_by_symbol,
    instrument_rules_changed,
    instrument_rules_key,
    order_for_user,
    reference_price,
    snapshot_top,
)
from exchange.serializers import OrderPlaceSerializer, price_str, quantity_str
from exchange.timestamps import iso_z
from matching.command_codec import SESSION_CLOSE_KEY
from matching.engine import protocol as p
from matching.instruments import engine_instrument_spec
from matching.models import Command
from matching.services import CommandRow, command_enqueue, commands_enqueue_many
from matching.transport import book_snapshot_key

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Placement:
    """The stored order, whether this call created it, and the command that carries it."""

    order: Order
    created: bool
    command_id: int | None


@dataclass(slots=True)
class OrderPlan:
    """A validated order, ready to store: the row, its hold, its command and its audit record
    (the ids that the store assigns are filled in there)."""

    user: object
    instrument: Instrument
    request: OrderRequest
    digest: str
    order: Order  # unsaved, pk unset
    hold: Decimal
    hold_asset: str
    hold_field: str
    command_payload: dict  # without order_id
    audit: AuditEntry  # without order_id and command_id
    fees: FeeRates  # the rates frozen on the order and their tier (its fee.calculated record)


@dataclass(slots=True)
class CancelPlan:
    """A cancel to store: its command and its audit record (command_id filled in there)."""

    order: Order
    audit: AuditEntry
    reason: str = "user"  # "staff": cancelled on the user's behalf (the order's end reason)


_REQUEST_FIELDS = [f.name for f in fields(OrderRequest)]


def request_values(request: OrderRequest) -> dict:
    """The request's fields by name (its values are scalars: no deep copy as `asdict` makes)."""
    return {name: getattr(request, name) for name in _REQUEST_FIELDS}


def request_digest(request: OrderRequest) -> str:
    """A stable fingerprint of the request, to tell a replay from a different order: equal
    numbers give the same digest however they were written ("60.0", "60.00"), equal instants
    whatever their UTC offset."""
    return _digest({k: _canonical(v) for k, v in request_values(request).items()})


def _canonical(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).isoformat()
    return str(value)


def _digest(values: dict) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()


def _same_request(stored_digest: str, request: OrderRequest, digest: str) -> bool:
    """The stored order's digest is this request's `digest` (or, for an order stored before
    digests were canonical, the digest of the request as then written: "60.0" and "60.00"
    differed)."""
    if stored_digest == digest:
        return True
    written = request_values(request)
    return stored_digest == _digest({k: None if v is None else str(v) for k, v in written.items()})


def _client_id_conflict(order_id: int, client_order_id: str) -> ApiError:
    return trading_error(
        "DuplicateClientOrderId",
        f"client_order_id {client_order_id!r} was used for a different order",
        field="client_order_id",
        http_status=409,
        extra={"order_id": order_id},
    )


def order_place(
    *, user, request: OrderRequest, http_request=None, now: dt.datetime | None = None
) -> Placement:
    """Validate `request` against the instrument's rules and store it with its place command.

    Raises a catalogue ApiError (400, nothing stored) for bad input. A replay of a
    client_order_id with the same body returns the stored order (created=False); with a
    different body it is a 409. Outside a transaction the store goes through the process's
    order entry batch (`exchange.order_batcher`: one transaction for the orders that arrive
    together); inside one (a caller's atomic block) it is stored in that transaction.
    """
    try:
        plan = order_plan(user=user, request=request, http_request=http_request, now=now)
    except ApiError:
        stored = _stored_replay(user=user, request=request)
        if stored is None:
            raise
        return stored
    result = _entry_store(plan)
    if isinstance(result, ApiError):
        raise result
    return result


def _stored_replay(*, user, request: OrderRequest) -> Placement | None:
    """The order already stored under the request's client_order_id with this same request
    (created=False), else None. Asked when the request no longer passes the checks: a retry
    of an order whose answer was lost (a killed web process, a timeout) comes after the market
    moved, its GTD expiry passed or the session closed, and a refusal told the client that an
    order it had placed, and which may have traded, did not exist."""
    if request.client_order_id is None:
        return None
    try:
        order = order_for_user(user=user, client_order_id=request.client_order_id)
    except ApiError:  # OrderNotFound
        return None
    if not _same_request(order.request_digest, request, request_digest(request)):
        return None
    return Placement(order=order, created=False, command_id=None)


# A refused order's audit record keeps each field it sent cut to this many characters, and the
# names of at most this many fields no order has.
REFUSED_VALUE_MAX_CHARS = 100
REFUSED_UNKNOWN_NAMES_MAX = 10
REFUSED_ERROR_MAX_CHARS = 1000  # a text of the error answered (its message, its field)


def order_refusal_record(*, user, sent, status: int, error: dict, http_request=None) -> None:
    """Audit an order placement refused before anything was stored (`order.refused`): the
    order's fields as sent (values cut short, the names of other fields listed) and the error
    answered. Only a client's refusal (4xx): an outage (503) stored nothing to refuse. A record
    the database cannot take is logged; the client's answer stands."""
    payload: dict = {}
    if isinstance(sent, dict):
        known = set(OrderPlaceSerializer._declared_fields)
        payload["request"] = {
            name: _refused_value(value) for name, value in sent.items() if name in known
        }
        unknown = [name for name in sent if name not in known]
        if unknown:
            payload["unknown_fields"] = [
                _refused_value(str(name)) for name in unknown[:REFUSED_UNKNOWN_NAMES_MAX]
            ]
    symbol = sent.get("symbol") if isinstance(sent, dict) else None
    if (
        not isinstance(symbol, str)
        or len(symbol) > Instrument._meta.get_field("symbol").max_length
        or "\x00" in symbol
    ):
        symbol = None  # only in the payload, cut short
    _refusal_audit(
        event_type=AuditEvent.ORDER_REFUSED, user=user, status=status, error=error,
        symbol=symbol, payload=payload, http_request=http_request, what="order",
    )  # fmt: skip


def order_change_refusal_record(
    *,
    user,
    kind: str,
    sent,
    order: Order | None,
    exc: APIException,
    http_request=None,
    on_behalf: bool = False,
) -> None:
    """Audit a cancel or an amend refused before anything was stored (`order.cancel_refused`,
    `order.amend_refused`, as for those the engine refuses): what was sent and the error. They
    had left no record: a second cancel of an ended order, an amend outside the band, a cancel
    of another user's order (404: its id is only in the payload, `order_ref`). Only a client's
    refusal (4xx); a record the database cannot take is logged. The error recorded is REST's
    answer to `exc`. `on_behalf`: staff asked (the admin's cancel), and the record is the order
    owner's, with staff as its actor."""
    status, error = error_answer(exc)
    payload: dict = {}
    if isinstance(sent, dict):
        payload["request"] = {
            _refused_value(str(name)): _refused_value(value)
            for name, value in list(sent.items())[:REFUSED_UNKNOWN_NAMES_MAX]
        }
    if order is None and isinstance(sent, dict):
        ref = sent.get("order_id", sent.get("client_order_id"))
        payload["order_ref"] = _refused_value(ref)
    _refusal_audit(
        event_type=(
            AuditEvent.ORDER_AMEND_REFUSED if kind == "amend" else AuditEvent.ORDER_CANCEL_REFUSED
        ),
        user=user,
        status=status,
        error=error,
        order_id=order.pk if order is not None else None,
        symbol=order.instrument.symbol if order is not None else None,
        payload=payload,
        http_request=http_request,
        what="order change",
        owner_id=order.user_id if on_behalf and order is not None else None,
    )


def _refusal_audit(
    *,
    event_type: AuditEvent,
    user,
    status: int,
    error: dict,
    payload: dict,
    http_request,
    what: str,
    order_id: int | None = None,
    symbol: str | None = None,
    owner_id: int | None = None,
) -> None:
    """Write a refusal's record: the status and error answered, then `payload`, under the
    caller (or `owner_id`, the user staff acted for). Only a client's refusal (4xx) of a
    signed-in user: an outage (503) stored nothing to refuse. A record the database cannot
    take is logged; the client's answer stands."""
    if not 400 <= status < 500 or not getattr(user, "is_authenticated", False):
        return
    try:
        audit_record(
            event_type=event_type,
            actor=user,
            user_id=owner_id or user.pk,
            order_id=order_id,
            symbol=symbol,
            payload={"status": status, "error": _refused_error(error), **payload},
            request=http_request,
        )
    except Exception:  # the refusal stands; its audit record is what failed
        logger.exception(f"refused {what} not audited", extra={"user_id": user.pk})


def _refused_error(error: dict) -> dict:
    """The error answered, fit for the audit payload: it may name what was sent (an unknown
    field's name, NUL and all), and a NUL had made PostgreSQL refuse the record."""
    return {
        k: v.replace("\x00", "")[:REFUSED_ERROR_MAX_CHARS] if isinstance(v, str) else v
        for k, v in error.items()
    }


def _refused_value(value):
    """A value as a refused order sent it, fit for the audit payload: text cut to
    REFUSED_VALUE_MAX_CHARS, NUL characters dropped (PostgreSQL's JSON refuses them); a value
    that is not text, a number, a boolean or null is named by its JSON type."""
    if isinstance(value, str):
        return value[:REFUSED_VALUE_MAX_CHARS].replace("\x00", "")
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if abs(value) < 10**18 else str(value)[:40]
    if isinstance(value, float | Decimal):
        return str(value)[:40]
    return "array" if isinstance(value, list) else "object"


def order_plan(
    *, user, request: OrderRequest, http_request=None, now: dt.datetime | None = None
) -> OrderPlan:
    """Check `request` against the instrument's rules and build what storing it writes.

    Raises a catalogue ApiError (400) for bad input; reads no database row (the instrument and
    fee rates come from per-process caches, the book from the worker's Redis snapshot: the
    cache's change counter and the snapshot in one round trip).
    """
    with redis_read_ahead(order_plan_redis_keys(request.symbol)):
        return _order_plan(user=user, request=request, http_request=http_request, now=now)


def order_plan_redis_keys(symbol: str) -> tuple[str, str]:
    """The Redis keys planning an order on `symbol` reads: the instrument cache's change
    counter and the book snapshot (a caller may read them ahead with more of its own)."""
    return instrument_rules_key(), book_snapshot_key(symbol)


def _order_plan(*, user, request: OrderRequest, http_request, now: dt.datetime | None) -> OrderPlan:
    now = now or timezone.now()
    digest = request_digest(request)
    instrument = instrument_by_symbol(request.symbol)
    if instrument.status == Instrument.Status.DELISTED:
        raise trading_error(
            "InstrumentHalted",
            f"{instrument.symbol} is delisted: it no longer trades",
            field="symbol",
        )
    check_shape(request)
    check_session(instrument, now)
    engine = engine_instrument_for(instrument)
    is_buy = request.side == Order.Side.BUY
    kind = request.order_type
    price_field = "limit_price" if kind == Order.Type.STOP_LIMIT else "price"

    snapshot = book_snapshot(instrument.symbol)
    price = qty = stop = display = spend = 0
    if request.price is not None:
        price = price_ticks(engine, instrument, request.price, price_field)
        check_price_max(engine, price, price_field)
        check_band(instrument, request.price, band_reference(instrument, snapshot), price_field)
    if request.stop_price is not None:
        stop = price_ticks(engine, instrument, request.stop_price, "stop_price")
    if request.quantity is not None:
        qty = quantity_lots(engine, instrument, request.quantity, "quantity")
    if request.quote_quantity is not None:
        spend = quote_minor(engine, request.quote_quantity, "quote_quantity")
    if request.display_quantity is not None:
        display = quantity_lots(engine, instrument, request.display_quantity, "display_quantity")
        if request.display_quantity > request.quantity:
            raise trading_error(
                "DisplayQuantityTooLarge",
                f"display_quantity {request.display_quantity} exceeds quantity {request.quantity}",
                field="display_quantity",
            )
    # The minimums hold for every order: a market order's value is taken at the best opposite
    # price, a stop-loss's at its stop price. Market and stop orders had skipped the minimum
    # notional, so dust fills (single lots worth less than a cent, each with a whole cent of
    # fee charged to the maker) could be forced on any resting order.
    best_ask_price = (
        best_ask(instrument, snapshot)
        if is_buy and kind in (Order.Type.MARKET, Order.Type.STOP_LOSS)
        else None
    )
    if qty:
        if kind == Order.Type.MARKET:
            valued_at = best_ask_price if is_buy else snapshot_top(snapshot)["best_bid"]
        else:
            valued_at = request.stop_price if kind == Order.Type.STOP_LOSS else request.price
        check_minimums(instrument, valued_at, request.quantity, "quantity")
        if request.display_quantity is not None:
            check_display_minimums(
                instrument,
                request.price,
                request.display_quantity,
                request.quantity,
                "display_quantity",
            )
    elif spend and request.quote_quantity < instrument.min_notional:
        raise trading_error(
            "NotionalTooSmall",
            f"quote_quantity {request.quote_quantity.normalize():f} is below the minimum "
            f"{instrument.min_notional.normalize():f} {instrument.quote_asset}",
            field="quote_quantity",
        )

    expire_at = request.expire_at
    if request.time_in_force == Order.TimeInForce.GTD:
        if expire_at <= now:
            raise trading_error(
                "ExpireAtInPast", "expire_at must be in the future", field="expire_at"
            )
        if expire_at > now + dt.timedelta(days=settings.GTD_MAX_DAYS):
            # Beyond 2262 it no longer fitted the worker's recovery: the shard could not restart.
            raise trading_error(
                "ExpireAtTooFar",
                f"expire_at must be at most {settings.GTD_MAX_DAYS} days ahead",
                field="expire_at",
            )
    if request.time_in_force == Order.TimeInForce.DAY:
        expire_at = day_expiry(instrument, now)

    fees = fee_tier_rates_for(user=user, instrument=instrument)
    maker_ppm, taker_ppm = fees.maker_fee_ppm, fees.taker_fee_ppm
    buy_minor = 0
    if is_buy:
        buy_minor = buy_hold_minor(
            engine=engine,
            order_type=kind,
            price_ticks=price,
            qty_lots=qty,
            stop_ticks=stop,
            quote_minor=spend,
            best_ask_ticks=best_ask_ticks(engine, best_ask_price)
            if kind in (Order.Type.MARKET, Order.Type.STOP_LOSS)
            else None,
            # The higher rate: a fill as maker may cost more where a tier charges makers more.
            fee_ppm=max(maker_ppm, taker_ppm),
        )
        buy_minor = buy_value_check(
            engine, instrument, buy_minor, "quote_quantity" if spend else "quantity"
        )
    flags = (p.POST_ONLY if request.post_only else 0) | (
        p.POST_ONLY_ADJUST if request.post_only_adjust else 0
    )
    hold = held_amount(
        engine=engine, instrument=instrument, is_buy=is_buy, quantity=request.quantity,
        buy_minor=buy_minor,
    )  # fmt: skip
    order = Order(
        user=user,
        instrument=instrument,
        client_order_id=request.client_order_id,
        request_digest=digest,
        side=request.side,
        order_type=kind,
        time_in_force=request.time_in_force,
        price=request.price,
        stop_price=request.stop_price,
        quantity=request.quantity,
        quote_quantity=request.quote_quantity,
        display_quantity=request.display_quantity,
        post_only=request.post_only,
        post_only_adjust=request.post_only_adjust,
        stp_mode=request.stp_mode,
        expire_at=expire_at,
        maker_fee_ppm=maker_ppm,
        taker_fee_ppm=taker_ppm,
        held_amount=hold,
        hold_remaining=hold,
        remaining_quantity=request.quantity or Decimal(0),
    )
    command_payload = {
        "symbol": instrument.symbol,
        "user_id": user.pk,
        "is_buy": is_buy,
        "order_type": ORDER_TYPES[kind],
        "price": price,
        "qty": qty,
        "tif": TIME_IN_FORCE[request.time_in_force],
        "expire_at": to_ns(expire_at) if expire_at else 0,
        "flags": flags,
        "display_qty": display,
        "stop_price": stop,
        # The engine needs a positive cap on every buy; 1 minor unit fills nothing.
        "max_quote": max(buy_minor, 1) if is_buy else 0,
        "maker_fee_ppm": maker_ppm,
        "taker_fee_ppm": taker_ppm,
        "stp": p.STP_MODE_NAMES.index(request.stp_mode) if request.stp_mode else 0,
    }
    closes = session_close_ns(instrument, now)
    if closes is not None:
        command_payload[SESSION_CLOSE_KEY] = closes
    audit = audit_entry(
        event_type=AuditEvent.ORDER_SUBMITTED,
        actor=user,
        user_id=user.pk,
        symbol=instrument.symbol,
        shard=instrument.shard,
        payload={
            **{k: v for k, v in request_values(request).items() if v not in (None, "", False)},
            "expire_at": expire_at,
            "maker_fee_ppm": maker_ppm,
            "taker_fee_ppm": taker_ppm,
            "held_amount": hold,
        },
        request=http_request,
    )
    return OrderPlan(
        user=user,
        instrument=instrument,
        request=request,
        digest=digest,
        order=order,
        hold=hold,
        hold_asset=instrument.quote_asset if is_buy else instrument.base_asset,
        hold_field="quote_quantity" if request.quote_quantity is not None else "quantity",
        command_payload=command_payload,
        audit=audit,
        fees=fees,
    )


FEE_CALCULATED = str(AuditEvent.FEE_CALCULATED)  # as an AuditEntry's event_type

ORDER_IDS_SQL = (
    "SELECT nextval(pg_get_serial_sequence('exchange_order', 'id')) FROM generate_series(1, %s)"
)
CLIENT_ORDER_ID_CONSTRAINT = "order_client_order_id_unique_per_user"


_ORDER_FIELDS = Order._meta.concrete_fields


def _orders_insert(orders: list[Order]) -> None:
    """Write the new order rows (their ids set) with one COPY, each value prepared by its model
    field as the ORM would: COPY formats the rows in C, where an INSERT of a column array per
    field quoted every value in Python (and bulk_create costs several times that). A reused
    client_order_id fails the COPY with the constraint's IntegrityError, as an INSERT would."""
    now = timezone.now()
    prepared = [(field.attname, field.get_db_prep_save) for field in _ORDER_FIELDS]
    # This thread's connection itself: each attribute read through the `connection` proxy
    # costs a context-local lookup, and preparing a row reads it ~40 times (a third the CPU).
    db = connections[DEFAULT_DB_ALIAS]
    db.ensure_connection()
    with (
        db.wrap_database_errors,
        db.connection.cursor() as cursor,
        cursor.copy(_ORDERS_COPY_SQL) as copy,
    ):
        for order in orders:
            order.created_at = order.updated_at = now
            order._state.adding = False
            copy.write_row([prep(getattr(order, name), db) for name, prep in prepared])


_ORDERS_COPY_SQL = "COPY exchange_order ({}) FROM STDIN".format(
    ", ".join(field.column for field in _ORDER_FIELDS)
)


def _entry_store(plan: OrderPlan | CancelPlan) -> Placement | ApiError | Command:
    """Store one plan: through the process's order entry batch outside a transaction (the
    calling thread's connection handed back while it waits), in the caller's inside one."""
    if transaction.get_connection().in_atomic_block or not settings.ORDER_ENTRY_BATCHING:
        if isinstance(plan, OrderPlan):
            return orders_store(plans=[plan])[0]
        return orders_cancel_store(plans=[plan])[0]
    from exchange.order_batcher import order_batcher

    release_db_connection()
    return order_batcher.store(plan)


class ClientOrderIdRace(Exception):
    """Another process stored one of the batch's client_order_ids first; store again."""


def orders_store(*, plans: list[OrderPlan]) -> list[Placement | ApiError]:
    """Store planned orders together: one result per plan, in order (a Placement, or the
    ApiError that plan gets: 409 for a client_order_id reused with another body, 400
    InsufficientBalance); the others are stored whatever happens to one.

    In ONE transaction (the caller's, or a new one): the order rows, their holds (one ledger
    entry each), their place commands and their audit records, each written set-based; the
    shard's signal goes out after the commit. A replayed client_order_id (an earlier order, or
    an earlier plan of this batch) answers with that order, created=False.
    """
    return entry_batch_store(plans=plans, cancels=[])[0]


def entry_batch_store(
    *, plans: list[OrderPlan], cancels: list[CancelPlan]
) -> tuple[list[Placement | ApiError], list[Command]]:
    """`orders_store` and `orders_cancel_store` in ONE transaction (the order entry batch's):
    its own at the top level, a savepoint of the caller's otherwise. A client_order_id race
    rolls it back and stores again."""
    for _ in range(3):
        try:
            with transaction.atomic():
                placed = _orders_store(plans) if plans else []
                return placed, _cancels_store(cancels) if cancels else []
        except ClientOrderIdRace:
            for plan in plans:
                plan.order.pk = None  # ids are drawn again
            continue
    raise RuntimeError("client_order_id race did not settle after 3 attempts")


def _orders_store(plans: list[OrderPlan]) -> list[Placement | ApiError]:
    results: list[Placement | ApiError | None] = [None] * len(plans)
    # A client_order_id already stored, or used by an earlier plan of this batch.
    keyed = [(i, plan) for i, plan in enumerate(plans) if plan.request.client_order_id is not None]
    earlier: dict[tuple[int, str], int] = {}
    replay_of: dict[int, int] = {}  # plan index -> index of the plan that stores the order
    if keyed:
        candidates = Order.objects.filter(
            user_id__in={plan.user.pk for _, plan in keyed},
            client_order_id__in={plan.request.client_order_id for _, plan in keyed},
        ).select_related("instrument")
        stored = {(order.user_id, order.client_order_id): order for order in candidates}
        for i, plan in keyed:
            key = (plan.user.pk, plan.request.client_order_id)
            existing = stored.get(key)
            if existing is not None:
                if not _same_request(existing.request_digest, plan.request, plan.digest):
                    results[i] = _client_id_conflict(existing.pk, key[1])
                else:
                    results[i] = Placement(order=existing, created=False, command_id=None)
            elif key in earlier:
                replay_of[i] = earlier[key]
            else:
                earlier[key] = i
    todo = [i for i in range(len(plans)) if results[i] is None and i not in replay_of]
    _day_plans_recheck(plans, todo, results)
    _deactivated_users_refuse(plans, [i for i in todo if results[i] is None], results)
    todo = [i for i in todo if results[i] is None]
    if todo:
        with bound_cursor() as cursor:
            cursor.execute(ORDER_IDS_SQL, [len(todo)])
            ids = [row[0] for row in cursor.fetchall()]
        for i, order_id in zip(todo, ids, strict=True):
            plans[i].order.pk = order_id
        refused = funds_hold_many(
            holds=[
                HoldRequest(
                    user_id=plans[i].user.pk,
                    asset=plans[i].hold_asset,
                    amount=plans[i].hold,
                    order_id=plans[i].order.pk,
                    field=plans[i].hold_field,
                )
                for i in todo
            ]
        )
        for i, error in zip(todo, refused, strict=True):
            results[i] = error
        todo = [i for i in todo if results[i] is None]
    if todo:
        try:
            _orders_insert([plans[i].order for i in todo])
        except IntegrityError as exc:  # the batch's transaction rolls back whole
            if CLIENT_ORDER_ID_CONSTRAINT in str(exc):
                raise ClientOrderIdRace from exc
            raise
        shard_of = {i: plans[i].instrument.shard for i in todo}
        command_ids = commands_enqueue_many(
            commands=[
                CommandRow(
                    shard=shard_of[i],
                    kind=Command.Kind.PLACE,
                    payload={"order_id": plans[i].order.pk, **plans[i].command_payload},
                    order_id=plans[i].order.pk,
                    user_id=plans[i].user.pk,
                )
                for i in todo
            ]
        )
        entries = []
        for i, command_id in zip(todo, command_ids, strict=True):
            plan = plans[i]
            plan.audit.order_id = plan.order.pk
            plan.audit.payload = {
                **plan.audit.payload, "order_id": plan.order.pk, "command_id": command_id
            }  # fmt: skip
            entries.append(plan.audit)
            # The rates frozen on it and the tier they came from, beside its submission.
            entries.append(
                dataclasses.replace(
                    plan.audit,
                    event_type=FEE_CALCULATED,
                    payload={
                        **plan.fees.audit_payload(),
                        "maker_fee_ppm": plan.fees.maker_fee_ppm,
                        "taker_fee_ppm": plan.fees.taker_fee_ppm,
                        "order_id": plan.order.pk,
                        "command_id": command_id,
                    },
                )
            )
            results[i] = Placement(order=plan.order, created=True, command_id=command_id)
        audit_record_copy(records=entries)
    for i, first in replay_of.items():
        stored_first = results[first]
        if isinstance(stored_first, Placement):
            if plans[first].digest != plans[i].digest:
                results[i] = _client_id_conflict(
                    stored_first.order.pk, plans[i].request.client_order_id
                )
            else:
                results[i] = Placement(order=stored_first.order, created=False, command_id=None)
        else:
            # The first was refused: this one is refused the same way (nothing was stored).
            results[i] = stored_first
    return results


def _day_plans_recheck(
    plans: list[OrderPlan], todo: list[int], results: list[Placement | ApiError | None]
) -> None:
    """DAY orders whose instrument's session hours changed after they were checked: refused
    MarketClosed when no session is open now, else given the new session's close.

    The rows are read FOR SHARE, before the batch takes any other lock, and kept to its commit:
    an edit's UPDATE of the row waits for this batch, whose commands then precede the edit's
    (its day_expire_at moves them), or this read waits for the edit to commit and sees it.
    (The command-order lock would do too, but other batches take it after their users' ledger
    locks, and this one would take it before them.) Orders checked while an edit committed had
    otherwise kept the old hours: DAY orders sent as staff closed a 24/7 book rested on the
    closed book until the next UTC midnight."""
    day = [i for i in todo if plans[i].request.time_in_force == Order.TimeInForce.DAY]
    if not day:
        return
    with bound_cursor() as cursor:
        cursor.execute(_SESSION_SQL, [list({plans[i].instrument.pk for i in day})])
        hours = {row[0]: row[1:] for row in cursor.fetchall()}
    now = timezone.now()
    for i in day:
        plan = plans[i]
        instrument = plan.instrument
        fresh = hours[instrument.pk]
        if fresh == tuple(getattr(instrument, field) for field in INSTRUMENT_SESSION_FIELDS):
            continue
        edited = copy.copy(instrument)
        for field, value in zip(INSTRUMENT_SESSION_FIELDS, fresh, strict=True):
            setattr(edited, field, value)
        try:
            check_session(edited, now)
        except ApiError as exc:
            results[i] = exc
            continue
        expire_at = day_expiry(edited, now)
        plan.order.expire_at = expire_at
        plan.command_payload["expire_at"] = to_ns(expire_at)
        plan.command_payload.pop(SESSION_CLOSE_KEY, None)
        closes = session_close_ns(edited, now)
        if closes is not None:
            plan.command_payload[SESSION_CLOSE_KEY] = closes
        plan.audit.payload = {**plan.audit.payload, "expire_at": expire_at}


# The active users among a batch's, their rows held FOR SHARE to its commit.
_ACTIVE_USERS_SQL = (
    "SELECT id FROM accounts_user WHERE id = ANY(%s) AND is_active ORDER BY id FOR SHARE"
)


def _deactivated_users_refuse(
    plans: list[OrderPlan], todo: list[int], results: list[Placement | ApiError | None]
) -> None:
    """Orders of a user staff deactivated after the request was authenticated: refused 401
    `AuthenticationFailed`, nothing stored.

    The users' rows are read FOR SHARE (after the instruments', before the ledger's locks) and
    kept to the batch's commit: a deactivation's UPDATE of the row waits for the batch, and its
    cancel of the user's open orders then sees these; or this read waits for the deactivation
    to commit and finds the user inactive. An order authenticated just before a deactivation and
    stored just after had rested on the book, missed by the deactivation's cancels, for a user
    who could no longer sign in to cancel it."""
    if not todo:
        return
    with bound_cursor() as cursor:
        cursor.execute(_ACTIVE_USERS_SQL, [list({plans[i].user.pk for i in todo})])
        active = {row[0] for row in cursor.fetchall()}
    for i in todo:
        user_id = plans[i].user.pk
        if user_id not in active:
            results[i] = trading_error(
                "AuthenticationFailed",
                f"user {user_id} was deactivated by staff: the order was not placed",
                http_status=401,
            )


def _require_open(order: Order) -> None:
    if order.status not in Order.OPEN_STATUSES:
        raise trading_error(
            "OrderNotOpen",
            f"order {order.pk} is {order.status}; only open orders can be changed",
            extra={"order_id": order.pk},
        )


def order_cancel(*, order: Order, actor, reason: str = "user", http_request=None) -> Command:
    """Ask the shard to cancel `order` (a pending one is cancelled right after it is placed).

    Stored like an order (see `order_place`): through the process's order entry batch outside
    a transaction, in the caller's inside one."""
    _require_open(order)
    return _entry_store(_cancel_plan(order, actor, reason, http_request))


def _cancel_plan(order: Order, actor, reason: str, http_request) -> CancelPlan:
    return CancelPlan(
        order=order,
        reason=reason,
        audit=audit_entry(
            event_type=AuditEvent.ORDER_CANCEL_REQUESTED,
            actor=actor,
            user_id=order.user_id,
            order_id=order.pk,
            symbol=order.instrument.symbol,
            shard=order.instrument.shard,
            payload={"reason": reason},
            request=http_request,
        ),
    )


def orders_cancel_store(*, plans: list[CancelPlan]) -> list[Command]:
    """Store cancels together in one transaction: their commands (ids in the given order) and
    audit records; returns the commands."""
    return entry_batch_store(plans=[], cancels=plans)[1]


def _cancels_store(plans: list[CancelPlan]) -> list[Command]:
    rows = [
        CommandRow(
            shard=plan.order.instrument.shard,
            kind=Command.Kind.CANCEL,
            payload={"order_id": plan.order.pk}
            if plan.reason == "user"
            else {"order_id": plan.order.pk, "reason": plan.reason},
            order_id=plan.order.pk,
            user_id=plan.order.user_id,
        )
        for plan in plans
    ]
    command_ids = commands_enqueue_many(commands=rows)
    for plan, command_id in zip(plans, command_ids, strict=True):
        plan.audit.payload = {**plan.audit.payload, "command_id": command_id}
    audit_record_copy(records=[plan.audit for plan in plans])
    return [row.stored(command_id) for row, command_id in zip(rows, command_ids, strict=True)]


@transaction.atomic
def order_amend(
    *,
    order: Order,
    actor,
    quantity: Decimal | None = None,
    price: Decimal | None = None,
    http_request=None,
    now: dt.datetime | None = None,
) -> Command:
    """Ask the shard to amend `order`: `quantity` is the new total (fills included).

    The order's hold follows its new size at once when it grows (400 InsufficientBalance if the
    money is not there); a shrinking hold is released when the engine has applied the amend.
    One amend at a time: another while the first is unapplied is refused (AmendPending).
    Outside the instrument's session only a reduction is taken (it cannot trade); a new price
    or a larger size is refused with MarketClosed, as a new order is.
    """
    # The order row only (`of`): FOR UPDATE on the joined instrument row too would conflict
    # with the KEY SHARE lock that every other order-entry transaction's foreign key check
    # takes on it at COMMIT, while holding the command-order lock this amend then waits for:
    # a deadlock (and every amend of an instrument queued behind the others).
    order = (
        Order.objects.select_for_update(of=("self",)).select_related("instrument").get(pk=order.pk)
    )
    _require_open(order)
    if quantity is None and price is None:
        raise trading_error("NothingToAmend", "give a new quantity, a new price, or both")
    if order.order_type == Order.Type.MARKET:
        # Open only on its way to the engine, which fills or ends it at once. A market buy by
        # quote_quantity has no quantity to compare with: amending one was a 500.
        raise trading_error(
            "InvalidCombination",
            "a market order cannot be amended: it never rests in the book",
            field="quantity" if quantity is not None else "price",
        )
    instrument = order.instrument
    closes = None
    if price is not None or (quantity is not None and quantity > order.quantity):
        # A new price can cross and trade; a larger size joins the book anew.
        now = now or timezone.now()
        check_session(instrument, now)
        closes = session_close_ns(instrument, now)
    engine = engine_instrument_for(instrument)
    if price is not None and order.order_type not in (Order.Type.LIMIT, Order.Type.STOP_LIMIT):
        raise trading_error(
            "InvalidCombination", f"a {order.order_type} order has no price", field="price"
        )
    new_price = order.price if price is None else price
    new_quantity = order.quantity if quantity is None else quantity
    price_arg = qty_arg = None
    if price is not None:
        price_arg = price_ticks(engine, instrument, price, "price")
        check_price_max(engine, price_arg, "price")
        check_band(instrument, price, reference_price(instrument), "price")
    if quantity is not None:
        qty_arg = quantity_lots(engine, instrument, quantity, "quantity")
        if quantity <= order.filled_quantity:
            raise trading_error(
                "AmendQuantityTooLow",
                "quantity is the new total and must exceed the "
                f"{order.filled_quantity.normalize():f} filled",
                field="quantity",
            )
    if new_quantity is not None:
        # The amended order meets the rules a new one must (a new price had been taken below
        # the minimum notional, and on an order below a minimum raised since it was placed).
        check_minimums(
            instrument,
            new_price if order.order_type in (Order.Type.LIMIT, Order.Type.STOP_LIMIT) else None,
            new_quantity,
            "quantity" if quantity is not None else "price",
        )
        if order.display_quantity is not None:  # and so do its slices
            check_display_minimums(
                instrument,
                new_price,
                order.display_quantity,
                new_quantity,
                "quantity" if quantity is not None else "price",
            )
    if Command.objects.filter(
        order_id=order.pk, kind=Command.Kind.AMEND, applied_at__isnull=True
    ).exists():
        raise trading_error(
            "AmendPending",
            f"order {order.pk} has an amend the matching engine has not applied yet; retry",
            extra={"order_id": order.pk},
        )
    max_quote = None
    new_held = order.held_amount
    # A buy's budget (max_quote, all it may spend in its life) becomes what it has spent plus
    # what its remaining quantity can cost at its new price; a stop-loss buy has no price: its
    # remaining quantity at the collar above its stop price or above the best ask when that is
    # higher, as when it was placed (the stop alone had cut the budget of a stop whose book had
    # moved above it: reduced, it then filled short with reason max_quote).
    stop_loss = order.order_type == Order.Type.STOP_LOSS
    # What is left to fill: the new total less the filled, or what the order has left (self-
    # trade prevention may have taken some off its quantity).
    rest = order.remaining_quantity if quantity is None else new_quantity - order.filled_quantity
    if order.side == Order.Side.BUY and (new_price is not None or stop_loss):
        needed = engine.quote_to_minor(order.quote_spent) + buy_hold_minor(
            engine=engine,
            order_type=order.order_type,
            price_ticks=engine.price_to_ticks(new_price) if new_price is not None else 0,
            qty_lots=engine.qty_to_lots(rest),
            stop_ticks=engine.price_to_ticks(order.stop_price) if stop_loss else 0,
            quote_minor=0,
            best_ask_ticks=best_ask_ticks(
                engine, best_ask(instrument, book_snapshot(instrument.symbol))
            )
            if stop_loss
            else None,
            fee_ppm=max(order.maker_fee_ppm, order.taker_fee_ppm),
        )
        if price is not None and order.price is not None and price < order.price:
            # The row's fills may lag the engine: a fill at the old price waiting ahead of this
            # amend spends more than the new price reckons for those lots (a 10 x 100 buy,
            # 5 filled unseen, repriced to 90 had a budget for 10 x 90 and ended a lot short
            # with reason max_quote). Until the engine applies the amend, the order keeps what
            # it holds and adds only the lots it grows by, at the new price; the batch that
            # applies the amend gives back what the real rest does not need.
            kept = engine.quote_to_minor(order.held_amount)
            if new_quantity > order.quantity:
                kept += buy_cost_minor(
                    engine,
                    engine.price_to_ticks(new_price),
                    engine.qty_to_lots(new_quantity - order.quantity),
                    max(order.maker_fee_ppm, order.taker_fee_ppm),
                )
            needed = max(needed, kept)
        max_quote = buy_value_check(
            engine, instrument, needed, "quantity" if quantity is not None else "price"
        )
        new_held = engine.minor_to_quote(needed)
    elif order.side == Order.Side.SELL:
        new_held = order.filled_quantity + rest
    hold_delta = new_held - order.held_amount
    if hold_delta > 0:
        funds_hold(
            user=order.user,
            asset=instrument.quote_asset if order.side == Order.Side.BUY else instrument.base_asset,
            amount=hold_delta,
            order_id=order.pk,
            field="quantity" if quantity is not None else "price",
        )
        order.hold_remaining += hold_delta
    order.held_amount = new_held
    order.save(update_fields=["held_amount", "hold_remaining", "updated_at"])
    command = command_enqueue(
        shard=instrument.shard,
        kind=Command.Kind.AMEND,
        payload={
            "order_id": order.pk,
            "price": price_arg,
            "qty": qty_arg,
            "max_quote": max_quote,
            "hold_delta": str(hold_delta),
            **({} if closes is None else {SESSION_CLOSE_KEY: closes}),
        },
        order_id=order.pk,
        user_id=order.user_id,
    )
    audit_record(
        event_type=AuditEvent.ORDER_AMEND_REQUESTED,
        actor=actor,
        user_id=order.user_id,
        order_id=order.pk,
        symbol=instrument.symbol,
        shard=instrument.shard,
        payload={
            "quantity": quantity,
            "price": price,
            # Before and after, as the audit catalogue asks of changes.
            "previous_quantity": quantity_str(instrument, order.quantity),
            "previous_price": price_str(instrument, order.price),
            "command_id": command.pk,
        },
        request=http_request,
    )
    return command


@transaction.atomic
def orders_cancel_for_deactivated_user(*, user, actor, http_request=None) -> int:
    """Cancel every open order of a user staff deactivated, each on the user's behalf (reason
    `staff`, as the admin's cancel action); returns how many cancels were sent.

    Stored together, set-based (as a delisting's): one at a time, a user with thousands of open
    orders held the command-order lock (taken at the first cancel, kept to the commit) for tens
    of seconds, and every order entry of the exchange waited behind it."""
    open_orders = list(
        Order.objects.filter(user_id=user.pk, is_open=True)
        .select_related("instrument")
        .order_by("pk")
    )
    orders_cancel_store(
        plans=[_cancel_plan(order, actor, "staff", http_request) for order in open_orders]
    )
    return len(open_orders)


@transaction.atomic
def orders_mass_cancel(*, user, actor, symbol: str | None = None, http_request=None) -> list[int]:
    """Cancel every open order of `user` (optionally of one symbol); returns the command ids."""
    shards = Instrument.objects.values_list("shard", flat=True).distinct()
    if symbol is not None:
        shards = [instrument_by_symbol(symbol).shard]
    commands = []
    for shard in sorted(set(shards)):
        command = command_enqueue(
            shard=shard,
            kind=Command.Kind.MASS_CANCEL,
            payload={"user_id": user.pk, "symbol": symbol},
            user_id=user.pk,
        )
        commands.append(command.pk)
    # Once for the request, and under each order open now, so that its history says who asked
    # and from where (it had read only "cancelled by the user, command mass_cancel"). One still
    # on its way to the engine is cancelled too, its record naming the command only.
    open_orders = Order.objects.filter(user_id=user.pk, is_open=True)
    if symbol is not None:
        open_orders = open_orders.filter(instrument__symbol=symbol)
    subjects = [(None, symbol), *open_orders.values_list("pk", "instrument__symbol")]
    audit_record_copy(
        records=[
            audit_entry(
                event_type=AuditEvent.ORDER_CANCEL_REQUESTED,
                actor=actor,
                user_id=user.pk,
                order_id=order_id,
                symbol=order_symbol,
                payload={"mass_cancel": True, "command_ids": commands},
                request=http_request,
            )
            for order_id, order_symbol in subjects
        ]
    )
    return commands


HALT_REASON_MAX_LENGTH = 200


def halt_reason_clean(reason: str) -> str:
    """A halt's or delisting's reason as staff typed it, trimmed; 400 when longer than
    HALT_REASON_MAX_LENGTH or holding a NUL character (the audit trail's JSON cannot)."""
    reason = (reason or "").strip()
    if len(reason) > HALT_REASON_MAX_LENGTH:
        raise trading_error(
            "InvalidParameter",
            f"a reason is at most {HALT_REASON_MAX_LENGTH} characters (this one has {len(reason)})",
            field="reason",
        )
    if "\x00" in reason:
        raise trading_error(
            "InvalidParameter", "a reason cannot hold a NUL character", field="reason"
        )
    return reason


def _instrument_status_change(
    *,
    instrument: Instrument,
    status: str,
    kind: str,
    event: str,
    actor,
    http_request,
    reason: str = "",
    delist: bool = False,
) -> Command:
    """Set the instrument's status and send its engine the command (with staff's `reason`,
    and whether it delists, which the engine does not need but the market-data feed and the
    audit trail say). A delisted instrument's status never changes again, and a halt of a
    halted one or a resume of a trading one changes nothing: each is a 400, nothing sent."""
    # Locked as its UPDATE would lock it (FOR NO KEY UPDATE: order entry's inserts, which take
    # FOR KEY SHARE on it for their foreign key while holding the command-order lock, never
    # wait on it), so that two staff requests cannot both see the old status.
    current = Instrument.objects.select_for_update(no_key=True).get(pk=instrument.pk).status
    if current == Instrument.Status.DELISTED:
        raise trading_error(
            "InvalidParameter", f"{instrument.symbol} is delisted: it cannot trade again"
        )
    if current == status:
        raise trading_error(
            "InvalidParameter", f"{instrument.symbol} is already {status}: nothing was sent"
        )
    instrument.status = status
    instrument.status_reason = reason
    instrument.save(update_fields=["status", "status_reason"])
    # Every process's instrument cache reads it again at once: the ticker had said `trading`
    # for up to 2 s after a halt, and order entry had taken orders for a delisted instrument.
    transaction.on_commit(instrument_rules_changed)
    payload = {"symbol": instrument.symbol}
    if reason:
        payload["reason"] = reason
    if delist:
        payload["delist"] = True
    command = command_enqueue(shard=instrument.shard, kind=kind, payload=payload)
    audit_payload = {"command_id": command.pk}
    if reason:
        audit_payload["reason"] = reason
    audit_record(
        event_type=event,
        actor=actor,
        symbol=instrument.symbol,
        shard=instrument.shard,
        payload=audit_payload,
        request=http_request,
    )
    return command


@transaction.atomic
def instrument_halt(
    *, instrument: Instrument, actor, reason: str = "", http_request=None
) -> Command:
    """Halt trading: new orders and amends are rejected, cancels still work. `reason` (optional,
    at most 200 characters) goes to the audit trail, the market-data feed's status frame and
    the ticker's `status_reason`."""
    return _instrument_status_change(
        instrument=instrument,
        status=Instrument.Status.HALTED,
        kind=Command.Kind.HALT,
        event=AuditEvent.INSTRUMENT_HALT_REQUESTED,
        actor=actor,
        http_request=http_request,
        reason=halt_reason_clean(reason),
    )


@transaction.atomic
def instrument_resume(*, instrument: Instrument, actor, http_request=None) -> Command:
    """Resume trading of a halted instrument (never of a delisted one)."""
    return _instrument_status_change(
        instrument=instrument,
        status=Instrument.Status.TRADING,
        kind=Command.Kind.RESUME,
        event=AuditEvent.INSTRUMENT_RESUME_REQUESTED,
        actor=actor,
        http_request=http_request,
    )


@transaction.atomic
def instrument_delist(*, instrument: Instrument, actor, reason: str = "", http_request=None) -> int:
    """Close an instrument for good: its book is halted (new orders and amends refused), every
    open order is cancelled on its owner's behalf (reason `staff`; each hold is released as its
    order ends), and it leaves the listings (GET /symbols, the markets page). It cannot resume;
    its orders, trades and history stay. Returns the number of orders cancelled."""
    _instrument_status_change(
        instrument=instrument,
        status=Instrument.Status.DELISTED,
        kind=Command.Kind.HALT,
        event=AuditEvent.INSTRUMENT_DELIST_REQUESTED,
        actor=actor,
        http_request=http_request,
        reason=halt_reason_clean(reason),
        delist=True,
    )
    # After the halt in command order: no order can rest or trade once these are applied.
    open_orders = list(
        Order.objects.filter(instrument=instrument, status__in=Order.OPEN_STATUSES)
        .select_related("instrument")
        .order_by("pk")
    )
    orders_cancel_store(
        plans=[_cancel_plan(order, actor, "staff", http_request) for order in open_orders]
    )
    return len(open_orders)


# Instrument fields that cannot change once it is listed (see instrument_rules_update).
INSTRUMENT_FIXED_AT_LISTING = (
    "symbol",
    "base_asset",
    "quote_asset",
    "base_precision",
    "quote_precision",
    "tick_size",
    "lot_size",
)


# The trading session: a change moves the expiry of the instrument's open DAY orders.
INSTRUMENT_SESSION_FIELDS = ("trades_24_7", "session_open", "session_close", "session_timezone")


# The session fields of instruments, in INSTRUMENT_SESSION_FIELDS' order (_day_plans_recheck).
_SESSION_SQL = (
    f"SELECT id, {', '.join(INSTRUMENT_SESSION_FIELDS)} "
    "FROM exchange_instrument WHERE id = ANY(%s) FOR SHARE"
)


def day_orders_expiry(instrument: Instrument, now: dt.datetime) -> dt.datetime:
    """When the open DAY orders of `instrument` expire after its session hours changed: at the
    close of the session open now, as a DAY order placed now would; at once when no session is
    open now (the market is closed, so no DAY order stays)."""
    return day_expiry(instrument, now) if session_open_at(instrument, now) else now


@transaction.atomic
def instrument_rules_update(
    *, instrument: Instrument, previous: Instrument, actor, http_request=None
) -> Command | None:
    """Send an edited instrument's trading rules (minimums, band, collar, default STP mode) to
    its shard's engine, which otherwise kept enforcing the rules it was listed with; None when
    the edit changed none of them. Order entry picks the new row up by itself.

    New session hours also move the expiry of its open DAY orders (see day_orders_expiry):
    they had kept the close of the hours they were placed under (one placed on a 24/7 book
    stayed open after the book got hours and closed). Once the edit commits, order entry in
    every process reads the new row (instrument_rules_changed), and a DAY order checked
    against the old row while it committed follows the new hours when stored
    (_day_plans_recheck).

    Called after the row's UPDATE, in its transaction: that holds the row FOR NO KEY UPDATE
    (no key column changes: the symbol is fixed), which the foreign-key checks of the entry
    batches it then waits for (command_enqueue's lock) do not conflict with (see
    COMMAND_ORDER_LOCK_KEY)."""
    changed = [
        field
        for field in INSTRUMENT_FIXED_AT_LISTING
        if getattr(previous, field) != getattr(instrument, field)
    ]
    if changed:
        raise ValueError(f"{instrument.symbol}: {', '.join(changed)} cannot change once listed")
    spec = engine_instrument_spec(instrument)
    try:
        before = engine_instrument_spec(previous)
    except ValueError:  # rules saved before Instrument.clean() checked them: send the new ones
        before = None
    session_changed = any(
        getattr(previous, field) != getattr(instrument, field)
        for field in INSTRUMENT_SESSION_FIELDS
    )
    if spec == before and not session_changed:
        return None
    payload: dict = dict(spec)
    audit_payload: dict = {"from": before, "to": spec}
    if session_changed:
        day_expire_at = day_orders_expiry(instrument, timezone.now())
        payload["day_expire_at"] = to_ns(day_expire_at)
        audit_payload["session"] = {
            "from": _session_hours(previous),
            "to": _session_hours(instrument),
            "day_orders_expire_at": iso_z(day_expire_at),
        }
    command = command_enqueue(
        shard=instrument.shard, kind=Command.Kind.UPDATE_RULES, payload=payload
    )
    transaction.on_commit(instrument_rules_changed)  # order entry reads the new row at once
    audit_record(
        event_type=AuditEvent.INSTRUMENT_RULES_CHANGE_REQUESTED,
        actor=actor,
        symbol=instrument.symbol,
        shard=instrument.shard,
        payload={"command_id": command.pk, **audit_payload},
        request=http_request,
    )
    return command


def _session_hours(instrument: Instrument) -> dict:
    """An instrument's session hours, for the audit trail."""
    if instrument.trades_24_7:
        return {"trades_24_7": True}
    return {
        "trades_24_7": False,
        "open": instrument.session_open.isoformat() if instrument.session_open else None,
        "close": instrument.session_close.isoformat() if instrument.session_close else None,
        "timezone": instrument.session_timezone,
    }


@transaction.atomic
def instrument_list(*, instrument: Instrument, actor=None, http_request=None) -> Command:
    """Add a newly created instrument to its shard's engine, audited with all its rules (who
    listed it: staff in the admin; no actor for a listing by the system)."""
    spec = engine_instrument_spec(instrument)
    command = command_enqueue(
        shard=instrument.shard, kind=Command.Kind.ADD_INSTRUMENT, payload=spec
    )
    audit_record(
        event_type=AuditEvent.INSTRUMENT_LISTED,
        actor=actor,
        symbol=instrument.symbol,
        shard=instrument.shard,
        payload={
            "command_id": command.pk,
            "base_asset": instrument.base_asset,
            "quote_asset": instrument.quote_asset,
            "base_precision": instrument.base_precision,
            "quote_precision": instrument.quote_precision,
            "tick_size": instrument.tick_size,
            "lot_size": instrument.lot_size,
            "trades_24_7": instrument.trades_24_7,
            "rules": spec,
        },
        request=http_request,
    )
    return command


def _usd_pair(symbol: str, base: str, base_precision: int, lot: str, min_notional: str) -> dict:
    return {
        "symbol": symbol,
        "base_asset": base,
        "quote_asset": "USD",
        "base_precision": base_precision,
        "quote_precision": 2,
        "tick_size": Decimal("0.01"),
        "lot_size": Decimal(lot),
        "min_quantity": Decimal(lot),
        "min_notional": Decimal(min_notional),
    }


DEMO_INSTRUMENTS = [
    _usd_pair("AAPL", "AAPL", 0, "1", "1.00"),
    _usd_pair("MSFT", "MSFT", 0, "1", "1.00"),
    _usd_pair("BTC-USD", "BTC", 8, "0.00001", "10.00"),
]


@transaction.atomic
def demo_seed(*, credentials: list[dict]) -> dict:
    """Create the demo instruments and users if missing; (re)set the users' passwords.

    `credentials` holds dicts with role ("admin" or "trader"), username and password.
    """
    User = get_user_model()
    symbols = []
    for spec in DEMO_INSTRUMENTS:
        instrument, created = Instrument.objects.get_or_create(symbol=spec["symbol"], defaults=spec)
        if created:
            instrument_list(instrument=instrument)
        symbols.append(spec["symbol"])
    for entry in credentials:
        user, _ = User.objects.get_or_create(
            username=entry["username"],
            defaults={"email": f"{entry['username']}@demo.exchange.local"},
        )
        is_admin = entry["role"] == "admin"
        user.is_staff = is_admin
        user.is_superuser = is_admin
        user.set_password(entry["password"])
        user.save(update_fields=["is_staff", "is_superuser", "password"])
        if not is_admin and not LedgerAccount.objects.filter(user=user).exists():
            demo_funds_grant(user=user, amounts=DEMO_FUNDS)
    return {"instruments": symbols, "users": [entry["username"] for entry in credentials]}

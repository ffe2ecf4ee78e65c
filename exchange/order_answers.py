"""How the trading API answers an order command, shared by REST and the WebSocket.

The answer waits (up to ORDER_REPLY_TIMEOUT_SECONDS) for the matching worker, then reports the
order row: a (status code, body) pair, or a catalogue ApiError for an engine rejection. Sync
code: the WebSocket runs it in a worker thread.
"""

import logging

from django.conf import settings
from django.db import Error as DatabaseError

from exchange import selectors
from exchange.api_errors import broken_connections_discard
from exchange.errors import engine_rejection, trading_error
from exchange.models import Order
from exchange.replies import reply_hub
from exchange.serializers import order_representation
from matching.models import Command

logger = logging.getLogger(__name__)


def _durable_but_unread(order: Order, exc: DatabaseError) -> tuple[int, dict]:
    """The command is committed (the order durable, the change on its way) but the database
    failed while the answer was read: 202 with what is known. A 503 here told the client to
    retry, and a retried order without a client_order_id was placed twice."""
    logger.warning(
        "answer not read back (database error after commit): 202",
        extra={"order_id": order.pk, "why": str(exc).strip()[:200]},
    )
    broken_connections_discard()
    return 202, order_representation(order)


def await_command(command_id: int) -> Command:
    """Wait (up to ORDER_REPLY_TIMEOUT_SECONDS) for the worker to apply the command; returns
    the command's row (read once it is known to be applied, or at the deadline)."""
    seen: list[Command] = []

    def applied() -> bool:
        seen[:] = [selectors.command_outcome(command_id)]
        return seen[0].applied_at is not None

    reply_hub.wait(command_id, done=applied, timeout=settings.ORDER_REPLY_TIMEOUT_SECONDS)
    if not seen:  # the deadline passed before any news: read it once
        applied()
    return seen[0]


def mass_cancel_answer(command_ids: list[int]) -> tuple[int, dict]:
    """202 with the mass cancel's command ids once the engine has applied them (or the wait
    ran out). They are committed: a database failure while waiting is logged and answered the
    same (a 503 had told the client to retry a mass cancel that was on its way, and the retry
    also cancelled what it placed in between)."""
    try:
        for command_id in command_ids:
            await_command(command_id)
    except DatabaseError as exc:
        logger.warning(
            "mass cancel's answer not read back (database error after commit): 202",
            extra={"command_ids": command_ids[:20], "why": str(exc).strip()[:200]},
        )
        broken_connections_discard()
    return 202, {"command_ids": command_ids}


def order_placed_answer(order: Order, command_id: int | None, created: bool) -> tuple[int, dict]:
    """201 with the engine's result, 202 while pending, 200 for a client_order_id replay;
    raises the 400 ApiError of an engine rejection."""
    if command_id is None and not created and order.status == Order.Status.PENDING_NEW:
        # A replay of a client_order_id whose order is still on its way to the engine waits
        # for it as the first request does (it had answered 202 at once, the same state).
        command_id = (
            Command.objects.filter(order_id=order.pk, kind=Command.Kind.PLACE)
            .values_list("pk", flat=True)
            .first()
        )
    try:
        if command_id is not None:
            # Applied means no longer pending_new: the order row is the answer, re-read once.
            def applied() -> bool:
                selectors.order_state_refresh(order)
                return order.status != Order.Status.PENDING_NEW

            reply_hub.wait(command_id, done=applied, timeout=settings.ORDER_REPLY_TIMEOUT_SECONDS)
        if order.status == Order.Status.REJECTED and created:
            raise engine_rejection(order.reject_code, order.reject_message, order_id=order.pk)
        if order.status == Order.Status.PENDING_NEW:
            return 202, order_representation(order)
        fills = selectors.fills_for_order(order) if order.filled_quantity else []
    except DatabaseError as exc:
        return _durable_but_unread(order, exc)
    return (201 if created else 200), order_representation(order, fills)


def order_changed_answer(order: Order, command_id: int) -> tuple[int, dict]:
    """200 with the order after a cancel/amend, 202 if pending; raises the 400 ApiError when
    the engine refused the command."""
    try:
        command = await_command(command_id)
        selectors.order_state_refresh(order)
        if command.reject_code == "UnknownOrder":
            # The order ended in the engine before the change arrived (filled, expired, ...).
            raise trading_error(
                "OrderNotOpen",
                f"order {order.pk} is {order.status}; only open orders can be changed",
                extra={"order_id": order.pk},
            )
        if command.reject_code:
            raise engine_rejection(
                command.reject_code,
                command.reject_message or "the matching engine refused the change",
                order_id=order.pk,
            )
        fills = selectors.fills_for_order(order) if order.filled_quantity else []
    except DatabaseError as exc:
        return _durable_but_unread(order, exc)
    return (200 if command.applied_at else 202), order_representation(order, fills)

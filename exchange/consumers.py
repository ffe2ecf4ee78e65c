"""The streaming WebSocket, /ws/v1 (protocol: docs/websocket.md).

A thin adapter: it authenticates (session cookie or a signed API-key `login` message), keeps the
connection's subscriptions in the process's market hub, forwards the frames the hub queues for
it, and hands order entry to the same services and answer logic as REST, in worker threads so
the event loop never blocks. It writes nothing itself.
"""

import asyncio
import functools
import json
import logging
import threading
import time
from collections import Counter
from typing import Any

import redis
from channels.consumer import get_handler_name
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from rest_framework.exceptions import APIException

from accounts.address_groups import address_group
from exchange.api_errors import (
    INTERNAL_ERROR_BODY,
    SERVICE_UNAVAILABLE_BODY,
    ApiError,
    database_unavailable,
    error_answer,
)
from exchange.errors import echoed
from exchange.json_text import (
    LONE_SURROGATE_MESSAGE,
    NESTING_MESSAGE,
    STRICT_JSON,
    JsonRefused,
    finite_float,
    holds_lone_surrogate,
    holds_nul,
    refuse_constant,
    refuse_deep_nesting,
)
from exchange.market_hub import SNAPSHOT_DEPTH, Subscriber, channel_symbol, hub
from exchange.redis_connection import redis_read_ahead
from exchange.selectors import book_has_changed, instruments_trading_state
from exchange.view_threads import database_sync_to_async, view_executor
from exchange.ws_direct import RAW_SEND_KEY, DirectSocket, text_frame
from matching.command_codec import ns_to_datetime

logger = logging.getLogger(__name__)

# Close codes (documented in docs/websocket.md).
CLOSE_PING_TIMEOUT = 4000
CLOSE_LOGIN_REVOKED = 4001
CLOSE_SLOW_CONSUMER = 4008
CLOSE_RATE_LIMIT = 4029
CLOSE_TOO_MANY_CONNECTIONS = 4030

# Stable error names and codes of the socket; the order ops answer with the REST catalogue.
WS_ERRORS: dict[str, int] = {
    "NotAuthenticated": -1002,
    "AuthenticationFailed": -1003,
    # A refused API-key login: the REST catalogue's names and codes (exchange/errors.py).
    "InvalidApiKey": -1010,
    "IpNotAllowed": -1011,
    "ApiKeyPermissionMissing": -1012,
    "MissingAuthHeader": -1013,
    "InvalidTimestamp": -1014,
    "InvalidRecvWindow": -1016,
    "TimestampOutsideRecvWindow": -1021,
    "InvalidSignature": -1022,
    "TooManyRequests": -1015,
    "MalformedRequest": -1100,
    "InvalidParameter": -1102,
    "UnexpectedParameter": -1106,
    "UnknownSymbol": -1121,
    "UnknownOp": -1140,
    "UnknownChannel": -1141,
    "TooManySubscriptions": -1142,
    "NotSubscribed": -1143,
    "TooManyConnections": -1144,
    "ServiceUnavailable": -1001,
}
PUBLIC_KINDS = ("book", "trades", "ticker")
MAX_CHANNELS_PER_MESSAGE = 100  # names in one subscribe or unsubscribe
PLAIN_CHANNELS = ("orders", "heartbeat")
# How long a subscription waits for the process's market-data feed to first listen (Redis out of
# reach when the process started): past it, ServiceUnavailable.
FEED_WAIT_SECONDS = 2.0
_ENCODER = DjangoJSONEncoder(separators=(",", ":"))
# Open sockets per client address in this process (WS_MAX_CONNECTIONS_PER_IP).
_open_per_address: Counter[str] = Counter()


def _op_and_id(raw) -> dict:
    """The `op` and `id` of a message, as answers echo them ({} when it is not a JSON object)."""
    try:
        message = json.loads(raw, parse_constant=refuse_constant, parse_float=finite_float)
        refuse_deep_nesting(raw, message)
    except (ValueError, TypeError, RecursionError):
        return {}
    return _answer_ids(message) if isinstance(message, dict) else {}


def _answer_ids(message: dict) -> dict:
    """What every answer to `message` repeats of it: its `op`, and its `id` when it has one;
    not one holding a lone surrogate, which strict JSON parsers refuse in the answer."""
    op, request_id = message.get("op"), message.get("id")
    ids = {"op": op} if request_id is None else {"op": op, "id": request_id}
    return {name: value for name, value in ids.items() if not holds_lone_surrogate(None, value)}


def heartbeat_time(ns: int) -> str:
    """UTC nanoseconds as a heartbeat's `server_time`, to the millisecond (floored, as
    GET /time: a float of the seconds rounded .999999800 up into the next second)."""
    return ns_to_datetime(ns).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def heartbeat_frame(sub: Subscriber, ns: int) -> dict:
    """The server time, and the seq of the last frame sent of each book `sub` follows; `None`
    for one whose snapshot is still on its way (the hub's -1 had been sent as a seq)."""
    return {
        "channel": "heartbeat",
        "type": "heartbeat",
        "server_time": heartbeat_time(ns),
        "server_time_ns": ns,
        "books": {
            symbol: seq if seq >= 0 else None
            for symbol, seq in sorted(sub.book_seq.items())
            if f"book.{symbol}" in sub.channels
        },
    }


class SocketRequest:
    """What the audit trail reads from a request (client address, session, API version)."""

    def __init__(self, scope: dict) -> None:
        client = scope.get("client") or (None, None)
        self.path = scope.get("path", "/ws/v1")
        self.META = {"REMOTE_ADDR": client[0]}
        self.session = scope.get("session")
        self.version = "v1"
        self.api_key_id: int | None = None  # set by an API-key login (the audit reads it)


def _symbol_shard(symbol: str) -> int | None:
    """The shard of the listed instrument `symbol` (None: no such instrument)."""
    from exchange.models import Instrument

    return Instrument.objects.filter(symbol=symbol).values_list("shard", flat=True).first()


def _login_fields_refusal(message: dict) -> tuple[str, str] | None:
    """(error, message) for a login whose fields are missing or of the wrong JSON type, in the
    socket's terms (the signature check names HTTP headers: "missing X-API-TIMESTAMP" for a
    timestamp sent as a float); None when they have the right shape."""

    def whole(value) -> bool:
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, str) and value.isascii() and value.isdigit()
        )

    for name in ("api_key", "signature"):
        if not isinstance(message.get(name), str):
            return "MissingAuthHeader", f"login needs {name}, a string"
    if message.get("timestamp") is None:  # absent, as REST's missing header
        return "MissingAuthHeader", "login needs timestamp, milliseconds since the epoch"
    if not whole(message.get("timestamp")):
        return "InvalidTimestamp", "timestamp must be whole milliseconds since the epoch"
    window = message.get("recv_window")
    if window is not None and not whole(window):
        return "InvalidRecvWindow", "recv_window must be a whole number of milliseconds"
    return None


def _api_key_login(message: dict, request: SocketRequest, now_ms: int):
    """Check a signed login (accounts/signing.py, the request line being GET /ws/v1): the
    user and the key's credentials, or SignatureRejected (audited)."""
    from accounts.api_keys import (
        api_key_auth_failure_record,
        api_key_credentials_cached,
        api_key_mark_used,
    )
    from accounts.signing import (
        WS_LOGIN_FIELD_NAMES,
        WS_LOGIN_METHOD,
        WS_LOGIN_PATH,
        SignatureRejected,
        SignedRequest,
        signature_verify,
    )

    def text(value) -> str | None:
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return value if isinstance(value, str) else None

    signed = SignedRequest(
        api_key=text(message.get("api_key")),
        timestamp=text(message.get("timestamp")),
        signature=text(message.get("signature")),
        recv_window=text(message.get("recv_window")),
        method=WS_LOGIN_METHOD,
        path=WS_LOGIN_PATH,
        client_ip=request.META.get("REMOTE_ADDR"),
        names=WS_LOGIN_FIELD_NAMES,
    )
    users = {}

    def lookup(key: str):
        # From the process's cache, as a signed REST request reads its key: each login had
        # been a database query, at a socket's message rate.
        found = api_key_credentials_cached(key)
        if found is None:
            return None
        users[found[0].id] = found[1]
        return found[0]

    try:
        credentials = signature_verify(signed=signed, lookup=lookup, now_ms=now_ms)
    except SignatureRejected as rejected:
        from accounts.rate_limits import auth_failure_allowed

        if not auth_failure_allowed(client_ip=signed.client_ip):
            # As over REST: past the address's budget of refused signatures a refusal is not
            # audited again (a socket could flood the trail at its message rate).
            raise SignatureRejected(
                "throttled",
                "TooManyRequests",
                "too many refused signatures from this address; wait a minute",
                http_status=429,
            ) from None
        api_key_auth_failure_record(
            reason=rejected.reason,
            api_key=signed.api_key,
            credentials=rejected.credentials,
            request=request,
            method=WS_LOGIN_METHOD,
            path=WS_LOGIN_PATH,
            user=users.get(rejected.credentials.id) if rejected.credentials else None,
        )
        raise
    api_key_mark_used(credentials=credentials, ip=signed.client_ip)
    return users[credentials.id], credentials


def _key_still_valid(credentials) -> bool:
    """The API key a socket logged in with is neither revoked nor its user deactivated (one
    Redis GET while the process's credentials cache is fresh: every revocation resets it)."""
    from accounts.api_keys import api_key_credentials_cached

    found = api_key_credentials_cached(credentials.key)
    return found is not None and not found[0].revoked and found[0].user_active


def _web_session_still_valid(
    user_id: int, session_key: str | None, seen: bytes | None
) -> tuple[bool, bytes | None]:
    """A socket's web session still signs its user in (not logged out, password unchanged, user
    active): looked up again only when the ended-sessions counter moved since `seen` or Redis is
    out of reach; returns the answer and the counter to remember."""
    from accounts.web_sessions import session_signs_in, sessions_ended_counter

    counter = sessions_ended_counter()
    if counter is not None and counter == seen:
        return True, counter
    return session_signs_in(session_key=session_key, user_id=user_id), counter


KEY_REVOKED_ANSWER = {
    "error": "InvalidApiKey",
    "code": WS_ERRORS["InvalidApiKey"],
    "message": "the API key this socket logged in with was revoked (or its user deactivated); "
    "the socket is closed (4001)",
}
SESSION_ENDED_ANSWER = {
    "error": "NotAuthenticated",
    "code": WS_ERRORS["NotAuthenticated"],
    "message": "the web session this socket signed in with ended (logged out, password changed "
    "or account deactivated); the socket is closed (4001)",
}


# What an order op costs of the user's and key's rate limits: as its REST request does.
ORDER_OP_WEIGHTS = {"requests": 1, "orders": 1}
CANCEL_ALL_WEIGHTS = {"requests": 5, "orders": 5}


def _op_read_ahead_keys(credentials, body: dict) -> list[str]:
    """The Redis keys an order op reads, read together before it runs (`redis_read_ahead`):
    the counter that says whether the login still holds, and what planning an order on the
    op's symbol reads (a cancel or an amend reads the instrument cache's counter too)."""
    from accounts.api_keys import revocations_key
    from accounts.web_sessions import sessions_ended_key
    from exchange.selectors import instrument_rules_key
    from exchange.services import order_plan_redis_keys

    keys = [revocations_key() if credentials is not None else sessions_ended_key()]
    symbol = body.get("symbol")
    keys.extend(
        order_plan_redis_keys(symbol) if isinstance(symbol, str) else [instrument_rules_key()]
    )
    return keys


def _rate_limited(user, credentials, weights: dict[str, int]) -> dict | None:
    """Count one order op against the user's and key's order-entry limits (as REST does);
    the 429 error body when refused."""
    from accounts.rate_limits import rate_limit_hit

    decision = rate_limit_hit(
        user_id=user.pk,
        key_id=credentials.id if credentials is not None else None,
        weights=weights,
    )
    if decision.allowed:
        return None
    return {
        "error": "TooManyRequests",
        "code": WS_ERRORS["TooManyRequests"],
        "message": f"rate limit reached; retry after {decision.retry_after_s} s",
        "retry_after": decision.retry_after_s,
    }


def _denied_record(**fields) -> None:
    """`api_key_auth_failure_record` on a view thread, which then hands its connection back;
    not past the client address's budget of refused key requests (REST's too): a read-only
    key's order ops, each refused, had each written an audit record at the message rate."""
    from django.db import connection

    from accounts.api_keys import api_key_auth_failure_record
    from accounts.rate_limits import auth_failure_allowed

    try:
        if auth_failure_allowed(client_ip=fields["request"].META.get("REMOTE_ADDR")):
            api_key_auth_failure_record(**fields)
    except Exception:  # the refusal stands; its audit record is what failed
        logger.exception("websocket permission refusal not audited")
    finally:
        connection.close()


# A timer may wake this much before its deadline and still count as on time.
TICK_SLACK_SECONDS = 0.005
# Refusals over the message rate close the socket when WS_ABUSE_CLOSE_AFTER of them come within
# this many seconds of the first.
ABUSE_WINDOW_SECONDS = 10.0
# How long an order op waits for the ops sent before it on its socket to be stored (see
# StreamConsumer._spawn_in_turn).
EARLIER_OPS_WAIT_SECONDS = 5.0


def _in_turn(op):
    """An order op of a socket, run in its turn (see StreamConsumer._spawn_in_turn): it waits
    (at most EARLIER_OPS_WAIT_SECONDS) until the ops in `earlier` are stored, and `stored` is
    set once it is over however it went. The op sets `stored` itself as soon as its command is
    durable: the ops behind it need not wait for the engine's answer. A refusal is answered as
    REST answers it."""

    @functools.wraps(op)
    def in_turn(
        user,
        body: dict,
        request: SocketRequest,
        *,
        earlier: tuple = (),
        stored: threading.Event | None = None,
    ) -> tuple[int, dict]:
        deadline = time.monotonic() + EARLIER_OPS_WAIT_SECONDS
        for before in earlier:
            before.wait(max(deadline - time.monotonic(), 0))
        try:
            return op(user, body, request, stored)
        except APIException as exc:
            return error_answer(exc)
        finally:
            _set(stored)

    return in_turn


def _set(event: threading.Event | None) -> None:
    if event is not None:
        event.set()


@_in_turn
def _order_place(user, body: dict, request: SocketRequest, stored) -> tuple[int, dict]:
    """Place an order (as POST /orders); a refusal is recorded in the audit trail, as REST's."""
    from exchange import services
    from exchange.order_answers import order_placed_answer
    from exchange.serializers import OrderPlaceSerializer

    try:
        serializer = OrderPlaceSerializer(data=body)
        serializer.is_valid(raise_exception=True)
        placement = services.order_place(
            user=user, request=serializer.to_request(), http_request=request
        )
    except APIException as exc:
        code, error = error_answer(exc)
        services.order_refusal_record(
            user=user, sent=body, status=code, error=error, http_request=request
        )
        return code, error
    _set(stored)  # durable: the answer may wait for the engine, the ops behind it need not
    return order_placed_answer(placement.order, placement.command_id, placement.created)


ORDER_KEYS = ("order_id", "client_order_id")


def _named_order(user, body: dict):
    """The user's order an op names by `order_id` or `client_order_id` (404 otherwise)."""
    from exchange import selectors
    from exchange.errors import trading_error

    order_id, client_order_id = body.get("order_id"), body.get("client_order_id")
    if order_id is not None and client_order_id is not None:
        # One was used and the other ignored: an op naming two orders changed the first.
        raise trading_error(
            "InvalidParameter",
            "give order_id or client_order_id, not both",
            field="client_order_id",
        )
    if order_id is not None:
        if isinstance(order_id, str) and order_id.isascii() and order_id.isdigit():
            # int() refuses over 4,300 digits: 20 significant digits are past any id already.
            order_id = int(order_id.lstrip("0")[:20] or "0")
        if not isinstance(order_id, int) or isinstance(order_id, bool):
            raise trading_error("InvalidParameter", "order_id must be an integer", field="order_id")
        return selectors.order_for_user(user=user, order_id=order_id)
    if isinstance(client_order_id, str):
        return selectors.order_for_user(user=user, client_order_id=client_order_id)
    if client_order_id is not None:
        raise trading_error(
            "InvalidParameter", "client_order_id must be a string", field="client_order_id"
        )
    raise trading_error(
        "MissingParameter", "order_id or client_order_id is required", field="order_id"
    )


@_in_turn
def _order_cancel(user, body: dict, request: SocketRequest, stored) -> tuple[int, dict]:
    """Cancel one order (as DELETE /orders/{id})."""
    from exchange import services
    from exchange.order_answers import order_changed_answer
    from exchange.serializers import refuse_unknown_names

    order = None
    try:
        refuse_unknown_names(body, ORDER_KEYS)
        order = _named_order(user, body)
        command = services.order_cancel(order=order, actor=user, http_request=request)
    except APIException as exc:
        services.order_change_refusal_record(
            user=user, kind="cancel", sent=body, order=order, exc=exc, http_request=request
        )
        raise
    _set(stored)
    return order_changed_answer(order, command.pk)


@_in_turn
def _order_amend(user, body: dict, request: SocketRequest, stored) -> tuple[int, dict]:
    """Amend one order (as PATCH /orders/{id}: `quantity` the new total, `price`)."""
    from exchange import services
    from exchange.order_answers import order_changed_answer
    from exchange.serializers import OrderAmendSerializer

    order = None
    try:
        order = _named_order(user, body)
        changes = {k: v for k, v in body.items() if k not in ORDER_KEYS}
        serializer = OrderAmendSerializer(data=changes)
        serializer.is_valid(raise_exception=True)
        command = services.order_amend(
            order=order, actor=user, http_request=request, **serializer.validated_data
        )
    except APIException as exc:
        services.order_change_refusal_record(
            user=user, kind="amend", sent=body, order=order, exc=exc, http_request=request
        )
        raise
    _set(stored)
    return order_changed_answer(order, command.pk)


@_in_turn
def _orders_cancel_all(user, body: dict, request: SocketRequest, stored) -> tuple[int, dict]:
    """Cancel every open order of the user, or of one `symbol` (as DELETE /orders?symbol=),
    including the ones placed before it on this socket: 202 with the commands' ids once the
    engine has applied them (or the wait ran out)."""
    from exchange import services
    from exchange.errors import trading_error
    from exchange.order_answers import mass_cancel_answer
    from exchange.serializers import refuse_unknown_names

    refuse_unknown_names(body, ("symbol",))
    symbol = body.get("symbol")
    if "symbol" in body and not isinstance(symbol, str):
        # `null` (a bot's unset variable) had cancelled every order on every symbol.
        raise trading_error(
            "InvalidParameter",
            "symbol must be a string; leave it out to cancel every open order",
            field="symbol",
        )
    command_ids = services.orders_mass_cancel(
        user=user, actor=user, symbol=symbol, http_request=request
    )
    _set(stored)
    return mass_cancel_answer(command_ids)


class StreamConsumer(AsyncWebsocketConsumer):
    # Public data comes through the hub and private events are filtered there: no per-connection
    # channel-layer channel (it would cost a Redis receive per connection for nothing).
    channel_layer_alias = "none"

    async def dispatch(self, message):
        # Channels closes stale DB connections before every message through the sync thread;
        # this consumer touches the database only in worker threads that do it themselves.
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def connect(self) -> None:
        self.sub = Subscriber(
            maxsize=settings.WS_QUEUE_SIZE,
            max_bytes=settings.WS_QUEUE_BYTES,
            on_give_up=self._give_up,
        )
        user = self.scope.get("user")
        self.user = user if getattr(user, "is_authenticated", False) else None
        self.key_credentials = None  # an API-key login's key (a session has every right)
        self.sessions_seen: bytes | None = None  # see _web_session_still_valid
        session = self.scope.get("session")
        self.session_key = session.session_key if session is not None and self.user else None
        self.sub.user_id = self.user.pk if self.user else None
        self.last_seen = time.monotonic()
        self.tokens = float(settings.WS_MAX_MESSAGES_PER_SECOND)  # a token bucket
        self.refused = 0  # messages refused over the rate since `refused_since`
        self.refused_since = 0.0
        self.ping_id = 0
        self.tasks: set[asyncio.Task] = set()
        # One event per order op of this socket not yet stored: places, and the ops that change
        # orders (cancel, amend, cancel_all). See `_spawn_in_turn`.
        self.places_in_flight: list[threading.Event] = []
        self.changes_in_flight: list[threading.Event] = []
        self.closing = False
        self.address = None  # counted in _open_per_address while the socket is open
        address = (self.scope.get("client") or (None,))[0]
        limit = settings.WS_MAX_CONNECTIONS_PER_IP
        if address is not None:
            address = address_group(address)  # an IPv6 address counts as its /64
            if limit > 0 and _open_per_address[address] >= limit:
                await self._refuse_extra_connection(limit)
                return
            _open_per_address[address] += 1
            self.address = address
        try:
            await hub.ensure_started()
            await self.accept()
        except BaseException:
            # Not opened (the client gone before the answer, say): no disconnect follows, and
            # the place it took had stayed taken for the process's life.
            self._give_place_back()
            raise
        self.sub.direct = DirectSocket.attach(self.scope.get(RAW_SEND_KEY))
        loop = asyncio.get_running_loop()
        self.writer = loop.create_task(self._write())
        self.login_check: asyncio.Task | None = None  # the last ping's (see _tick)
        self.timer = loop.create_task(self._tick())

    async def _refuse_extra_connection(self, limit: int) -> None:
        """Accept only to say why, then close: the client's address has `limit` sockets open."""
        await self.accept()
        error = {
            "type": "error",
            "error": "TooManyConnections",
            "code": WS_ERRORS["TooManyConnections"],
            "message": f"at most {limit} connections from one address; close one first "
            f"(closed {CLOSE_TOO_MANY_CONNECTIONS})",
        }
        await self.send(text_data=_ENCODER.encode(error))
        self.closing = True
        await self.close(code=CLOSE_TOO_MANY_CONNECTIONS)

    def _give_place_back(self) -> None:
        """Uncount this socket from its address's open sockets (once)."""
        address = getattr(self, "address", None)
        if address is not None:
            self.address = None
            _open_per_address[address] -= 1
            if _open_per_address[address] <= 0:
                del _open_per_address[address]

    async def disconnect(self, code) -> None:
        self._give_place_back()
        self.closing = True
        if hasattr(self, "sub"):
            hub.remove_all(self.sub)
        for task in (
            getattr(self, "writer", None),
            getattr(self, "timer", None),
            getattr(self, "login_check", None),
        ):
            if task is not None:
                task.cancel()
        # The order ops received before the close still run, in their turn, unanswered: they
        # had been cancelled, and those already running were stored while the ones waiting
        # their turn were dropped (a cancel-all sent behind ten places, then a close: some of
        # the places rested, and nothing cancelled them).

    # ---- output ------------------------------------------------------------------------------
    def push(self, value: dict) -> None:
        """Queue a reply behind the frames already queued (so an ack precedes its snapshot)."""
        hub.push(self.sub, _ENCODER.encode(value))

    def error(self, name: str, message: str, **extra: Any) -> None:
        self.push(
            {"type": "error", **extra, "error": name, "code": WS_ERRORS[name], "message": message}
        )

    async def _write(self) -> None:
        """Write the frames the hub queued (when the connection could not take them at once)."""
        sub = self.sub
        queue = sub.queue
        while True:
            frame = await queue.get()
            direct = sub.direct
            if direct is None:
                await self.send(text_data=frame)
                continue
            # Until this frame is written, the hub must not write past it.
            sub.holding = True
            try:
                if not direct.ready():
                    if direct.closed():
                        return
                    await direct.writable.wait()
                    if direct.closed():
                        return
                direct.write(text_frame(frame.encode()))
            finally:
                sub.holding = False

    async def _tick(self) -> None:
        """Heartbeats, pings, and the idle timeout."""
        heartbeat_s = settings.WS_HEARTBEAT_SECONDS
        ping_s = settings.WS_PING_INTERVAL_SECONDS
        timeout_s = settings.WS_PING_TIMEOUT_SECONDS
        start = time.monotonic()
        next_heartbeat, next_ping = start + heartbeat_s, start + ping_s
        while True:
            # Until the next deadline, on a fixed grid: a fixed sleep that woke a hair before
            # its deadline skipped a beat (a 2 s gap in about one heartbeat of eight).
            now = time.monotonic()
            wake = min(next_heartbeat, next_ping, now + timeout_s / 4)
            await asyncio.sleep(max(wake - now, 0.0))
            now = time.monotonic() + TICK_SLACK_SECONDS
            if now - self.last_seen > timeout_s:
                await self._close(CLOSE_PING_TIMEOUT)
                return
            if now >= next_heartbeat:
                next_heartbeat += heartbeat_s
                if next_heartbeat <= now:  # fell behind (a stalled loop): start over from now
                    next_heartbeat = now + heartbeat_s
                if "heartbeat" in self.sub.channels:
                    self.push(heartbeat_frame(self.sub, time.time_ns()))
            if now >= next_ping:
                next_ping += ping_s
                if next_ping <= now:
                    next_ping = now + ping_s
                self.ping_id += 1
                self.push({"type": "ping", "id": self.ping_id})
                # Also with each ping: a socket whose login no longer stands (its key revoked,
                # its web session ended, its user deactivated) is closed, its private channel
                # with it. On a task of its own: the check waits for a view thread, and while
                # order ops held them all the heartbeats and pings had stopped (and the socket
                # was then closed 4000 as silent, having had no ping to answer).
                if self.user is not None and (self.login_check is None or self.login_check.done()):
                    self.login_check = asyncio.get_running_loop().create_task(
                        self._close_unless_authorised()
                    )

    async def _close_unless_authorised(self) -> None:
        checked = self.key_credentials
        # Unless the socket has logged in again meanwhile (a bot rotating its key logs in with
        # the new one, then revokes the old): the check, queued behind busy view threads, had
        # found the old key revoked and closed a socket whose login stood.
        if not await self._still_authorised() and self.key_credentials is checked:
            await self._close(CLOSE_LOGIN_REVOKED)

    async def _still_authorised(self) -> bool:
        """The login still stands: its API key not revoked, its web session not ended, its user
        not deactivated (true when that cannot be checked now: PostgreSQL out of reach)."""
        credentials = self.key_credentials
        try:
            if credentials is not None:
                return await database_sync_to_async(
                    _key_still_valid, thread_sensitive=False, executor=view_executor()
                )(credentials)
            valid, self.sessions_seen = await database_sync_to_async(
                _web_session_still_valid, thread_sensitive=False, executor=view_executor()
            )(self.user.pk, self.session_key, self.sessions_seen)
            return valid
        except Exception:
            logger.warning("websocket login check failed", exc_info=True)
            return True

    async def _close(self, code: int) -> None:
        if not self.closing:
            self.closing = True
            await self.close(code=code)

    def _give_up(self) -> None:
        asyncio.get_running_loop().create_task(self._close(CLOSE_SLOW_CONSUMER))

    # ---- input -------------------------------------------------------------------------------
    async def receive(self, text_data=None, bytes_data=None) -> None:
        now = time.monotonic()
        rate = settings.WS_MAX_MESSAGES_PER_SECOND
        self.tokens = min(rate, self.tokens + (now - self.last_seen) * rate)
        self.last_seen = now
        if self.tokens < 1:
            # Refusals count towards the close within ABUSE_WINDOW_SECONDS of the first: they
            # had added up over the connection's life, and three brief overshoots an hour
            # apart closed it.
            if now - self.refused_since > ABUSE_WINDOW_SECONDS:
                self.refused, self.refused_since = 0, now
            self.refused += 1
            # With the op's `op` and `id`, as every answer has them: a refused order.place
            # could not be told from the others in flight. The last one too, before the close.
            self.error(
                "TooManyRequests",
                f"more than {settings.WS_MAX_MESSAGES_PER_SECOND} messages per second; "
                f"the connection is closed (4029) after {settings.WS_ABUSE_CLOSE_AFTER} refusals "
                f"within {ABUSE_WINDOW_SECONDS:g} s",
                **_op_and_id(text_data if text_data is not None else bytes_data),
            )
            if self.refused >= settings.WS_ABUSE_CLOSE_AFTER:
                await self._close(CLOSE_RATE_LIMIT)
            return
        self.tokens -= 1
        raw = text_data
        try:
            if raw is None:
                # A binary frame: its text as json.loads reads bytes (UTF-8, -16 or -32, a
                # surrogate let through), so the checks below see what the decoder saw.
                raw = bytes_data.decode(json.detect_encoding(bytes_data), "surrogatepass")
            message = json.loads(raw, **STRICT_JSON)
            refuse_deep_nesting(raw, message)
        except (ValueError, TypeError, RecursionError) as exc:  # RecursionError: too deep
            if isinstance(exc, JsonRefused):
                why = str(exc)
            elif isinstance(exc, RecursionError):
                why = NESTING_MESSAGE
            else:
                why = "a message is one JSON object"
            self.error("MalformedRequest", why, **_op_and_id(raw))
            return
        if not isinstance(message, dict):
            self.error("MalformedRequest", "a message is one JSON object")
            return
        op = message.get("op")
        extra = _answer_ids(message)
        if holds_nul(raw, message):
            # No field accepts one, and PostgreSQL refuses it in text (a lookup would fail).
            self.error("MalformedRequest", "a message holds a NUL character (\\u0000)", **extra)
            return
        # Unescaped in a binary frame's UTF-8 bytes: every string of one is looked at.
        if holds_lone_surrogate(raw if text_data is not None else None, message):
            self.error("MalformedRequest", LONE_SURROGATE_MESSAGE, **extra)
            return
        handler = (
            {
                "subscribe": self.op_subscribe,
                "unsubscribe": self.op_unsubscribe,
                "login": self.op_login,
                "order.place": self.op_order_place,
                "order.cancel": self.op_order_cancel,
                "order.amend": self.op_order_amend,
                "order.cancel_all": self.op_order_cancel_all,
                "ping": self.op_ping,
                "pong": self.op_pong,
            }.get(op)
            if isinstance(op, str)
            else None
        )
        if handler is None:
            self.error("UnknownOp", f"unknown op {echoed(op)}", **extra)
            return
        try:
            await handler(message, extra)
        except Exception as exc:
            if database_unavailable(exc):
                # As REST answers it (503): the client may retry; "malformed" told it not to.
                self.error(
                    "ServiceUnavailable",
                    "the exchange's database is out of reach for a moment: retry shortly",
                    **extra,
                )
                return
            logger.exception("websocket op failed", extra={"op": op})
            self.error("MalformedRequest", "the request could not be handled", **extra)

    async def op_ping(self, message: dict, extra: dict) -> None:
        self.push({"type": "pong", **extra})

    async def op_pong(self, message: dict, extra: dict) -> None:
        pass  # last_seen is already updated

    def _channels_of(self, message: dict, extra: dict) -> list[str] | None:
        channels = message.get("channels")
        if (
            not isinstance(channels, list)
            or not channels
            or not all(isinstance(c, str) for c in channels)
        ):
            # Empty too: each channel is answered on its own, so an empty list had no answer.
            self.error("MalformedRequest", "channels must be a non-empty list of strings", **extra)
            return None
        if len(channels) > MAX_CHANNELS_PER_MESSAGE:
            # One message of 4,000 names cost 4,000 answers (and as many symbol lookups).
            self.error(
                "InvalidParameter",
                f"channels: at most {MAX_CHANNELS_PER_MESSAGE} in one message",
                **extra,
            )
            return None
        # Each name past the first counts as a message of its own against the rate limit: an
        # unknown symbol is a database lookup, whatever message it comes in.
        self.tokens -= len(channels) - 1
        return channels

    def _refused_unknown_fields(self, message: dict, accepted: tuple[str, ...], extra) -> bool:
        """Refuse (UnexpectedParameter) an op with a field it does not read, as REST refuses a
        body's: a misspelt `depth` ("depht") had been ignored, the book sent at 50 levels."""
        from exchange.serializers import refuse_unknown_names

        try:
            refuse_unknown_names(message, ("op", "id", *accepted))
        except ApiError as refused:
            self.error(refused.error, refused.message, **extra, field=refused.field)
            return True
        return False

    async def op_subscribe(self, message: dict, extra: dict) -> None:
        if self._refused_unknown_fields(message, ("channels", "depth"), extra):
            return
        channels = self._channels_of(message, extra)
        if channels is None:
            return
        depth = message.get("depth", SNAPSHOT_DEPTH)
        if not isinstance(depth, int) or isinstance(depth, bool) or not 10 <= depth <= 50:
            self.error("InvalidParameter", "depth must be an integer from 10 to 50", **extra)
            return
        for channel in channels:
            await self._subscribe_one(channel, depth, extra)

    async def _subscribe_one(self, channel: str, depth: int, extra: dict) -> None:
        kind, symbol = channel_symbol(channel)
        refuse = {**extra, "channel": channel}
        if not (
            (kind in PUBLIC_KINDS and symbol) or (channel in PLAIN_CHANNELS and symbol is None)
        ):
            self.error("UnknownChannel", f"unknown channel {echoed(channel)}", **refuse)
            return
        if channel in self.sub.channels:
            if kind == "book" and self.sub.depths.get(symbol) != depth:
                # A new depth for a book already watched: acknowledged with it, and a fresh
                # snapshot at it (the view had silently stayed at the first depth), with the
                # status frame a new subscription gets behind it when not trading (a client
                # that starts over from a snapshot had lost the halt).
                listed = await self._listed_state(symbol)
                self.sub.depths[symbol] = depth
                self.push({"type": "subscribed", **refuse, "depth": depth})
                hub.snapshot_again(self.sub, symbol)
                hub.status_tell(self.sub, channel, listed)
                return
            ack = {"type": "subscribed", **refuse}
            if kind == "book":
                ack["depth"] = depth  # as every book acknowledgement
            self.push(ack)
            return
        if len(self.sub.channels) >= settings.WS_MAX_SUBSCRIPTIONS:
            self.error(
                "TooManySubscriptions",
                f"at most {settings.WS_MAX_SUBSCRIPTIONS} subscriptions per connection",
                **refuse,
            )
            return
        if kind == "orders" and self.user is None:
            self.error(
                "NotAuthenticated", "log in (session or login op) to see your orders", **refuse
            )
            return
        if kind == "orders" and not self._key_allows("read"):
            self.error(
                "ApiKeyPermissionMissing", "this API key lacks the 'read' permission", **refuse
            )
            self._record_denied("read", "subscribe")
            return
        if (symbol is not None or kind == "orders") and not await hub.listening(FEED_WAIT_SECONDS):
            self.error(
                "ServiceUnavailable",
                "market data is out of reach for a moment: subscribe again shortly",
                **refuse,
            )
            return
        if symbol is not None:
            lookup = database_sync_to_async(_symbol_shard, thread_sensitive=False)
            if not await hub.symbol_exists(symbol, lookup):
                self.error("UnknownSymbol", f"unknown symbol {echoed(symbol)}", **refuse)
                return
            if kind == "book":
                self.sub.depths[symbol] = depth
            listed = ("trading", "", True)
            if kind in ("book", "ticker"):
                listed = await self._listed_state(symbol)
            try:
                mirror = await hub.mirror(symbol)
            except (redis.RedisError, OSError):
                self.error(
                    "ServiceUnavailable",
                    "market data is out of reach for a moment: subscribe again shortly",
                    **refuse,
                )
                return
            if (
                kind in ("book", "ticker")
                and mirror.without_snapshot
                and await self._book_snapshot_lost(symbol)
            ):
                # Not an empty book at seq 0, as GET /orderbook answers 503 for it.
                self.error(
                    "ServiceUnavailable",
                    "the order book is being restored for a moment: subscribe again shortly",
                    **refuse,
                )
                return
            if self.closing or len(self.sub.channels) >= settings.WS_MAX_SUBSCRIPTIONS:
                return
        ack = {"type": "subscribed", **refuse}
        if kind == "book":
            ack["depth"] = depth
        self.push(ack)
        hub.add(self.sub, channel)  # queues the snapshot right behind the ack
        if symbol is not None and kind in ("book", "ticker"):
            hub.status_tell(self.sub, channel, listed)

    @staticmethod
    async def _book_snapshot_lost(symbol: str) -> bool:
        """Whether a book Redis holds no snapshot of has changed since it was listed: Redis
        lost its snapshot (a wipe, a restart without its data) and the worker has not written
        it again yet. The database out of reach reads as no (the book is shown empty)."""
        try:
            return await database_sync_to_async(book_has_changed, thread_sensitive=False)(symbol)
        except Exception as exc:
            if not database_unavailable(exc):
                raise
            return False

    @staticmethod
    async def _listed_state(symbol: str) -> tuple[str, str, bool]:
        """The symbol's (status, reason, session open) as staff last set them, for a status
        frame behind a book's or ticker's first frame when it is not trading. A symbol deleted
        meanwhile, or the database out of reach, reads as trading: the market data (from
        Redis) still flows."""
        try:
            states = await database_sync_to_async(
                instruments_trading_state, thread_sensitive=False
            )([symbol])
        except Exception as exc:
            if not database_unavailable(exc):
                raise
            states = {}
        return states.get(symbol, ("trading", "", True))

    async def op_unsubscribe(self, message: dict, extra: dict) -> None:
        if self._refused_unknown_fields(message, ("channels",), extra):
            return
        channels = self._channels_of(message, extra)
        if channels is None:
            return
        for channel in channels:
            if channel not in self.sub.channels:
                self.error(
                    "NotSubscribed",
                    f"not subscribed to {echoed(channel)}",
                    **extra,
                    channel=channel,
                )
                continue
            hub.remove(self.sub, channel)
            self.push({"type": "unsubscribed", **extra, "channel": channel})

    def _key_allows(self, permission: str) -> bool:
        return self.key_credentials is None or self.key_credentials.allows(permission)

    def _record_denied(self, permission: str, op: str) -> None:
        """Audit an op the socket's API key may not make, as REST audits such a request
        (auth.api_key_denied, the key's owner the actor; `method` names the op). On a view
        thread, not a task of this connection: a client that hangs up at once does not cancel
        the record."""
        credentials = self.key_credentials
        view_executor().submit(
            _denied_record,
            reason="missing_permission",
            api_key=credentials.key,
            credentials=credentials,
            request=SocketRequest(self.scope),
            method=op,
            path="/ws/v1",
            permission=permission,
            user=self.user,
        )

    async def op_login(self, message: dict, extra: dict) -> None:
        from accounts.signing import SignatureRejected

        if not message.get("api_key"):
            self.error(
                "AuthenticationFailed",
                "login takes api_key, timestamp and signature (docs/websocket.md)",
                **extra,
            )
            return
        if self._refused_unknown_fields(
            message, ("api_key", "timestamp", "signature", "recv_window"), extra
        ):
            return
        refused = _login_fields_refusal(message)
        if refused is not None:
            self.error(*refused, **extra)
            return
        request = SocketRequest(self.scope)
        login = database_sync_to_async(_api_key_login, thread_sensitive=False)
        try:
            user, credentials = await login(message, request, time.time_ns() // 1_000_000)
        except SignatureRejected as rejected:
            self.error(rejected.error, rejected.message, **extra)
            return
        self.key_credentials = credentials
        subscribed = "orders" in self.sub.channels
        # A key without `read` may not see the channel: a subscription made under an earlier
        # login ended with this one (it had kept the frames coming, which subscribing under
        # this key is refused).
        dropped = subscribed and not self._key_allows("read")
        if subscribed and (dropped or self.sub.user_id != user.pk):
            hub.remove(self.sub, "orders")
        self.user = user
        self.sub.user_id = user.pk
        if subscribed and not dropped and "orders" not in self.sub.channels:
            hub.add(self.sub, "orders")
        self.push(
            {
                "type": "login",
                **extra,
                "user_id": user.pk,
                "username": user.username,
                "permissions": sorted(credentials.permissions),
            }
        )
        if dropped:
            self.error(
                "ApiKeyPermissionMissing",
                "this API key lacks the 'read' permission: unsubscribed from orders",
                **extra,
                channel="orders",
            )
            self.push({"type": "unsubscribed", **extra, "channel": "orders"})

    async def op_order_place(self, message: dict, extra: dict) -> None:
        self._spawn_in_turn(_order_place, message, extra, change=False)

    async def op_order_cancel(self, message: dict, extra: dict) -> None:
        self._spawn_in_turn(_order_cancel, message, extra)

    async def op_order_amend(self, message: dict, extra: dict) -> None:
        self._spawn_in_turn(_order_amend, message, extra)

    async def op_order_cancel_all(self, message: dict, extra: dict) -> None:
        self._spawn_in_turn(_orders_cancel_all, message, extra, weights=CANCEL_ALL_WEIGHTS)

    def _spawn_in_turn(
        self, service, message: dict, extra: dict, *, change: bool = True, **options
    ) -> None:
        """Spawn an order op that is stored only after the ops it must follow: the ops of a
        socket run side by side, and a cancel sent right behind its place overtook it (404, and
        the order rested), a cancel sent behind an amend overtook the amend. An op that changes
        orders follows every earlier op of the socket; a place follows the earlier changes only
        (places are independent, and are stored together in one batch)."""
        body = {k: v for k, v in message.items() if k not in ("op", "id")}
        self.places_in_flight = [e for e in self.places_in_flight if not e.is_set()]
        self.changes_in_flight = [e for e in self.changes_in_flight if not e.is_set()]
        earlier = (*self.changes_in_flight, *(self.places_in_flight if change else ()))
        stored = threading.Event()
        (self.changes_in_flight if change else self.places_in_flight).append(stored)
        call = functools.partial(service, earlier=earlier, stored=stored)
        if not self._spawn(call, body, extra, settled=stored, **options):
            stored.set()

    def _spawn(
        self,
        service,
        body: dict,
        extra: dict,
        *,
        weights: dict[str, int] = ORDER_OP_WEIGHTS,
        settled: threading.Event | None = None,
    ) -> bool:
        """Run an order op in a worker thread; its answer is queued when it completes (other
        messages are handled meanwhile). False when it was refused without running. `settled`
        is set once the op is over however it went (the ops behind it wait for it)."""
        if self.user is None:
            self.push(
                {
                    "type": "response",
                    **extra,
                    "status": 401,
                    "error": {
                        "error": "NotAuthenticated",
                        "code": WS_ERRORS["NotAuthenticated"],
                        "message": "log in (session or login op) to trade",
                    },
                }
            )
            return False
        if not self._key_allows("trade"):
            self.push(
                {
                    "type": "response",
                    **extra,
                    "status": 403,
                    "error": {
                        "error": "ApiKeyPermissionMissing",
                        "code": WS_ERRORS["ApiKeyPermissionMissing"],
                        "message": "this API key lacks the 'trade' permission",
                    },
                }
            )
            self._record_denied("trade", extra.get("op", ""))
            return False
        user, credentials, request = self.user, self.key_credentials, SocketRequest(self.scope)
        request.api_key_id = credentials.id if credentials is not None else None
        seen, session_key = self.sessions_seen, self.session_key

        def limited_service(user, body, request):
            with redis_read_ahead(_op_read_ahead_keys(credentials, body)):
                return checked_service(user, body, request)

        def checked_service(user, body, request):
            # A key revoked, a session logged out or a user deactivated after the login: the
            # next order op is refused like the next REST request (the socket then closes).
            if credentials is not None:
                if not _key_still_valid(credentials):
                    return 401, KEY_REVOKED_ANSWER
            elif not _web_session_still_valid(user.pk, session_key, seen)[0]:
                return 401, SESSION_ENDED_ANSWER
            refused = _rate_limited(user, credentials, weights)
            if refused is not None:
                return 429, refused
            return service(user, body, request)

        async def run() -> None:
            # On the API view threads: the loop's default pool has a handful of threads, and
            # each call waits (without CPU) for the matching engine's answer.
            call = database_sync_to_async(
                limited_service, thread_sensitive=False, executor=view_executor()
            )
            try:
                code, body_out = await call(user, body, request)
            except Exception as exc:
                if database_unavailable(exc):
                    logger.warning(  # an outage the client retries through, as REST logs it
                        "websocket order op failed: database out of reach",
                        extra={"why": str(exc).strip()[:200]},
                    )
                    code, body_out = 503, SERVICE_UNAVAILABLE_BODY
                else:
                    logger.exception("websocket order op failed")
                    code, body_out = 500, INTERNAL_ERROR_BODY
            finally:
                # An op refused before it ran (rate limit, a revoked key) had never set it: every
                # later cancel on the socket waited its 5 s for it, for good.
                if settled is not None:
                    settled.set()
            if self.closing:
                return  # the socket is gone (see disconnect): no one to answer
            answer = {"type": "response", **extra, "status": code}
            answer["data" if code < 400 else "error"] = body_out
            self.push(answer)
            if (
                body_out is KEY_REVOKED_ANSWER or body_out is SESSION_ENDED_ANSWER
            ) and self.key_credentials is credentials:  # not since replaced by a new login
                await self._close(CLOSE_LOGIN_REVOKED)

        task = asyncio.get_running_loop().create_task(run())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return True

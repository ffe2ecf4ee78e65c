"""HMAC-SHA256 request signing: what a client signs and how the server checks it.

Framework-free on purpose (no Django, no database, no clock): clients (exchange/wsclient.py,
bench/) sign with it, and the server's check takes the key lookup and the current time as
arguments, so tests choose the instant. The spec is in README.md ("API keys and signing"):

    payload   = stamp + METHOD + path + ("?" + query when the query is not empty) + body
    stamp     = timestamp, or timestamp + "," + recv_window when a receive window is sent
    signature = hex(HMAC-SHA256(secret, payload))

`timestamp` is the X-API-TIMESTAMP header as sent (milliseconds since the epoch), `recv_window`
the X-API-RECV-WINDOW header as sent, `path` the path as sent on the request line
(percent-encoding included), `query` the raw query string, `body` the raw body bytes. A request
is refused when its timestamp is older than the receive window (default 5000 ms, at most 60000)
or more than 1000 ms ahead. GET, HEAD and DELETE requests carry no body: the payload does not
mark where the path and query end and a body begins, so a GET's query moved into its body
signed the same (its filters dropped), and a DELETE of order 30 replayed as a DELETE of order 3
with the body `0` cancelled order 3.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

RECV_WINDOW_DEFAULT_MS = 5_000
RECV_WINDOW_MAX_MS = 60_000
FUTURE_TOLERANCE_MS = 1_000
# What a WebSocket login signs in place of a request line (docs/websocket.md).
WS_LOGIN_METHOD = "GET"
WS_LOGIN_PATH = "/ws/v1"

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


# Methods whose requests carry no body (see the module docstring).
BODILESS_METHODS = frozenset({"GET", "HEAD", "DELETE"})


def signature_payload(
    *,
    timestamp: str,
    method: str,
    path: str,
    query: str = "",
    body: bytes = b"",
    recv_window: str | None = None,
) -> bytes:
    """The bytes a request's signature covers. A receive window, when sent, is signed with the
    timestamp: unsigned, anyone replaying a captured request could stretch its life from 5 s to
    60 s by adding one."""
    stamp = timestamp if recv_window is None else f"{timestamp},{recv_window}"
    head = f"{stamp}{method.upper()}{path}"
    if query:
        head += f"?{query}"
    return head.encode() + body


def sign(
    *,
    secret: str,
    timestamp: str,
    method: str,
    path: str,
    query: str = "",
    body: bytes = b"",
    recv_window: str | None = None,
) -> str:
    """The hex HMAC-SHA256 signature of a request."""
    payload = signature_payload(
        timestamp=timestamp,
        method=method,
        path=path,
        query=query,
        body=body,
        recv_window=recv_window,
    )
    return hmac.new(secret.encode(), payload, hashlib.sha256).hexdigest()


def ws_login_message(
    *, api_key: str, secret: str, timestamp_ms: int, recv_window_ms: int | None = None
) -> dict:
    """The WebSocket `login` op for an API key, signed for `timestamp_ms` (and the receive
    window, when one is given)."""
    timestamp = str(timestamp_ms)
    window = None if recv_window_ms is None else str(recv_window_ms)
    signature = sign(
        secret=secret,
        timestamp=timestamp,
        method=WS_LOGIN_METHOD,
        path=WS_LOGIN_PATH,
        recv_window=window,
    )
    message = {"op": "login", "api_key": api_key, "timestamp": timestamp, "signature": signature}
    if recv_window_ms is not None:
        message["recv_window"] = recv_window_ms
    return message


def ip_networks(entries: Iterable[str]) -> tuple[IpNetwork, ...]:
    """Parse IPs and CIDRs ("203.0.113.7", "10.0.0.0/8"); ValueError names a bad entry."""
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{entry!r} is not an IP address or CIDR network") from None
    return tuple(networks)


@dataclass(frozen=True, slots=True)
class KeyCredentials:
    """What the server knows about a key when it checks a signature."""

    id: int
    key: str
    user_id: int
    secret: str
    permissions: frozenset[str]
    ip_allowlist: tuple[IpNetwork, ...] = ()
    revoked: bool = False
    user_active: bool = True
    # When the key was last marked used (an aware datetime), so marking it costs no query
    # while it is fresh.
    last_used_at: object = None

    def allows(self, permission: str) -> bool:
        return permission in self.permissions


# What a client calls each part of a signed request, in the check's messages: the REST headers,
# or the socket login's fields.
HEADER_NAMES = MappingProxyType(
    {
        "api_key": "X-API-KEY",
        "timestamp": "X-API-TIMESTAMP",
        "signature": "X-API-SIGNATURE",
        "recv_window": "X-API-RECV-WINDOW",
    }
)
WS_LOGIN_FIELD_NAMES = MappingProxyType({name: name for name in HEADER_NAMES})


@dataclass(frozen=True, slots=True)
class SignedRequest:
    """A request as the signature check sees it (header values as sent, None when absent);
    `names` are the client's names of its parts (HEADER_NAMES or WS_LOGIN_FIELD_NAMES)."""

    api_key: str | None
    timestamp: str | None
    signature: str | None
    method: str
    path: str
    query: str = ""
    body: bytes = b""
    recv_window: str | None = None
    client_ip: str | None = None
    names: Mapping[str, str] = field(default_factory=lambda: HEADER_NAMES)


class SignatureRejected(Exception):
    """A refused signed request: the API error (name, HTTP status) and a stable reason."""

    def __init__(
        self,
        reason: str,
        error: str,
        message: str,
        *,
        http_status: int = 401,
        credentials: KeyCredentials | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.error = error
        self.message = message
        self.http_status = http_status
        self.credentials = credentials


def _whole_number(value: str | None) -> int | None:
    if value is None:
        return None
    value = value.strip()
    return int(value) if value.isascii() and value.isdigit() and len(value) <= 16 else None


def signature_verify(
    *,
    signed: SignedRequest,
    lookup: Callable[[str], KeyCredentials | None],
    now_ms: int,
) -> KeyCredentials:
    """Check a signed request at the instant `now_ms`; return the key or raise
    SignatureRejected. The window is checked before the key is looked up (a stale request
    costs no lookup); the digest is compared in constant time; the IP allow-list is checked
    only for a correct signature (a wrong one learns nothing about the key)."""
    names = signed.names
    if not signed.api_key or not signed.timestamp or not signed.signature:
        missing = [
            names[part]
            for part, value in (
                ("api_key", signed.api_key),
                ("timestamp", signed.timestamp),
                ("signature", signed.signature),
            )
            if not value
        ]
        raise SignatureRejected(
            "missing_header", "MissingAuthHeader", f"missing {', '.join(missing)}"
        )
    if signed.body and signed.method.upper() in BODILESS_METHODS:
        raise SignatureRejected(
            "body_not_allowed",
            "MalformedRequest",
            f"a signed {signed.method.upper()} request carries no body (send its parameters in "
            "the query string)",
            http_status=400,
        )
    timestamp = _whole_number(signed.timestamp)
    if timestamp is None:
        raise SignatureRejected(
            "bad_timestamp",
            "InvalidTimestamp",
            f"{names['timestamp']} must be milliseconds since epoch",
        )
    recv_window = RECV_WINDOW_DEFAULT_MS
    if signed.recv_window is not None:
        recv_window = _whole_number(signed.recv_window)
        if recv_window is None or not 1 <= recv_window <= RECV_WINDOW_MAX_MS:
            raise SignatureRejected(
                "bad_recv_window",
                "InvalidRecvWindow",
                f"{names['recv_window']} must be whole milliseconds from 1 to {RECV_WINDOW_MAX_MS}",
                http_status=400,
            )
    if now_ms - timestamp > recv_window:
        raise SignatureRejected(
            "stale_timestamp",
            "TimestampOutsideRecvWindow",
            f"timestamp {timestamp} is {now_ms - timestamp} ms old, outside the receive window "
            f"of {recv_window} ms (server time {now_ms}; GET /api/v1/time)",
        )
    if timestamp - now_ms > FUTURE_TOLERANCE_MS:
        raise SignatureRejected(
            "future_timestamp",
            "TimestampOutsideRecvWindow",
            f"timestamp {timestamp} is {timestamp - now_ms} ms ahead of the server "
            f"(at most {FUTURE_TOLERANCE_MS} ms; server time {now_ms}; GET /api/v1/time)",
        )
    credentials = lookup(signed.api_key)
    if credentials is None:
        raise SignatureRejected("unknown_key", "InvalidApiKey", "unknown or revoked API key")
    if credentials.revoked or not credentials.user_active:
        raise SignatureRejected(
            "revoked_key" if credentials.revoked else "inactive_user",
            "InvalidApiKey",
            "unknown or revoked API key",
            credentials=credentials,
        )
    expected = sign(
        secret=credentials.secret,
        timestamp=signed.timestamp,
        method=signed.method,
        path=signed.path,
        query=signed.query,
        body=signed.body,
        recv_window=signed.recv_window,
    )
    given = signed.signature.strip().lower().encode("utf-8", "replace")
    if not hmac.compare_digest(expected.encode(), given):
        raise SignatureRejected(
            "bad_signature",
            "InvalidSignature",
            "signature does not match (hex HMAC-SHA256 of timestamp, + ',' + the receive window "
            "when one is sent, + METHOD + path + '?' + query when there is one + body)",
            credentials=credentials,
        )
    if credentials.ip_allowlist and not _ip_allowed(signed.client_ip, credentials.ip_allowlist):
        raise SignatureRejected(
            "ip_not_allowed",
            "IpNotAllowed",
            f"this API key is not allowed from {signed.client_ip}",
            http_status=403,
            credentials=credentials,
        )
    return credentials


def _ip_allowed(client_ip: str | None, allowlist: tuple[IpNetwork, ...]) -> bool:
    if not client_ip:
        return False
    try:
        address = ipaddress.ip_address(client_ip)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address.version == net.version and address in net for net in allowlist)

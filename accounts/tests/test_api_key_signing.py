"""The signature check at chosen instants: every way a signed request is accepted or refused.

Pure: no database, no clock. The lookup is a dict of keys; `NOW` is the server's instant.
"""

import dataclasses
import ipaddress

import pytest

from accounts.signing import (
    KeyCredentials,
    SignatureRejected,
    SignedRequest,
    sign,
    signature_payload,
    signature_verify,
    ws_login_message,
)

NOW = 1_795_000_000_000  # ms since the epoch: the server's instant in every test
SECRET = "s3cret-of-alice"
ALICE = KeyCredentials(
    id=1,
    key="alice-key",
    user_id=10,
    secret=SECRET,
    permissions=frozenset({"read", "trade"}),
)
BOB = KeyCredentials(
    id=2, key="bob-key", user_id=20, secret="s3cret-of-bob", permissions=frozenset({"read"})
)
KEYS = {k.key: k for k in (ALICE, BOB)}


def signed_request(
    *,
    key: KeyCredentials = ALICE,
    secret: str | None = None,
    timestamp: int = NOW,
    method: str = "POST",
    path: str = "/api/v1/orders",
    query: str = "symbol=AAPL",
    body: bytes = b'{"symbol":"AAPL","side":"buy"}',
    **fields,
) -> SignedRequest:
    """A request signed correctly (with `secret`, default the key's own) at `timestamp`, and
    its receive window when `fields` has one."""
    signature = sign(
        secret=secret or key.secret,
        timestamp=str(timestamp),
        method=method,
        path=path,
        query=query,
        body=body,
        recv_window=fields.get("recv_window"),
    )
    values = dict(
        api_key=key.key,
        timestamp=str(timestamp),
        signature=signature,
        method=method,
        path=path,
        query=query,
        body=body,
        client_ip="198.51.100.7",
    )
    values.update(fields)
    return SignedRequest(**values)


def verify(signed: SignedRequest, *, now_ms: int = NOW, keys: dict = KEYS) -> KeyCredentials:
    return signature_verify(signed=signed, lookup=keys.get, now_ms=now_ms)


def refused(signed: SignedRequest, **kwargs) -> SignatureRejected:
    with pytest.raises(SignatureRejected) as caught:
        verify(signed, **kwargs)
    return caught.value


def test_the_signed_string_is_timestamp_method_path_query_and_body():
    payload = signature_payload(
        timestamp="1795000000000", method="post", path="/api/v1/orders", query="a=1", body=b"{}"
    )
    assert payload == b"1795000000000POST/api/v1/orders?a=1{}"
    no_query = signature_payload(timestamp="1", method="GET", path="/api/v1/fills")
    assert no_query == b"1GET/api/v1/fills"


def test_a_receive_window_is_signed_with_the_timestamp():
    # Unsigned, a replayed request could be given a 60 s window by whoever captured it.
    payload = signature_payload(
        timestamp="1795000000000", method="GET", path="/api/v1/fills", recv_window="60000"
    )
    assert payload == b"1795000000000,60000GET/api/v1/fills"
    old = signed_request(timestamp=NOW - 30_000)
    assert refused(old).reason == "stale_timestamp"
    stretched = refused(dataclasses.replace(old, recv_window="60000"))
    assert (stretched.reason, stretched.error) == ("bad_signature", "InvalidSignature")
    assert verify(signed_request(timestamp=NOW - 30_000, recv_window="60000")) == ALICE


def test_a_get_with_a_body_is_refused_since_its_query_could_have_moved_there():
    # `GET /orders?symbol=MSFT` and `GET /orders` with the body `?symbol=MSFT` signed the same:
    # a captured request could be replayed without its filters.
    filtered = signed_request(method="GET", query="symbol=MSFT", body=b"")
    moved = dataclasses.replace(filtered, query="", body=b"?symbol=MSFT")
    rejected = refused(moved)
    assert (rejected.reason, rejected.error, rejected.http_status) == (
        "body_not_allowed", "MalformedRequest", 400
    )  # fmt: skip
    assert verify(filtered) == ALICE


def test_a_delete_with_a_body_is_refused_since_its_path_could_have_moved_there():
    # A signed DELETE of order 30, replayed as a DELETE of order 3 with the body `0`, signed
    # the same and cancelled order 3.
    signed = signed_request(method="DELETE", path="/api/v1/orders/30", query="", body=b"")
    moved = dataclasses.replace(signed, path="/api/v1/orders/3", body=b"0")
    assert refused(moved).reason == "body_not_allowed"
    assert verify(signed) == ALICE


def test_a_correctly_signed_request_is_accepted_and_names_its_key():
    assert verify(signed_request()) == ALICE
    assert verify(signed_request(query="", body=b"", method="GET")) == ALICE


def test_the_signature_is_case_insensitive_hex():
    signed = signed_request()
    assert verify(dataclasses.replace(signed, signature=signed.signature.upper())) == ALICE


@pytest.mark.parametrize(
    "tamper",
    [
        {"body": b'{"symbol":"AAPL","side":"sell"}'},
        {"path": "/api/v1/orders/7"},
        {"query": "symbol=MSFT"},
        {"query": ""},
        {"method": "PATCH"},
        {"timestamp": str(NOW - 1)},
    ],
    ids=["body", "path", "query", "query-removed", "method", "timestamp"],
)
def test_a_tampered_request_is_refused_as_an_invalid_signature(tamper):
    rejected = refused(dataclasses.replace(signed_request(), **tamper))
    assert (rejected.reason, rejected.error, rejected.http_status) == (
        "bad_signature",
        "InvalidSignature",
        401,
    )
    assert rejected.credentials == ALICE


@pytest.mark.parametrize(
    ("age_ms", "recv_window", "accepted"),
    [
        (5_000, None, True),  # the default window's edge
        (5_001, None, False),
        (59_999, "60000", True),
        (60_001, "60000", False),
        (100, "100", True),
        (101, "100", False),
    ],
)
def test_a_stale_timestamp_is_refused_outside_the_receive_window(age_ms, recv_window, accepted):
    signed = signed_request(timestamp=NOW - age_ms, recv_window=recv_window)
    if accepted:
        assert verify(signed) == ALICE
    else:
        rejected = refused(signed)
        assert (rejected.reason, rejected.error, rejected.http_status) == (
            "stale_timestamp",
            "TimestampOutsideRecvWindow",
            401,
        )


@pytest.mark.parametrize(("ahead_ms", "accepted"), [(1_000, True), (1_001, False), (60_000, False)])
def test_a_timestamp_more_than_a_second_ahead_is_refused(ahead_ms, accepted):
    signed = signed_request(timestamp=NOW + ahead_ms, recv_window="60000")
    if accepted:
        assert verify(signed) == ALICE
    else:
        assert refused(signed).reason == "future_timestamp"


def test_the_same_request_is_accepted_at_one_instant_and_refused_at_a_later_one():
    signed = signed_request()
    assert verify(signed, now_ms=NOW + 5_000) == ALICE
    assert refused(signed, now_ms=NOW + 5_001).reason == "stale_timestamp"


@pytest.mark.parametrize("recv_window", ["0", "60001", "-5", "5s", "1e3", ""])
def test_a_receive_window_outside_1_to_60000_ms_is_refused(recv_window):
    rejected = refused(signed_request(recv_window=recv_window))
    assert (rejected.reason, rejected.error, rejected.http_status) == (
        "bad_recv_window",
        "InvalidRecvWindow",
        400,
    )


@pytest.mark.parametrize(
    "timestamp", ["soon", "1795000000000.5", "-1795000000000", "\uff11\uff12\uff13"]
)
def test_a_timestamp_that_is_not_whole_milliseconds_is_refused(timestamp):
    assert refused(signed_request(timestamp=timestamp)).error == "InvalidTimestamp"


@pytest.mark.parametrize("missing", ["api_key", "timestamp", "signature"])
def test_a_missing_header_is_refused(missing):
    rejected = refused(dataclasses.replace(signed_request(), **{missing: None}))
    assert rejected.error == "MissingAuthHeader"


def test_a_stale_request_is_refused_before_its_key_is_looked_up():
    looked_up = []

    def lookup(key):
        looked_up.append(key)
        return KEYS.get(key)

    with pytest.raises(SignatureRejected):
        signature_verify(signed=signed_request(timestamp=NOW - 10_000), lookup=lookup, now_ms=NOW)
    assert looked_up == []


def test_an_unknown_key_is_refused():
    rejected = refused(dataclasses.replace(signed_request(), api_key="nobody"))
    assert (rejected.reason, rejected.error, rejected.credentials) == (
        "unknown_key",
        "InvalidApiKey",
        None,
    )


def test_signing_with_another_keys_secret_is_refused():
    """Bob names Alice's key but can only sign with his own secret."""
    rejected = refused(signed_request(key=ALICE, secret=BOB.secret))
    assert rejected.reason == "bad_signature"


def test_a_revoked_key_is_refused_even_with_a_correct_signature():
    revoked = dataclasses.replace(ALICE, revoked=True)
    rejected = refused(signed_request(key=revoked), keys={revoked.key: revoked})
    assert (rejected.reason, rejected.error, rejected.http_status) == (
        "revoked_key",
        "InvalidApiKey",
        401,
    )


def test_a_key_of_a_deactivated_user_is_refused():
    inactive = dataclasses.replace(ALICE, user_active=False)
    assert refused(signed_request(key=inactive), keys={"alice-key": inactive}).reason == (
        "inactive_user"
    )


def test_the_ip_allow_list_admits_listed_addresses_and_networks_only():
    listed = dataclasses.replace(
        ALICE,
        ip_allowlist=(
            ipaddress.ip_network("203.0.113.0/24"),
            ipaddress.ip_network("2001:db8::/48"),
        ),
    )
    keys = {listed.key: listed}
    for ip in ("203.0.113.9", "2001:db8::1", "::ffff:203.0.113.9"):
        assert verify(signed_request(key=listed, client_ip=ip), keys=keys) == listed
    for ip in ("198.51.100.7", "2001:db9::1", None, "not-an-ip"):
        rejected = refused(signed_request(key=listed, client_ip=ip), keys=keys)
        assert (rejected.reason, rejected.error, rejected.http_status) == (
            "ip_not_allowed",
            "IpNotAllowed",
            403,
        )


def test_a_wrong_signature_from_a_disallowed_ip_learns_only_that_the_signature_is_wrong():
    listed = dataclasses.replace(ALICE, ip_allowlist=(ipaddress.ip_network("203.0.113.0/24"),))
    forged = signed_request(key=listed, secret="guess", client_ip="198.51.100.7")
    assert refused(forged, keys={listed.key: listed}).reason == "bad_signature"


def test_permissions_are_the_keys_own():
    assert ALICE.allows("trade") and ALICE.allows("read") and not ALICE.allows("withdraw")
    assert BOB.allows("read") and not BOB.allows("trade")


def test_the_websocket_login_signs_get_ws_v1_at_its_timestamp():
    message = ws_login_message(api_key=ALICE.key, secret=SECRET, timestamp_ms=NOW)
    assert message["op"] == "login" and message["timestamp"] == str(NOW)
    signed = SignedRequest(
        api_key=message["api_key"],
        timestamp=message["timestamp"],
        signature=message["signature"],
        method="GET",
        path="/ws/v1",
    )
    assert verify(signed) == ALICE
    assert refused(signed, now_ms=NOW + 5_001).reason == "stale_timestamp"

"""Strings in a decoded JSON message that no field can take, found before any handler runs.

Shared by the REST body parser and the WebSocket consumer. JSON text carries both only as
escapes (`\\u0000`, `\\ud800`), so a message whose text holds no such escape is not walked.
The walk is iterative: a message may be nested as deeply as the decoder allows.
"""

import re
from collections.abc import Iterator
from typing import Any

_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE_ESCAPE_BYTES = re.compile(rb"\\u[dD][89a-fA-F]")

LONE_SURROGATE_MESSAGE = (
    "a string holds a lone UTF-16 surrogate (an escape in \\ud800-\\udfff that is not half of "
    "a pair); send text as UTF-8"
)


def _strings(message: Any) -> Iterator[str]:
    """Every string of a decoded JSON value, dict keys included."""
    todo = [message]
    while todo:
        value = todo.pop()
        if isinstance(value, str):
            yield value
        elif isinstance(value, dict):
            todo.extend(value.keys())
            todo.extend(value.values())
        elif isinstance(value, list):
            todo.extend(value)


def holds_nul(raw: str | bytes, message: Any) -> bool:
    """A NUL character in any string (PostgreSQL refuses it in text: a lookup would fail)."""
    if ("\\u0000" if isinstance(raw, str) else b"\\u0000") not in raw:
        return False
    return any("\x00" in text for text in _strings(message))


def holds_lone_surrogate(raw: str | bytes | None, message: Any) -> bool:
    """A UTF-16 surrogate that is not half of a pair (`"\\ud800"`): Python decodes it into a
    string that cannot be encoded as UTF-8, so it could be neither stored, nor looked up, nor
    echoed back in an error. `raw` None: the text is not at hand, every string is checked."""
    if raw is not None:
        pattern = _SURROGATE_ESCAPE if isinstance(raw, str) else _SURROGATE_ESCAPE_BYTES
        if pattern.search(raw) is None:
            return False
    return any(not text.isascii() and _not_utf8(text) for text in _strings(message))


def _not_utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return True
    return False


class JsonRefused(ValueError):
    """Valid to Python's json module, refused here (the message says why)."""


# How deep arrays and objects may nest in a message (no field takes more than a list of lists).
MAX_NESTING = 32
NESTING_MESSAGE = f"arrays and objects may nest at most {MAX_NESTING} deep"


def refuse_deep_nesting(raw: str | bytes, message: Any) -> None:
    """JsonRefused for arrays and objects nested more than MAX_NESTING deep: the decoder reads
    nearly a thousand levels, and an answer repeating such a value (a socket op's `id`) ran out
    of the recursion limit while encoding it."""
    brackets = ("[", "{") if isinstance(raw, str) else (b"[", b"{")
    if sum(raw.count(bracket) for bracket in brackets) <= MAX_NESTING:
        return  # cannot nest deeper than it has brackets
    todo = [(message, 1)]
    while todo:
        value, depth = todo.pop()
        if isinstance(value, dict):
            value = value.values()
        elif not isinstance(value, list):
            continue
        if depth > MAX_NESTING:
            raise JsonRefused(NESTING_MESSAGE)
        todo.extend((child, depth + 1) for child in value)


def unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    """`object_pairs_hook` refusing an object with a key twice (ValueError): json lets the last
    one win, so a body could say one thing to whoever read it and another to the exchange."""
    data = dict(pairs)
    if len(data) != len(pairs):
        seen: set[str] = set()
        twice = next(key for key, _ in pairs if key in seen or seen.add(key))
        raise JsonRefused(f"key {twice!r} appears more than once in an object")
    return data


def refuse_constant(name: str) -> Any:
    """`parse_constant`: NaN, Infinity and -Infinity are not JSON (echoed back, they made
    frames strict parsers refuse)."""
    raise JsonRefused(f"{name} is not JSON")


def finite_float(text: str) -> float:
    """`parse_float` refusing a number too large for a float (1e999 read as infinity)."""
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise JsonRefused(f"the number {text[:20]} is out of range")
    return value


# The keyword arguments of json.loads for whatever a client sends.
STRICT_JSON = {
    "object_pairs_hook": unique_keys,
    "parse_constant": refuse_constant,
    "parse_float": finite_float,
}

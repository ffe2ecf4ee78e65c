"""Matching engine: pure, deterministic Python. Commands (tuples) in, events (tuples) out.

No Django, Redis, Celery, clock or randomness in here: time comes in on every command (`ts`,
stamped by the worker) and all sequences (priority, event, trade, book update) are the engine's
own. Same commands -> same events -> same `state_hash()`. The contract is in API.md.
"""

from .engine import STATE_VERSION, Engine
from .instrument import Instrument, affordable_lots, buy_cost, decimal_places, fee_for
from .protocol import *  # noqa: F403
from .protocol import (
    add_instrument,
    amend,
    cancel,
    expire_due,
    halt,
    limit,
    market,
    market_buy_quote,
    mass_cancel,
    place,
    resume,
    update_instrument,
)

__all__ = [
    "STATE_VERSION",
    "Engine",
    "Instrument",
    "add_instrument",
    "affordable_lots",
    "amend",
    "buy_cost",
    "cancel",
    "decimal_places",
    "expire_due",
    "fee_for",
    "halt",
    "limit",
    "market",
    "market_buy_quote",
    "mass_cancel",
    "place",
    "resume",
    "update_instrument",
]

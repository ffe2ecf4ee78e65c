"""Small driver for engine tests: one instrument, auto-incrementing ts, event filters.

Used by matching/tests/test_engine_*.py and the benchmark; it builds commands with the public
constructors only, so it exercises the same wire format as the worker.
"""

from __future__ import annotations

from . import protocol as p
from .engine import Engine
from .instrument import Instrument

SYM = "X"
BIG_QUOTE = 10**15


class Harness:
    """An engine with one instrument `X` and helpers that build and apply commands."""

    def __init__(self, symbol: str = SYM, **instrument_kw) -> None:
        self.symbol = symbol
        self.engine = Engine([Instrument(symbol, **instrument_kw)])
        self.ts = 0
        self.log: list[tuple] = []

    def apply(self, cmd: tuple) -> list[tuple]:
        """Apply a command, remember its events, return them."""
        events = self.engine.apply(cmd)
        self.log.extend(events)
        return events

    def _ts(self) -> int:
        self.ts += 1
        return self.ts

    def place(self, oid: int, is_buy: bool, qty: int, price: int = 0, user: int = 1, **kw):
        """Place any order (buys get a huge max_quote unless given)."""
        if is_buy:
            kw.setdefault("max_quote", BIG_QUOTE)
        return self.apply(
            p.place(
                ts=self._ts(),
                symbol=self.symbol,
                order_id=oid,
                user_id=user,
                is_buy=is_buy,
                qty=qty,
                price=price,
                **kw,
            )
        )

    def buy(self, oid: int, price: int, qty: int, user: int = 1, **kw) -> list[tuple]:
        """Limit buy."""
        return self.place(oid, True, qty, price, user, **kw)

    def sell(self, oid: int, price: int, qty: int, user: int = 2, **kw) -> list[tuple]:
        """Limit sell (default user 2 so it does not self-trade with `buy`)."""
        return self.place(oid, False, qty, price, user, **kw)

    def market_buy(self, oid: int, qty: int, user: int = 1, **kw) -> list[tuple]:
        """Market buy of qty lots."""
        return self.place(oid, True, qty, 0, user, order_type=p.MARKET, **kw)

    def market_sell(self, oid: int, qty: int, user: int = 2, **kw) -> list[tuple]:
        """Market sell of qty lots."""
        return self.place(oid, False, qty, 0, user, order_type=p.MARKET, **kw)

    def cancel(self, oid: int) -> list[tuple]:
        """Cancel one order."""
        return self.apply(p.cancel(ts=self._ts(), order_id=oid))

    def amend(self, oid: int, **kw) -> list[tuple]:
        """Amend price/qty/max_quote."""
        return self.apply(p.amend(ts=self._ts(), order_id=oid, **kw))

    def expire_due(self, now: int) -> list[tuple]:
        """Expire everything due at or before now."""
        self.ts = max(self.ts, now)
        return self.apply(p.expire_due(now=now))

    # ---- read helpers -------------------------------------------------------------------
    def depth(self, n: int = 10):
        """(bids, asks) of (price, qty, count)."""
        return self.engine.depth(self.symbol, n)

    def l3_ids(self):
        """(bid ids, ask ids) in priority order."""
        bids, asks = self.engine.l3(self.symbol)
        return [r[1] for r in bids], [r[1] for r in asks]


def trades(events) -> list[tuple]:
    """EV_TRADE events."""
    return [e for e in events if e[0] == p.EV_TRADE]


def fills(events) -> list[tuple]:
    """(maker_id, taker_id, price, qty) of every trade."""
    return [(e[8], e[10], e[5], e[6]) for e in events if e[0] == p.EV_TRADE]


def order_events(events, oid: int | None = None) -> list[tuple]:
    """EV_ORDER events (optionally for one order id)."""
    return [e for e in events if e[0] == p.EV_ORDER and (oid is None or e[4] == oid)]


def final(events, oid: int) -> tuple:
    """The last EV_ORDER event of an order: (status, reason, filled, remaining)."""
    e = order_events(events, oid)[-1]
    return e[6], e[7], e[8], e[9]


def rejects(events) -> list[tuple]:
    """(code, reason, detail) of every EV_REJECT."""
    return [(e[7], e[8], e[9]) for e in events if e[0] == p.EV_REJECT]


def stp_events(events) -> list[tuple]:
    """(mode, taker_id, maker_id, qty) of every EV_STP."""
    return [(e[4], e[5], e[6], e[9]) for e in events if e[0] == p.EV_STP]

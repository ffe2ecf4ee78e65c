"""Stateful property test: the engine against the reference model, command by command.

Random sequences of every command type and mode (limit, market by qty and by quote, stops,
icebergs, post-only, all TIFs, all STP modes, amends, cancels, mass cancels, expiry, halts) go
to both `Engine` and `ReferenceModel`. After every step the events, the L3 book, depth and the
read side must be equal, and the engine's own events must keep the invariants checked by
`OrderLedger` (accounting per order, trades at the maker's price, price-time priority, budgets,
STP). At the end of every run the engine's snapshot and bulk load must reproduce its state hash.
Two users (so STP happens), ~10 ticks of prices (so orders cross), small quantities.
"""

from __future__ import annotations

from collections import defaultdict
from fractions import Fraction

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule

from matching.engine import (
    CANCELLED,
    DAY,
    EV_ORDER,
    EV_REJECT,
    EV_STP,
    EV_TRADE,
    EXPIRED,
    FILLED,
    FOK,
    FOK_UNFILLABLE,
    GTC,
    GTD,
    IOC,
    LIMIT,
    MARKET,
    NEW,
    OP_AMEND,
    OP_PLACE,
    PARTIALLY_FILLED,
    POST_ONLY,
    POST_ONLY_ADJUST,
    R_DAY_EXPIRED,
    R_GTD_EXPIRED,
    R_INVALID,
    REASONS,
    REJECT_STATUS_REASON,
    STOP_LIMIT,
    STOP_MARKET,
    STP_DECREMENT_BOTH,
    STP_DEFAULT,
    STP_MODE_NAMES,
    STP_NONE,
    TRIGGERED,
    UNTRIGGERED,
    Engine,
    Instrument,
    add_instrument,
    amend,
    cancel,
    expire_due,
    halt,
    market,
    mass_cancel,
    place,
    resume,
)
from matching.tests.reference_model import ReferenceModel, fee

# K = 1 (notional = price * qty): plain numbers, cancel_resting by default, 5% collar.
PLAIN = Instrument("AAA", tick_size="1", lot_size="0.01", quote_decimals=2)
# K = 3/2 (notional rounds down), a 4% band around the last price, a 2% collar, absolute
# limits, a min notional that refuses 1-lot limit orders at 96 and below, decrement_both default.
BANDED = Instrument(
    "BBB",
    tick_size="0.15",
    lot_size="0.1",
    quote_decimals=2,
    min_notional=145,
    price_min=90,
    price_max=110,
    band_ppm=40_000,
    collar_ppm=20_000,
    stp_default=STP_DECREMENT_BOTH,
)
LATE = Instrument("CCC", tick_size="1", lot_size="1", quote_decimals=0, stp_default=STP_NONE)
INSTRUMENTS = [PLAIN, BANDED]
USERS = (1, 2)


def rarely(one_in: int) -> st.SearchStrategy[bool]:
    """True about once in `one_in` draws (hypothesis favours the first, simplest choice)."""
    return st.sampled_from([False] * (one_in - 1) + [True])


BIG = 10**9
END = (FILLED, CANCELLED, EXPIRED)
OPEN = (NEW, PARTIALLY_FILLED)

# Prices are listed so that hypothesis' favourite (first) choices cross at 100.
PRICE_LIST = [100, 99, 101, 98, 102, 97, 103, 96, 104, 95, 105]
prices = st.sampled_from(PRICE_LIST)
# Bids lean low and asks high so both sides build up, with a wide overlap where they cross.
bid_prices = st.sampled_from([100, 99, 101, 98, 102, 97, 96, 95, 94])
ask_prices = st.sampled_from([100, 101, 99, 102, 98, 103, 104, 105, 106])
qtys = st.integers(1, 6)
makers_ppm = st.sampled_from([0, 0, 1000, 2500, -500, -2000])
takers_ppm = st.sampled_from([0, 1000, 2500, 7000])
stp_modes = st.integers(STP_DEFAULT, STP_DECREMENT_BOTH)


class OrderLedger:
    """Follows the engine's events alone and checks the invariants every order must keep."""

    def __init__(self, instruments: list[Instrument]) -> None:
        self.instruments = {inst.symbol: inst for inst in instruments}
        self.live: dict[int, dict] = {}  # order id -> record of a live (or in-flight) order
        self.event_seq = 0
        self.trade_seq = 0
        self.last_price: dict[str, int] = {}

    def record_for(self, cmd: tuple) -> dict:
        (_, _, symbol, oid, user, is_buy, otype, price, qty, tif, _exp, flags) = cmd[:12]
        return {
            "id": oid,
            "symbol": symbol,
            "user": user,
            "is_buy": is_buy,
            "type": otype,
            "price": price if otype in (LIMIT, STOP_LIMIT) else 0,
            "qty": qty,
            "filled": 0,
            "remaining": qty,
            "tif": tif,
            "flags": flags,
            "max_quote": cmd[14],
            "maker_fee": cmd[15],
            "taker_fee": cmd[16],
            "stp": cmd[17],
            "by_quote": otype == MARKET and is_buy and qty == 0,
            "spent": 0,
            "status": None,
            "decremented": False,
        }

    def apply(self, cmd: tuple, events: list[tuple], l3_before: dict) -> None:
        pending = self.record_for(cmd) if cmd[0] == OP_PLACE else None
        # An amend that was applied: neither refused, nor of an order that expired first in
        # the same command (its expire_at passed by the command's time).
        amended = cmd[0] == OP_AMEND and not any(
            (e[0] == EV_REJECT and e[6] == OP_AMEND)
            or (e[0] == EV_ORDER and e[4] == cmd[2] and e[6] == EXPIRED)
            for e in events
        )
        if amended:
            rec = self.live[cmd[2]]
            if cmd[3] is not None:
                rec["price"] = cmd[3]
            if cmd[4] is not None:
                # The new total replaces the old one, whatever an STP decrement took off.
                rec["remaining"] = cmd[4] - rec["filled"]
                rec["qty"] = cmd[4]
            if cmd[5] is not None and rec["is_buy"]:
                rec["max_quote"] = cmd[5]
        consumed: dict[int, int] = defaultdict(int)  # maker qty traded in this command
        for e in events:
            self.event_seq += 1
            assert e[1] == self.event_seq, f"event seq {e[1]}, expected {self.event_seq}"
            assert e[2] == cmd[1], "every event carries its command's ts"
            # An order expiring first in this command (its expire_at passed by the command's
            # time) may have the id being placed again: its end is not the new order's.
            expiring = e[0] == EV_ORDER and e[6] == EXPIRED
            if pending is not None and pending["id"] in self._order_ids(e) and not expiring:
                if not (e[0] == EV_REJECT and e[6] == OP_PLACE):
                    self.live[pending["id"]] = pending
                pending = None
            if e[0] == EV_ORDER:
                self._order(e)
            elif e[0] == EV_TRADE:
                self._trade(e, l3_before, consumed)
            elif e[0] == EV_STP:
                self._stp(e)
            elif e[0] == EV_REJECT:
                self._reject(e)

    @staticmethod
    def _order_ids(e: tuple) -> tuple:
        if e[0] in (EV_ORDER, EV_REJECT):
            return (e[4],)
        if e[0] == EV_TRADE:
            return (e[8], e[10])
        if e[0] == EV_STP:
            return (e[5], e[6])
        return ()

    def _order(self, e: tuple) -> None:
        (_, _, _, symbol, oid, user, status, reason, filled, remaining, price, spent) = e
        rec = self.live.get(oid)
        assert rec is not None, f"EV_ORDER for order {oid}, which is not live"
        assert (symbol, user) == (rec["symbol"], rec["user"])
        assert filled == rec["filled"], "only trades change filled"
        assert spent == rec["spent"], "quote_spent is the sum of the buyer's trade costs"
        if rec["type"] in (MARKET, STOP_MARKET):
            assert price == 0
        elif rec["flags"] & POST_ONLY_ADJUST and rec["status"] is None:
            rec["price"] = price  # the engine may have repriced it one tick behind the best
        else:
            assert price == rec["price"], "EV_ORDER reports the order's limit price"
        if status in END:
            assert remaining == 0, "an ended order has nothing open"
            del self.live[oid]
            if status == FILLED:
                assert reason is None
                if rec["by_quote"]:
                    assert filled > 0
                else:
                    assert rec["remaining"] == 0, "filled only after the last lot traded"
                    assert rec["decremented"] or filled == rec["qty"]
            else:
                assert reason in REASONS
            if status == EXPIRED:
                assert reason == (R_GTD_EXPIRED if rec["tif"] == GTD else R_DAY_EXPIRED)
            return
        assert reason is None, "live states carry no reason"
        if status in (UNTRIGGERED, TRIGGERED):
            assert filled == 0 and remaining == rec["qty"]
        else:
            assert status in OPEN
            assert (status == NEW) == (filled == 0)
            assert remaining > 0
            assert filled + remaining <= rec["qty"]
            if not rec["decremented"]:
                assert filled + remaining == rec["qty"], "filled + remaining = quantity"
        rec["remaining"] = remaining
        rec["status"] = status

    def _trade(self, e: tuple, l3_before: dict, consumed: dict) -> None:
        (_, _, _, symbol, trade_seq, price, qty, notional, m_id, m_user, t_id, t_user) = e[:12]
        taker_is_buy, m_fee, t_fee, m_status, m_filled, m_rem, t_filled, t_rem = e[12:]
        inst = self.instruments[symbol]
        self.trade_seq += 1
        assert trade_seq == self.trade_seq, "trade seqs are consecutive"
        m, t = self.live.get(m_id), self.live.get(t_id)
        assert m is not None and t is not None, "no trade against an order that is not live"
        assert m["status"] in OPEN, "the maker is a resting order"
        assert t["status"] != UNTRIGGERED
        assert (m["user"], t["user"]) == (m_user, t_user) and m["symbol"] == t["symbol"] == symbol
        assert t["is_buy"] == taker_is_buy and m["is_buy"] != taker_is_buy
        assert qty > 0
        assert price == m["price"], "trades happen at the resting order's price"
        if t["type"] in (LIMIT, STOP_LIMIT):
            assert price <= t["price"] if taker_is_buy else price >= t["price"]
        if m_user == t_user:
            assert (t["stp"] or inst.stp_default) == STP_NONE, "self-trade despite STP"
        assert notional == inst.notional(price, qty)
        assert m_fee == fee(notional, m["maker_fee"]) and t_fee == fee(notional, t["taker_fee"])
        self._check_priority(symbol, m, t, price, l3_before, consumed)
        consumed[m_id] += qty
        # Both sides of the trade move by the same quantity.
        m["filled"] += qty
        m["remaining"] -= qty
        assert (m_filled, m_rem) == (m["filled"], m["remaining"])
        assert m_status == (FILLED if m["remaining"] == 0 else PARTIALLY_FILLED)
        m["status"] = m_status
        t["filled"] += qty
        assert t_filled == t["filled"]
        if t["by_quote"]:
            assert t_rem == 0
        else:
            t["remaining"] -= qty
            assert t_rem == t["remaining"] >= 0
        buyer, buyer_fee = (t, t_fee) if taker_is_buy else (m, m_fee)
        buyer["spent"] += notional + buyer_fee
        assert buyer["spent"] <= buyer["max_quote"], "a buy filled past its max_quote"
        if m["remaining"] == 0:
            del self.live[m_id]
        self.last_price[symbol] = price

    def _check_priority(self, symbol, m, t, price, l3_before, consumed) -> None:
        """No live order that was ahead of the maker before this command is passed over."""
        side = l3_before[symbol][0 if m["is_buy"] else 1]
        m_row = next((r for r in side if r[1] == m["id"]), None)
        m_in_place = m_row is not None and consumed[m["id"]] < m_row[3]
        for r_price, r_id, _u, r_visible, r_seq in side:
            if r_id in (m["id"], t["id"]) or consumed[r_id] >= r_visible:
                continue  # the maker, the taker, or an iceberg that refilled to the back
            rec = self.live.get(r_id)
            if rec is None or rec["status"] not in OPEN:
                continue
            better = r_price > price if m["is_buy"] else r_price < price
            assert not better, f"order {r_id} at a better price was passed over"
            if r_price == price:
                assert m_in_place and m_row[4] < r_seq, f"order {r_id} was ahead in the queue"

    def _stp(self, e: tuple) -> None:
        (_, _, _, symbol, mode_name, t_id, m_id, user, price, qty) = e
        t, m = self.live[t_id], self.live[m_id]
        assert t["user"] == m["user"] == user and t["is_buy"] != m["is_buy"]
        mode = t["stp"] or self.instruments[symbol].stp_default
        assert mode != STP_NONE and mode_name == STP_MODE_NAMES[mode]
        assert price == m["price"] and qty > 0
        if mode == STP_DECREMENT_BOTH:
            t["decremented"] = m["decremented"] = True

    def _reject(self, e: tuple) -> None:
        (_, _, _, _symbol, oid, _user, opcode, code, reason, _detail) = e
        if opcode != OP_PLACE:
            assert reason is None
            return
        assert reason == REJECT_STATUS_REASON.get(code, R_INVALID)
        rec = self.live.get(oid)
        if rec is not None and rec["status"] == TRIGGERED:
            assert code == FOK_UNFILLABLE, "a triggered stop can only be refused for FOK"
            del self.live[oid]


def describe(events: list[tuple]) -> str:
    return "\n".join(f"    {e}" for e in events) or "    (none)"


class EngineAgainstModel(RuleBasedStateMachine):
    """Drives Engine and ReferenceModel with the same commands and compares them."""

    @initialize()
    def start(self) -> None:
        self.engine = Engine(INSTRUMENTS)
        self.model = ReferenceModel(INSTRUMENTS)
        self.ledger = OrderLedger([*INSTRUMENTS, LATE])
        self.engine.drain_level_changes()
        self.ts = 1
        self.next_id = 1
        self.dead_ids: list[int] = []
        self.steps = 0
        self.turn = 0
        self.log: list[tuple] = []  # every command applied, for the replay check
        self.events: list[tuple] = []

    # ---- command generation -------------------------------------------------------------
    def _tick(self, data) -> int:
        self.ts += data.draw(st.integers(0, 2), label="ts step")
        return self.ts

    def _symbol(self, data) -> str:
        """Mostly the plain book, where liquidity builds up fastest; the others less often."""
        symbols = [PLAIN.symbol] * 3 + [BANDED.symbol] * 2 + list(self.model.instruments)[2:]
        return data.draw(st.sampled_from(symbols), label="symbol")

    def _user(self, data) -> int:
        """Users take turns (so most crossings trade), with a self-match every few orders."""
        self.turn += 1 + data.draw(rarely(4), label="same user again")
        return USERS[self.turn % 2]

    def _order_id(self, data) -> int:
        kind = data.draw(st.sampled_from(["new"] * 18 + ["live", "dead"]), label="id kind")
        live = [o["id"] for o in self.model.live_orders()]
        if kind == "live" and live:
            return data.draw(st.sampled_from(live), label="live id")
        if kind == "dead" and self.dead_ids:
            return data.draw(st.sampled_from(self.dead_ids), label="dead id")
        self.next_id += 1
        return self.next_id

    def _common(self, data, is_buy: bool, price: int, qty: int) -> dict:
        """Fees, STP mode and (for buys) a budget, sometimes tight, sometimes invalid."""
        kw = {
            "maker_fee_ppm": data.draw(makers_ppm, label="maker ppm"),
            "taker_fee_ppm": data.draw(takers_ppm, label="taker ppm"),
            "stp": data.draw(stp_modes, label="stp"),
        }
        if data.draw(rarely(40), label="bad fee"):
            kw["taker_fee_ppm"] = -1
        if is_buy:
            budget = data.draw(
                st.sampled_from(["big"] * 5 + ["tight"] * 4 + ["zero"]), label="budget"
            )
            if budget == "big":
                kw["max_quote"] = BIG
            elif budget == "tight":
                full = (price or 105) * max(qty, 1) * 3 // 2
                kw["max_quote"] = data.draw(st.integers(50, full + 40), label="max_quote")
            else:
                kw["max_quote"] = data.draw(st.sampled_from([BIG, 0]), label="maybe zero")
        return kw

    def _expiry(self, data, tif: int) -> int:
        if tif not in (GTD, DAY):
            return 0
        if data.draw(rarely(12), label="already expired"):
            return self.ts  # InvalidExpireAt
        return self.ts + data.draw(st.integers(1, 25), label="expires in")

    @rule(data=st.data())
    def step(self, data) -> None:
        """One command; a single weighted rule, so swarm testing cannot switch orders off."""
        kind = data.draw(
            st.sampled_from(["place"] * 13 + ["amend"] * 3 + ["cancel"] + ["other"] * 3),
            label="command",
        )
        if kind == "place":
            self.place_order(data)
        elif kind == "amend":
            self.amend_order(data)
        elif kind == "cancel":
            self.cancel_order(data)
        else:
            self.housekeeping(data)

    def place_order(self, data) -> None:
        kind = data.draw(
            st.sampled_from(["limit"] * 5 + ["special limit"] * 2 + ["market"] * 2 + ["stop"] * 2),
            label="order kind",
        )
        if kind == "limit":
            self._place_limit(data, special=False)
        elif kind == "special limit":
            self._place_limit(data, special=True)
        elif kind == "market":
            self._place_market(data)
        else:
            self._place_stop(data)

    def _place_limit(self, data, special: bool) -> None:
        ts = self._tick(data)
        is_buy = data.draw(st.booleans(), label="is_buy")
        price = data.draw(bid_prices if is_buy else ask_prices, label="price")
        if special and data.draw(rarely(15), label="bad price"):
            price = data.draw(st.sampled_from([0, 89, 120]), label="bad price")
        qty = data.draw(qtys, label="qty")
        tif = data.draw(st.sampled_from([GTC] * 5 + [IOC, FOK, GTD, DAY]), label="tif")
        flags = display = 0
        if special:
            flags = data.draw(st.sampled_from([0, POST_ONLY, POST_ONLY_ADJUST]), label="flags")
            display = data.draw(st.sampled_from([0, 1, 2, 3]), label="display")
        cmd = place(
            ts=ts,
            symbol=self._symbol(data),
            order_id=self._order_id(data),
            user_id=self._user(data),
            is_buy=is_buy,
            price=price,
            qty=qty,
            tif=tif,
            expire_at=self._expiry(data, tif),
            flags=flags,
            display_qty=display,
            **self._common(data, is_buy, price, qty),
        )
        self._apply(cmd)

    def _place_market(self, data) -> None:
        ts = self._tick(data)
        is_buy = data.draw(st.booleans(), label="is_buy")
        by_quote = is_buy and data.draw(st.booleans(), label="by quote")
        qty = 0 if by_quote else data.draw(qtys, label="qty")
        tif = data.draw(st.sampled_from([GTC, IOC, FOK]), label="tif")
        kw = self._common(data, is_buy, 0, qty)
        if by_quote:
            kw["max_quote"] = data.draw(st.integers(1, 1500), label="quote amount")
        cmd = market(
            ts=ts,
            symbol=self._symbol(data),
            order_id=self._order_id(data),
            user_id=self._user(data),
            is_buy=is_buy,
            qty=qty,
            tif=tif,
            **kw,
        )
        self._apply(cmd)

    def _place_stop(self, data) -> None:
        ts = self._tick(data)
        is_buy = data.draw(st.booleans(), label="is_buy")
        order_type = data.draw(st.sampled_from([STOP_MARKET, STOP_LIMIT]), label="type")
        price = data.draw(prices, label="price") if order_type == STOP_LIMIT else 0
        qty = data.draw(qtys, label="qty")
        tif = data.draw(st.sampled_from([GTC, GTC, IOC, FOK, GTD, DAY]), label="tif")
        display = 0
        if order_type == STOP_LIMIT and tif in (GTC, GTD, DAY):
            display = data.draw(st.sampled_from([0, 0, 2]), label="display")
        cmd = place(
            ts=ts,
            symbol=self._symbol(data),
            order_id=self._order_id(data),
            user_id=self._user(data),
            is_buy=is_buy,
            order_type=order_type,
            price=price,
            qty=qty,
            tif=tif,
            expire_at=self._expiry(data, tif),
            display_qty=display,
            stop_price=data.draw(prices, label="stop price"),
            **self._common(data, is_buy, price, qty),
        )
        self._apply(cmd)

    def cancel_order(self, data) -> None:
        ts = self._tick(data)
        live = [o["id"] for o in self.model.live_orders()]
        if not live and data.draw(st.booleans(), label="place instead"):
            self.place_order(data)  # swarm testing may have switched the place rules off
            return
        if not live or data.draw(rarely(10), label="unknown id"):
            live = [self.next_id + 1000, *self.dead_ids[-2:]]
        self._apply(cancel(ts=ts, order_id=data.draw(st.sampled_from(live), label="id")))

    def amend_order(self, data) -> None:
        ts = self._tick(data)
        live = self.model.live_orders()
        if not live and data.draw(st.booleans(), label="place instead"):
            self.place_order(data)
            return
        if not live:
            self._apply(amend(ts=ts, order_id=self.next_id + 1000, qty=3))
            return
        o = data.draw(st.sampled_from(live), label="order")
        what = data.draw(
            st.sampled_from(["reduce", "increase", "price", "price+qty", "max_quote", "too low"]),
            label="amend",
        )
        if (what, o["remaining"]) == ("reduce", 1) or (what, o["is_buy"]) == ("max_quote", False):
            what = "increase"
        if what == "too low" and o["filled"] == 0:
            what = "price"
        price = qty = max_quote = None
        if what in ("price", "price+qty"):
            others = [p for p in PRICE_LIST if p != o["price"]]
            price = data.draw(st.sampled_from(others), label="new price")
            if data.draw(rarely(10), label="same price"):
                price = o["price"] or None  # not a price change: keeps priority
        if what == "reduce":
            qty = o["filled"] + data.draw(st.integers(1, o["remaining"] - 1), label="new qty")
        elif what in ("increase", "price+qty"):
            qty = o["filled"] + o["remaining"] + data.draw(st.integers(1, 3), label="more")
        elif what == "max_quote":
            # Sometimes below one more lot (the order is then cancelled), never below spent.
            more = data.draw(st.integers(1, 800) | st.just(0), label="max_quote - spent")
            max_quote = o["quote_spent"] + more
        elif what == "too low":
            qty = data.draw(st.integers(1, o["filled"]), label="qty <= filled")
        if o["type"] == STOP_MARKET and price is not None:
            price = None if qty is not None else 100  # a stop-market's price: InvalidPrice
        self._apply(amend(ts=ts, order_id=o["id"], price=price, qty=qty, max_quote=max_quote))

    def housekeeping(self, data) -> None:
        action = data.draw(
            st.sampled_from(["expire"] * 5 + ["mass cancel"] * 2 + ["halt", "add", "add again"]),
            label="housekeeping",
        )
        if action == "expire":
            self.ts += data.draw(st.integers(0, 12), label="time passes")
            self._apply(expire_due(now=self.ts))
            return
        ts = self._tick(data)
        symbol = self._symbol(data)
        if action == "mass cancel":
            user = data.draw(st.sampled_from(USERS), label="user")
            only = data.draw(st.sampled_from([None, symbol]), label="only symbol")
            self._apply(mass_cancel(ts=ts, user_id=user, symbol=only))
        elif action == "halt":
            # Halt, one order or amend that is refused, resume: halts are short.
            self._apply(halt(ts=ts, symbol=symbol))
            if data.draw(st.booleans(), label="amend while halted"):
                self.amend_order(data)
            else:
                self.place_order(data)
            self._apply(resume(ts=self._tick(data), symbol=symbol))
        elif action == "add" and LATE.symbol not in self.model.instruments:
            self._apply(add_instrument(ts=ts, instrument=LATE))
        else:
            self._apply(add_instrument(ts=ts, instrument=self.model.instruments[symbol]))

    # ---- comparison and invariants ------------------------------------------------------
    def _apply(self, cmd: tuple) -> None:
        self.steps += 1
        symbols = list(self.model.instruments)
        l3_before = {s: self.engine.l3(s) for s in symbols}
        depth_before = {s: self.engine.depth(s, 10**6) for s in symbols}
        book_seq_before = {s: self.engine.book_seq(s) for s in symbols}
        live_before = {o["id"] for o in self.model.live_orders()}
        got = self.engine.apply(cmd)
        want = self.model.apply(cmd)
        self.log.append(cmd)
        self.events.extend(got)
        assert got == want, (
            f"events differ for {cmd}\nengine:\n{describe(got)}\nmodel:\n{describe(want)}"
        )
        self.ledger.apply(cmd, got, l3_before)
        changes = self.engine.drain_level_changes()
        for s in self.model.instruments:
            self._compare_book(s, depth_before.get(s), book_seq_before.get(s), changes.get(s), got)
        self._compare_order_records()
        live_after = {o["id"] for o in self.model.live_orders()}
        self.dead_ids = sorted((set(self.dead_ids) | live_before) - live_after)[-20:]
        assert set(self.ledger.live) == live_after, "ledger and model disagree on live orders"
        for oid in live_after:
            assert self.engine.order(oid) is not None, f"live order {oid} not found"
        for oid in self.dead_ids[-3:]:
            assert self.engine.order(oid) is None, f"ended order {oid} still found"

    def _compare_order_records(self) -> None:
        """Hidden state (iceberg reserves, budgets, seqs) of resting orders and stops."""
        model_rows = {}
        for symbol in self.model.instruments:
            for is_buy in (True, False):
                for o in self.model.side(symbol, is_buy):
                    model_rows[o["id"]] = resting_row(o)
        engine_rows = {r[0]: resting_row_of_record(r) for r in self.engine.resting_orders()}
        assert engine_rows == model_rows, (
            f"resting orders differ\nengine {engine_rows}\nmodel  {model_rows}"
        )

    def _compare_book(self, s: str, depth_before, book_seq_before, change, events) -> None:
        eng, model = self.engine, self.model
        l3 = eng.l3(s)
        assert l3 == model.l3(s), f"L3 of {s} differs\nengine {l3}\nmodel  {model.l3(s)}"
        depth = eng.depth(s, 10**6)
        assert depth == model.depth(s), f"depth of {s}: engine {depth}, model {model.depth(s)}"
        assert eng.depth(s, 2) == model.depth(s, 2)
        bid, ask = eng.best_bid(s), eng.best_ask(s)
        assert (bid, ask) == (model.best_bid(s), model.best_ask(s))
        assert bid is None or ask is None or bid < ask, f"book {s} is crossed: {bid} >= {ask}"
        assert eng.spread(s) == (None if bid is None or ask is None else ask - bid)
        assert eng.mid(s) == (None if bid is None or ask is None else Fraction(bid + ask, 2))
        assert eng.last_price(s) == model.last_price(s) == self.ledger.last_price.get(s)
        for side, is_buy in ((l3[0], True), (l3[1], False)):
            keys = [(-r[0] if is_buy else r[0], r[4]) for r in side]
            assert keys == sorted(keys) and len({r[4] for r in side}) == len(side)
            assert all(r[3] > 0 for r in side), "only orders with a visible quantity rest"
            for r in side:
                rec = self.ledger.live[r[1]]
                assert rec["status"] in OPEN and r[3] <= rec["remaining"] and r[0] == rec["price"]
        # book_seq: the seq of the command's last event when a visible level changed (so it
        # only grows); a command that only touched a level (same quantity and count afterwards)
        # may or may not move it.
        if depth_before is None:
            return
        seq_now = eng.book_seq(s)
        assert seq_now == model.book_seq(s) or depth == depth_before
        moved = events[-1][1] if events else None
        if depth != depth_before:
            assert seq_now == moved and seq_now > book_seq_before, f"book_seq {seq_now}"
        else:
            assert seq_now in (book_seq_before, moved), f"book_seq {seq_now}"
        changed = level_diff(depth_before, depth)
        if change is None:
            assert not changed, f"level changes of {s} not reported: {changed}"
            return
        seq, levels = change
        assert seq == eng.book_seq(s)
        now = {(True, p): (q, c) for p, q, c in depth[0]}
        now.update({(False, p): (q, c) for p, q, c in depth[1]})
        for is_buy, price, qty, count in levels:
            assert now.get((is_buy, price), (0, 0)) == (qty, count), "stale level change"
        assert changed <= {(lv[0], lv[1]) for lv in levels}, "a changed level is missing"

    def teardown(self) -> None:
        if not hasattr(self, "engine"):
            return
        eng = self.engine
        expected = eng.state_hash()
        # Determinism: a fresh engine replaying the commands as one batch gets the same.
        replay = Engine(INSTRUMENTS)
        assert replay.apply_batch(self.log) == self.events, "replay gave other events"
        assert replay.state_hash() == expected, "replay gave another state hash"
        restored = Engine.restore(eng.snapshot())
        assert restored.state_hash() == expected, "restore(snapshot()) changed the state hash"
        state = eng.export_state()
        engine_stops = sorted(
            (r[0], r[1], r[2], r[3], r[4], r[5], r[6] + r[7], r[10], r[12], r[14])
            for r in state["stops"]
        )
        stop_fields = ("id", "user", "symbol", "is_buy", "type", "price", "remaining", "seq")
        model_stops = sorted(
            (*(o[f] for f in stop_fields), o["expire_at"], o["stop_price"])
            for o in self.model.stops
        )
        assert engine_stops == model_stops, f"stops: engine {engine_stops}, model {model_stops}"
        loaded = Engine.bulk_load(state)
        assert loaded.state_hash() == expected, "bulk_load(export_state()) changed the hash"
        for s in self.model.instruments:
            assert restored.l3(s) == loaded.l3(s) == eng.l3(s)
        # The copies must also behave the same from here on.
        for i, s in enumerate(self.model.instruments):
            for is_buy in (True, False):
                probe = market(
                    ts=self.ts + 1,
                    symbol=s,
                    order_id=10**6 + 2 * i + is_buy,
                    user_id=3,
                    is_buy=is_buy,
                    qty=4,
                    max_quote=BIG,
                )
                events = eng.apply(probe)
                again, loaded_again = restored.apply(probe), loaded.apply(probe)
                assert again == events == loaded_again, (
                    f"copies differ on {probe}\nengine:\n{describe(events)}\n"
                    f"restored:\n{describe(again)}\nbulk loaded:\n{describe(loaded_again)}"
                )
                want = self.model.apply(probe)
                assert events == want, (
                    f"events differ for {probe}\nengine:\n{describe(events)}\n"
                    f"model:\n{describe(want)}"
                )
        assert restored.state_hash() == loaded.state_hash() == eng.state_hash()


def resting_row(o: dict) -> tuple:
    """What must agree about a resting order of the model."""
    return (
        o["id"],
        o["user"],
        o["symbol"],
        o["is_buy"],
        o["price"],
        o["visible"],
        o["remaining"] - o["visible"],  # iceberg reserve
        o["display"],
        o["filled"],
        o["seq"],
        o["expire_at"],
        o["max_quote"],
        o["quote_spent"],
    )


def resting_row_of_record(r: tuple) -> tuple:
    """The same from an engine order record (API.md's record layout)."""
    (oid, user, symbol, is_buy, _type, price, visible, reserve, display, filled, seq) = r[:11]
    (_tif, expire_at, _flags, _stop, max_quote, spent) = r[11:17]
    max_quote = max_quote if is_buy else 0  # sells ignore it
    return (oid, user, symbol, is_buy, price, visible, reserve, display, filled, seq, expire_at,
            max_quote, spent)  # fmt: skip


def level_diff(before: tuple, after: tuple) -> set[tuple[bool, int]]:
    """(is_buy, price) of every level whose quantity or order count changed."""
    changed = set()
    for index, is_buy in ((0, True), (1, False)):
        old = {p: (q, c) for p, q, c in before[index]}
        new = {p: (q, c) for p, q, c in after[index]}
        changed |= {(is_buy, p) for p in old.keys() | new.keys() if old.get(p) != new.get(p)}
    return changed


TestEngineAgainstModel = EngineAgainstModel.TestCase

# Fewer but much longer runs: deep books, long-lived stops and icebergs, late expiries.
LONG_RUNS = settings(
    max_examples=max(5, settings.default.max_examples // 5),
    stateful_step_count=200,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)


class TestEngineAgainstModelLongRuns(EngineAgainstModel.TestCase):
    settings = LONG_RUNS

"""Reference model of the matching engine (matching/engine/API.md), for the property tests.

Written to be obviously correct, not fast: each book side is a plain list of order dicts that is
re-sorted every time it is read (bids by price descending then priority seq, asks by price
ascending then seq), and a FOK order is tried on a deep copy of the whole model and only run for
real when the copy filled it completely. It takes the same command tuples as `Engine.apply` and
returns the same event tuples.
"""

from __future__ import annotations

import copy

from matching.engine import (
    AMEND_QUANTITY_TOO_LOW,
    BELOW_MIN_NOTIONAL,
    CANCELLED,
    DAY,
    DUPLICATE_INSTRUMENT,
    DUPLICATE_ORDER_ID,
    EV_INSTRUMENT,
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
    INSTRUMENT_HALTED,
    INVALID_COMMAND,
    INVALID_DISPLAY_QUANTITY,
    INVALID_EXPIRE_AT,
    INVALID_FEE,
    INVALID_MAX_QUOTE,
    INVALID_ORDER_TYPE,
    INVALID_PRICE,
    INVALID_QUANTITY,
    INVALID_STP_MODE,
    INVALID_TIME_IN_FORCE,
    IOC,
    LIMIT,
    MARKET,
    NEW,
    OP_ADD_INSTRUMENT,
    OP_AMEND,
    OP_CANCEL,
    OP_EXPIRE_DUE,
    OP_HALT,
    OP_MASS_CANCEL,
    OP_PLACE,
    OP_RESUME,
    PARTIALLY_FILLED,
    POST_ONLY,
    POST_ONLY_ADJUST,
    POST_ONLY_WOULD_MATCH,
    PRICE_OUTSIDE_BAND,
    R_DAY_EXPIRED,
    R_GTD_EXPIRED,
    R_INVALID,
    R_IOC_REMAINDER,
    R_MAX_QUOTE,
    R_NO_LIQUIDITY,
    R_STP,
    R_USER,
    REJECT_STATUS_REASON,
    STOP_LIMIT,
    STOP_MARKET,
    STP_CANCEL_BOTH,
    STP_CANCEL_INCOMING,
    STP_CANCEL_RESTING,
    STP_CANCEL_SMALLEST,
    STP_DECREMENT_BOTH,
    STP_MODE_NAMES,
    STP_NONE,
    TRIGGERED,
    UNKNOWN_INSTRUMENT,
    UNKNOWN_ORDER,
    UNTRIGGERED,
    Instrument,
)

PPM = 1_000_000
END_STATUSES = (FILLED, CANCELLED, EXPIRED)

# Why a taker stopped matching (None: its quantity is used up).
STOP_STP = "stp"
STOP_BUDGET = "max_quote"
STOP_NO_LIQUIDITY = "no_liquidity"
UNLIMITED = float("inf")

# Field names of a PLACE command tuple, in order (API.md).
PLACE_FIELDS = (
    "op",
    "ts",
    "symbol",
    "order_id",
    "user_id",
    "is_buy",
    "order_type",
    "price",
    "qty",
    "tif",
    "expire_at",
    "flags",
    "display",
    "stop_price",
    "max_quote",
    "maker_fee",
    "taker_fee",
    "stp",
)


def is_int(value: object) -> bool:
    """True for a real int (bool is not a quantity or a price)."""
    return isinstance(value, int) and not isinstance(value, bool)


def fee(notional: int, rate_ppm: int) -> int:
    """A charge rounds up, a rebate (negative rate) rounds toward zero."""
    if rate_ppm >= 0:
        return (notional * rate_ppm + PPM - 1) // PPM
    return -((notional * -rate_ppm) // PPM)


def buy_cost(inst: Instrument, price: int, qty: int, rate_ppm: int) -> int:
    """What a buyer pays for qty lots at price: notional plus its fee (minus its rebate)."""
    notional = inst.notional(price, qty)
    return notional + fee(notional, rate_ppm)


def affordable(inst: Instrument, price: int, budget: int, rate_ppm: int, cap: int) -> int:
    """Largest q <= cap whose cost fits in budget, by counting up one lot at a time."""
    q = 0
    while q < cap and buy_cost(inst, price, q + 1, rate_ppm) <= budget:
        q += 1
    return q


class ReferenceModel:
    """The engine's observable behaviour, one plain step at a time."""

    def __init__(self, instruments: list[Instrument]) -> None:
        self.instruments: dict[str, Instrument] = {}  # in add order
        self.books: dict[str, dict] = {}
        self.stops: list[dict] = []  # untriggered stop orders of every symbol
        self.event_seq = 0
        self.trade_seq = 0
        self.events: list[tuple] = []
        self.ts = 0
        for inst in instruments:
            self._add_book(inst)

    # ---- read side ---------------------------------------------------------------------------
    def side(self, symbol: str, is_buy: bool) -> list[dict]:
        """The orders of one side in priority order (the list is sorted in place)."""
        book = self.books[symbol]
        if is_buy:
            book["bids"].sort(key=lambda o: (-o["price"], o["seq"]))
            return book["bids"]
        book["asks"].sort(key=lambda o: (o["price"], o["seq"]))
        return book["asks"]

    def best_bid(self, symbol: str) -> int | None:
        bids = self.side(symbol, True)
        return bids[0]["price"] if bids else None

    def best_ask(self, symbol: str) -> int | None:
        asks = self.side(symbol, False)
        return asks[0]["price"] if asks else None

    def last_price(self, symbol: str) -> int | None:
        return self.books[symbol]["last_price"]

    def book_seq(self, symbol: str) -> int:
        return self.books[symbol]["book_seq"]

    def l3(self, symbol: str) -> tuple[list, list]:
        """(bids, asks) of (price, order_id, user_id, visible_qty, seq) in priority order."""
        return tuple(
            [(o["price"], o["id"], o["user"], o["visible"], o["seq"]) for o in self.side(symbol, b)]
            for b in (True, False)
        )

    def depth(self, symbol: str, n: int = 10**9) -> tuple[list, list]:
        """(bids, asks) of (price, visible_qty, order_count), best first."""
        result = []
        for is_buy in (True, False):
            levels: list[list[int]] = []
            for o in self.side(symbol, is_buy):
                if levels and levels[-1][0] == o["price"]:
                    levels[-1][1] += o["visible"]
                    levels[-1][2] += 1
                else:
                    levels.append([o["price"], o["visible"], 1])
            result.append([tuple(level) for level in levels[:n]])
        return tuple(result)

    def live_orders(self) -> list[dict]:
        """Every resting order and untriggered stop."""
        found = []
        for book in self.books.values():
            found.extend(book["bids"])
            found.extend(book["asks"])
        return found + self.stops

    def find_live(self, order_id: int) -> dict | None:
        for o in self.live_orders():
            if o["id"] == order_id:
                return o
        return None

    # ---- commands ----------------------------------------------------------------------------
    def apply(self, cmd: tuple) -> list[tuple]:
        """Apply one command and return its events. Orders whose expiry is at or before the
        command's time expire first, as an expire_due at that time would, within the command."""
        self.events = []
        self.ts = cmd[1]
        depth_before = {symbol: self.depth(symbol) for symbol in self.books}
        handlers = {
            OP_PLACE: self._place,
            OP_CANCEL: self._cancel,
            OP_AMEND: self._amend,
            OP_MASS_CANCEL: self._mass_cancel,
            OP_EXPIRE_DUE: self._expire_due,
            OP_HALT: self._halt,
            OP_RESUME: self._resume,
            OP_ADD_INSTRUMENT: self._add_instrument,
        }
        handler = handlers.get(cmd[0])
        if handler is None:
            self._reject(None, None, None, cmd[0], INVALID_COMMAND)
        else:
            ts = cmd[1] if len(cmd) > 1 else None
            if cmd[0] != OP_EXPIRE_DUE and is_int(ts):
                self._expire_due((OP_EXPIRE_DUE, ts, ts))
            handler(cmd)
        for symbol, before in depth_before.items():
            if self.depth(symbol) != before:
                # A book's seq is the seq of the last event of the last command that changed it.
                self.books[symbol]["book_seq"] = self.event_seq
        return self.events

    def _add_book(self, inst: Instrument) -> None:
        self.instruments[inst.symbol] = inst
        self.books[inst.symbol] = {
            "bids": [],
            "asks": [],
            "halted": False,
            "book_seq": 0,
            "last_price": None,
            "prints": [],  # trade prices since the stops were last collected
        }

    def _add_instrument(self, cmd: tuple) -> None:
        inst = cmd[2]
        if inst.symbol in self.instruments:
            self._reject(inst.symbol, None, None, OP_ADD_INSTRUMENT, DUPLICATE_INSTRUMENT)
            return
        self._add_book(inst)
        self._emit(EV_INSTRUMENT, inst.symbol, "added")

    def _halt(self, cmd: tuple) -> None:
        symbol = cmd[2]
        if symbol not in self.books:
            self._reject(symbol, None, None, OP_HALT, UNKNOWN_INSTRUMENT)
            return
        self.books[symbol]["halted"] = True
        self._emit(EV_INSTRUMENT, symbol, "halted")

    def _resume(self, cmd: tuple) -> None:
        symbol = cmd[2]
        if symbol not in self.books:
            self._reject(symbol, None, None, OP_RESUME, UNKNOWN_INSTRUMENT)
            return
        self.books[symbol]["halted"] = False
        self._emit(EV_INSTRUMENT, symbol, "resumed")

    def _cancel(self, cmd: tuple) -> None:
        order_id = cmd[2]
        o = self.find_live(order_id)
        if o is None:
            self._reject(None, order_id, None, OP_CANCEL, UNKNOWN_ORDER)
            return
        self._end(o, CANCELLED, R_USER)

    def _mass_cancel(self, cmd: tuple) -> None:
        user_id, only_symbol = cmd[2], cmd[3]
        if only_symbol is not None and only_symbol not in self.books:
            self._reject(only_symbol, None, user_id, OP_MASS_CANCEL, UNKNOWN_INSTRUMENT)
            return
        for symbol in list(self.instruments):
            if only_symbol is not None and symbol != only_symbol:
                continue
            book = self.books[symbol]
            resting = [o for o in book["bids"] + book["asks"] if o["user"] == user_id]
            stops = [o for o in self.stops if o["symbol"] == symbol and o["user"] == user_id]
            resting.sort(key=lambda o: o["seq"])
            stops.sort(key=lambda o: o["seq"])
            for o in resting + stops:
                self._end(o, CANCELLED, R_USER)

    def _expire_due(self, cmd: tuple) -> None:
        now = cmd[2]
        due = [o for o in self.live_orders() if o["expire_at"] and o["expire_at"] <= now]
        due.sort(key=lambda o: (o["expire_at"], o["seq"]))
        for o in due:
            self._end(o, EXPIRED, R_GTD_EXPIRED if o["tif"] == GTD else R_DAY_EXPIRED)

    # ---- place ------------------------------------------------------------------------------
    def _validate_place(self, c: dict) -> str | None:
        """The first failing check of API.md's validation order, or None."""
        inst = self.instruments.get(c["symbol"])
        if inst is None:
            return UNKNOWN_INSTRUMENT
        if self.books[c["symbol"]]["halted"]:
            return INSTRUMENT_HALTED
        if self.find_live(c["order_id"]) is not None:
            return DUPLICATE_ORDER_ID
        otype, tif, flags, display = c["order_type"], c["tif"], c["flags"], c["display"]
        if otype not in (LIMIT, MARKET, STOP_MARKET, STOP_LIMIT):
            return INVALID_ORDER_TYPE
        if flags and otype != LIMIT:
            return INVALID_ORDER_TYPE
        if tif not in (GTC, IOC, FOK, GTD, DAY):
            return INVALID_TIME_IN_FORCE
        if otype == MARKET and tif not in (GTC, IOC, FOK):
            return INVALID_TIME_IN_FORCE
        by_quote = otype == MARKET and c["is_buy"] and c["qty"] == 0
        if by_quote and tif == FOK:
            # Not in API.md (reported): "all of it" is undefined for a buy by quote amount.
            return INVALID_TIME_IN_FORCE
        if flags and tif not in (GTC, GTD, DAY):
            return INVALID_TIME_IN_FORCE
        if c["stp"] not in range(len(STP_MODE_NAMES)):
            return INVALID_STP_MODE
        if not (-PPM < c["maker_fee"] < PPM) or not (0 <= c["taker_fee"] < PPM):
            return INVALID_FEE
        if not by_quote and (not is_int(c["qty"]) or c["qty"] < inst.min_qty):
            return INVALID_QUANTITY
        if not is_int(display) or display < 0:
            return INVALID_DISPLAY_QUANTITY
        if display > 0 and (otype not in (LIMIT, STOP_LIMIT) or tif not in (GTC, GTD, DAY)):
            return INVALID_DISPLAY_QUANTITY
        if otype in (LIMIT, STOP_LIMIT):
            code = self._check_limit_price(c["symbol"], c["price"])
            if code:
                return code
        if otype in (STOP_MARKET, STOP_LIMIT) and (
            not is_int(c["stop_price"]) or c["stop_price"] < 1
        ):
            return INVALID_PRICE
        if otype in (LIMIT, STOP_LIMIT) and inst.notional(c["price"], c["qty"]) < inst.min_notional:
            return BELOW_MIN_NOTIONAL
        if c["is_buy"] and (not is_int(c["max_quote"]) or c["max_quote"] <= 0):
            return INVALID_MAX_QUOTE
        if tif in (GTD, DAY) and (not is_int(c["expire_at"]) or c["expire_at"] <= c["ts"]):
            return INVALID_EXPIRE_AT
        return None

    def _check_limit_price(self, symbol: str, price: object) -> str | None:
        inst = self.instruments[symbol]
        if not is_int(price) or price < 1:
            return INVALID_PRICE
        if price < inst.price_min or price > inst.price_max:
            return PRICE_OUTSIDE_BAND
        last = self.books[symbol]["last_price"]
        if (
            inst.band_ppm > 0
            and last is not None
            and abs(price - last) * PPM > last * inst.band_ppm
        ):
            return PRICE_OUTSIDE_BAND
        return None

    def _place(self, cmd: tuple) -> None:
        c = dict(zip(PLACE_FIELDS, cmd, strict=True))
        code = self._validate_place(c)
        if code:
            self._reject(c["symbol"], c["order_id"], c["user_id"], OP_PLACE, code)
            return
        otype, tif, is_buy = c["order_type"], c["tif"], c["is_buy"]
        is_stop = otype in (STOP_MARKET, STOP_LIMIT)
        o = {
            "id": c["order_id"],
            "user": c["user_id"],
            "symbol": c["symbol"],
            "is_buy": is_buy,
            "type": otype,
            "price": c["price"] if otype in (LIMIT, STOP_LIMIT) else 0,
            "qty": c["qty"],  # total quantity, filled included (an amend changes it)
            "filled": 0,
            "remaining": c["qty"],  # visible + reserve
            "visible": 0,
            "display": c["display"],
            "seq": 0,
            "tif": tif,
            "expire_at": c["expire_at"] if tif in (GTD, DAY) else 0,
            "flags": c["flags"],
            "stop_price": c["stop_price"] if is_stop else 0,
            "max_quote": c["max_quote"] if is_buy else 0,
            "quote_spent": 0,
            "maker_fee": c["maker_fee"],
            "taker_fee": c["taker_fee"],
            "stp": c["stp"],
            "by_quote": otype == MARKET and is_buy and c["qty"] == 0,
        }
        queue: list[dict] = []
        if is_stop:
            o["seq"] = self._next_seq()
            if not self._stop_is_eligible(o):
                self.stops.append(o)
                self._order_event(o, UNTRIGGERED)
                return
            self._trigger(o, queue)
        else:
            queue.append(o)
        self._run_queue(o["symbol"], queue)

    def _run_queue(self, symbol: str, queue: list[dict]) -> None:
        """Process orders FIFO as new orders; stops made eligible by each one join the queue."""
        while queue:
            self._process_new_order(queue.pop(0))
            self._collect_triggered(symbol, queue)

    def _stop_is_eligible(self, o: dict) -> bool:
        last = self.books[o["symbol"]]["last_price"]
        if last is None:
            return False
        return last >= o["stop_price"] if o["is_buy"] else last <= o["stop_price"]

    def _collect_triggered(self, symbol: str, queue: list[dict]) -> None:
        """Trigger every stop that a trade since the last collection reached (a trade at or
        through its stop price; without one, the last price decides)."""
        book = self.books[symbol]
        prints, book["prints"] = book["prints"], []
        last = book["last_price"]
        if last is None:
            return

        def reached(o: dict) -> bool:
            if o["is_buy"]:
                return any(p >= o["stop_price"] for p in prints or [last])
            return any(p <= o["stop_price"] for p in prints or [last])

        mine = [o for o in self.stops if o["symbol"] == symbol and reached(o)]
        buys = sorted((o for o in mine if o["is_buy"]), key=lambda o: (o["stop_price"], o["seq"]))
        sells = sorted(
            (o for o in mine if not o["is_buy"]), key=lambda o: (-o["stop_price"], o["seq"])
        )
        for o in buys + sells:
            self.stops.remove(o)
            self._trigger(o, queue)

    def _trigger(self, o: dict, queue: list[dict]) -> None:
        o["type"] = MARKET if o["type"] == STOP_MARKET else LIMIT
        self._order_event(o, TRIGGERED)
        queue.append(o)

    def _process_new_order(self, o: dict) -> None:
        """Post-only, FOK, matching and the final state of a new (or just triggered) order."""
        symbol = o["symbol"]
        if o["type"] == LIMIT and o["flags"] & (POST_ONLY | POST_ONLY_ADJUST):
            best = self.best_ask(symbol) if o["is_buy"] else self.best_bid(symbol)
            if best is not None and self._crosses(o["is_buy"], o["price"], best):
                if o["flags"] & POST_ONLY:
                    self._reject(symbol, o["id"], o["user"], OP_PLACE, POST_ONLY_WOULD_MATCH, best)
                    return
                adjusted = best - 1 if o["is_buy"] else best + 1
                code = self._check_limit_price(symbol, adjusted)
                if code:
                    self._reject(symbol, o["id"], o["user"], OP_PLACE, code)
                    return
                o["price"] = adjusted
        if o["tif"] == FOK:
            trial = copy.deepcopy(self)
            trial_order = copy.deepcopy(o)
            trial._take(trial_order)
            if trial_order["filled"] != trial_order["qty"]:
                self._reject(symbol, o["id"], o["user"], OP_PLACE, FOK_UNFILLABLE)
                return
        stopped = self._take(o)
        if stopped == STOP_STP:
            self._finish_taker(o, CANCELLED, R_STP)
        elif stopped == STOP_BUDGET:
            if o["by_quote"] and o["filled"] > 0:
                self._finish_taker(o, FILLED, None)
            else:
                self._finish_taker(o, CANCELLED, R_MAX_QUOTE)
        elif o["by_quote"]:
            self._finish_taker(o, CANCELLED, R_NO_LIQUIDITY)
        elif o["remaining"] == 0:
            self._finish_taker(o, FILLED, None)
        elif o["type"] == MARKET:
            self._finish_taker(o, CANCELLED, R_NO_LIQUIDITY)
        elif o["tif"] == IOC:
            self._finish_taker(o, CANCELLED, R_IOC_REMAINDER)
        else:
            assert o["tif"] in (GTC, GTD, DAY)
            self._rest(o)

    # ---- matching ---------------------------------------------------------------------------
    @staticmethod
    def _crosses(is_buy: bool, price: int, opposite_price: int) -> bool:
        return price >= opposite_price if is_buy else price <= opposite_price

    def _take(self, taker: dict) -> str | None:
        """Match a taker against the opposite side; return why it stopped (None: used up)."""
        symbol = taker["symbol"]
        inst = self.instruments[symbol]
        opposite = not taker["is_buy"]
        if taker["type"] == MARKET:
            makers = self.side(symbol, opposite)
            if not makers:
                return STOP_NO_LIQUIDITY
            best = makers[0]["price"]
            width = best * inst.collar_ppm // PPM
            limit_price = best + width if taker["is_buy"] else best - width
        else:
            limit_price = taker["price"]
        mode = taker["stp"] or inst.stp_default
        while taker["by_quote"] or taker["remaining"] > 0:
            makers = self.side(symbol, opposite)
            if not makers or not self._crosses(taker["is_buy"], limit_price, makers[0]["price"]):
                return STOP_NO_LIQUIDITY
            maker = makers[0]
            if maker["user"] == taker["user"] and mode != STP_NONE:
                if self._prevent_self_trade(taker, maker, mode):
                    return STOP_STP
                continue
            qty = maker["visible"]
            if not taker["by_quote"]:
                qty = min(qty, taker["remaining"])
            if taker["is_buy"]:
                budget = taker["max_quote"] - taker["quote_spent"]
                qty = affordable(inst, maker["price"], budget, taker["taker_fee"], qty)
                if qty == 0:
                    return STOP_BUDGET
            else:
                budget = maker["max_quote"] - maker["quote_spent"]
                qty = affordable(inst, maker["price"], budget, maker["maker_fee"], qty)
                assert qty > 0, "a resting buy can always pay for one lot"
            self._trade(taker, maker, qty)
        return None

    def _trade(self, taker: dict, maker: dict, qty: int) -> None:
        inst = self.instruments[taker["symbol"]]
        price = maker["price"]
        notional = inst.notional(price, qty)
        maker_fee = fee(notional, maker["maker_fee"])
        taker_fee = fee(notional, taker["taker_fee"])
        maker["visible"] -= qty
        maker["remaining"] -= qty
        maker["filled"] += qty
        if maker["is_buy"]:
            maker["quote_spent"] += notional + maker_fee
        taker["filled"] += qty
        if not taker["by_quote"]:
            taker["remaining"] -= qty
        if taker["is_buy"]:
            taker["quote_spent"] += notional + taker_fee
        self.trade_seq += 1
        self.books[taker["symbol"]]["last_price"] = price
        self.books[taker["symbol"]]["prints"].append(price)
        self._emit(
            EV_TRADE,
            taker["symbol"],
            self.trade_seq,
            price,
            qty,
            notional,
            maker["id"],
            maker["user"],
            taker["id"],
            taker["user"],
            taker["is_buy"],
            maker_fee,
            taker_fee,
            FILLED if maker["remaining"] == 0 else PARTIALLY_FILLED,
            maker["filled"],
            maker["remaining"],
            taker["filled"],
            taker["remaining"],
        )
        if maker["remaining"] == 0:
            self._remove_live(maker)
        elif maker["is_buy"] and not self._can_pay_one_lot(maker):
            self._end(maker, CANCELLED, R_MAX_QUOTE)
        elif maker["visible"] == 0:
            # Iceberg refill: a new slice goes to the back of its level.
            maker["visible"] = min(maker["display"], maker["remaining"])
            maker["seq"] = self.event_seq  # the trade's own seq

    def _prevent_self_trade(self, taker: dict, maker: dict, mode: int) -> bool:
        """Apply an STP mode to taker vs maker; True when the taker is done (cancelled stp)."""
        # A buy by quote amount has no quantity: API.md leaves its STP sizes open; like the
        # engine, the model treats its remaining quantity as unlimited (reported).
        taker_left = UNLIMITED if taker["by_quote"] else taker["remaining"]
        self._emit(
            EV_STP,
            taker["symbol"],
            STP_MODE_NAMES[mode],
            taker["id"],
            maker["id"],
            taker["user"],
            maker["price"],
            min(taker_left, maker["visible"]),
        )
        if mode == STP_CANCEL_RESTING:
            self._end(maker, CANCELLED, R_STP)
            return False
        if mode == STP_CANCEL_INCOMING:
            return True
        if mode == STP_CANCEL_BOTH:
            self._end(maker, CANCELLED, R_STP)
            return True
        if mode == STP_CANCEL_SMALLEST:
            if taker_left < maker["remaining"]:
                return True
            tie = taker_left == maker["remaining"]
            self._end(maker, CANCELLED, R_STP)
            return tie
        assert mode == STP_DECREMENT_BOTH
        cut = min(taker_left, maker["remaining"])
        reserve = maker["remaining"] - maker["visible"]
        maker["visible"] -= cut - min(cut, reserve)
        maker["remaining"] -= cut
        if maker["remaining"] == 0:
            self._end(maker, CANCELLED, R_STP)
        else:
            self._order_event(maker, self._open_status(maker))
        if taker["by_quote"]:
            return False
        taker["remaining"] -= cut
        if taker["remaining"] == 0:
            return True
        self._order_event(taker, self._open_status(taker))
        return False

    def _can_pay_one_lot(self, o: dict) -> bool:
        inst = self.instruments[o["symbol"]]
        budget = o["max_quote"] - o["quote_spent"]
        return buy_cost(inst, o["price"], 1, o["maker_fee"]) <= budget

    def _rest(self, o: dict) -> None:
        """Put a limit remainder on the book (a buy that cannot pay one lot is cancelled)."""
        if o["is_buy"] and not self._can_pay_one_lot(o):
            self._finish_taker(o, CANCELLED, R_MAX_QUOTE)
            return
        o["visible"] = min(o["display"], o["remaining"]) if o["display"] else o["remaining"]
        o["seq"] = self._next_seq()
        self.side(o["symbol"], o["is_buy"]).append(o)
        self._order_event(o, self._open_status(o))

    # ---- amend ------------------------------------------------------------------------------
    def _amend(self, cmd: tuple) -> None:
        _, _ts, order_id, price, qty, max_quote = cmd
        o = self.find_live(order_id)
        if o is None:
            self._reject(None, order_id, None, OP_AMEND, UNKNOWN_ORDER)
            return
        symbol = o["symbol"]
        code, detail = self._validate_amend(o, price, qty, max_quote)
        if code:
            self._reject(symbol, order_id, o["user"], OP_AMEND, code, detail)
            return
        new_price = o["price"] if price is None else price
        new_qty = o["qty"] if qty is None else qty
        # Without a new quantity the open quantity stays (an STP decrement may have cut it).
        new_remaining = o["remaining"] if qty is None else qty - o["filled"]
        loses_priority = new_price != o["price"] or new_remaining > o["remaining"]
        if max_quote is not None and o["is_buy"]:
            o["max_quote"] = max_quote
        if o in self.stops:
            o["price"], o["qty"], o["remaining"] = new_price, new_qty, new_remaining
            if loses_priority:
                o["seq"] = self._next_seq()
            self._order_event(o, UNTRIGGERED)
            return
        if not loses_priority:
            # Reduce in place (iceberg: the reserve goes first), keeping the priority seq.
            cut = o["remaining"] - new_remaining
            reserve = o["remaining"] - o["visible"]
            o["visible"] -= cut - min(cut, reserve)
            o["remaining"] = new_remaining
            o["qty"] = new_qty
            if o["is_buy"] and not self._can_pay_one_lot(o):
                self._end(o, CANCELLED, R_MAX_QUOTE)
            else:
                self._order_event(o, self._open_status(o))
            return
        self._remove_live(o)
        o["price"], o["qty"], o["remaining"] = new_price, new_qty, new_remaining
        stopped = self._take(o)
        if stopped == STOP_STP:
            self._finish_taker(o, CANCELLED, R_STP)
        elif stopped == STOP_BUDGET:
            self._finish_taker(o, CANCELLED, R_MAX_QUOTE)
        elif o["remaining"] == 0:
            self._finish_taker(o, FILLED, None)
        else:
            self._rest(o)
        queue: list[dict] = []
        self._collect_triggered(symbol, queue)
        self._run_queue(symbol, queue)

    def _validate_amend(
        self, o: dict, price: object, qty: object, max_quote: object
    ) -> tuple[str | None, int | None]:
        symbol = o["symbol"]
        if self.books[symbol]["halted"]:
            return INSTRUMENT_HALTED, None
        if qty is not None:
            if not is_int(qty) or qty < 1:
                return INVALID_QUANTITY, None
            if qty <= o["filled"]:
                return AMEND_QUANTITY_TOO_LOW, None
        if price is not None:
            if o["type"] == STOP_MARKET:
                return INVALID_PRICE, None
            code = self._check_limit_price(symbol, price)
            if code:
                return code, None
        if (
            max_quote is not None
            and o["is_buy"]
            and (not is_int(max_quote) or max_quote <= 0 or max_quote < o["quote_spent"])
        ):
            return INVALID_MAX_QUOTE, None
        if (
            price is not None
            and o["flags"] & (POST_ONLY | POST_ONLY_ADJUST)
            and o not in self.stops
        ):
            best = self.best_ask(symbol) if o["is_buy"] else self.best_bid(symbol)
            if best is not None and self._crosses(o["is_buy"], price, best):
                return POST_ONLY_WOULD_MATCH, best
        return None, None

    # ---- small helpers ----------------------------------------------------------------------
    def _next_seq(self) -> int:
        """A priority seq is the seq of the event that announces the order (the next one)."""
        return self.event_seq + 1

    @staticmethod
    def _open_status(o: dict) -> str:
        return NEW if o["filled"] == 0 else PARTIALLY_FILLED

    def _remove_live(self, o: dict) -> None:
        if o in self.stops:
            self.stops.remove(o)
            return
        book = self.books[o["symbol"]]
        side = book["bids"] if o["is_buy"] else book["asks"]
        side.remove(o)

    def _end(self, o: dict, status: str, reason: str | None) -> None:
        """End a live order (resting or untriggered stop) and report it."""
        self._remove_live(o)
        self._finish_taker(o, status, reason)

    def _finish_taker(self, o: dict, status: str, reason: str | None) -> None:
        """Report an order that is not (or no longer) on the book in an end state."""
        o["remaining"] = 0
        o["visible"] = 0
        self._order_event(o, status, reason)

    def _order_event(self, o: dict, status: str, reason: str | None = None) -> None:
        self._emit(
            EV_ORDER,
            o["symbol"],
            o["id"],
            o["user"],
            status,
            reason,
            o["filled"],
            0 if status in END_STATUSES else o["remaining"],
            o["price"],
            o["quote_spent"],
        )

    def _reject(
        self,
        symbol: str | None,
        order_id: int | None,
        user_id: int | None,
        opcode: int,
        code: str,
        detail: int | None = None,
    ) -> None:
        reason = REJECT_STATUS_REASON.get(code, R_INVALID) if opcode == OP_PLACE else None
        self._emit(EV_REJECT, symbol, order_id, user_id, opcode, code, reason, detail)

    def _emit(self, kind: int, symbol: str | None, *fields: object) -> None:
        self.event_seq += 1
        self.events.append((kind, self.event_seq, self.ts, symbol, *fields))

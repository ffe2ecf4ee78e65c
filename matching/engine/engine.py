"""The order book engine: `Engine.apply(cmd) -> events`, read side, state hash, snapshot, bulk load.

Books are a dict price -> Level per side plus a binary heap of level keys per side (asks: price;
bids: negated price), so the best level is heap[0]. The heap is lazy: deleting a level other
than the best leaves its key behind (stale, skipped when it surfaces, dropped when the heap is
rebuilt at four times the live size), so creating a level costs a heappush (a compare or two away
from the top) and deleting one costs nothing, where a sorted list paid a bisect and a memmove
for each. Invariant: every level's key is in its heap and heap[0] is always a live level.
Orders sit in intrusive doubly linked lists per level (O(1) cancel through the order-id dict).
Links are cleared when an order leaves the book.
"""

from __future__ import annotations

import gc
import hashlib
import heapq
import marshal
from bisect import bisect_left, insort
from collections import deque
from fractions import Fraction
from heapq import heapify, heappop, heappush, heapreplace
from operator import itemgetter

from .instrument import PPM, Instrument, affordable_lots, buy_cost
from .protocol import (
    AMEND_QUANTITY_TOO_LOW,
    BELOW_MIN_NOTIONAL,
    CANCELLED,
    DAY,
    DUPLICATE_INSTRUMENT,
    DUPLICATE_ORDER_ID,
    EV_EXPIRY_MOVED,
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
    INSTRUMENT_SCALE_CHANGED,
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
    MAX_UNITS,
    NEW,
    OP_ADD_INSTRUMENT,
    OP_AMEND,
    OP_CANCEL,
    OP_EXPIRE_DUE,
    OP_HALT,
    OP_MASS_CANCEL,
    OP_PLACE,
    OP_RESUME,
    OP_UPDATE_INSTRUMENT,
    PARTIALLY_FILLED,
    POST_ONLY,
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
    STP_MODE_NAMES,
    STP_NONE,
    TRIGGERED,
    UNKNOWN_INSTRUMENT,
    UNKNOWN_ORDER,
    UNTRIGGERED,
)

# Remaining quantity of a market buy by quote amount while it matches (effectively unbounded).
QUOTE_ONLY = 1 << 62
BIG = MAX_UNITS  # remaining above this means "by quote amount" (reported as 0)
STATE_VERSION = 2  # 2: priority seqs are event seqs (no counter of their own)
_ROW_PRICE = itemgetter(1)
# A level heap is rebuilt past HEAP_GROWTH times its live size plus HEAP_SLACK: rarer rebuilds
# (each one a latency spike of ~15 us on a book of ~400 levels a side) cost less than the deeper
# heap (factor 2: 10,731 instructions a command on the bench mix, 3: 10,632, 4: 10,593).
HEAP_GROWTH = 4
HEAP_SLACK = 64
# The expiry heap keeps an order's entry until its expire_at, ended or not (a cancel does not
# look for it): past twice its size after the last sweep plus EXPIRY_SLACK it is swept of the
# entries of orders that ended or moved (amortized: a sweep follows as many new entries).
EXPIRY_SLACK = 4096
_BAD_INPUT = (KeyError, IndexError, TypeError, ValueError)


class EngineBug(RuntimeError):
    """A command failed after changing state: never hidden as a reject."""


class Order:
    """A live order (resting, untriggered stop, or an incoming order while it matches).

    `qty` is the visible remaining quantity when resting (the whole remaining while matching as
    a taker); `reserve` is the hidden iceberg remainder. `rich` caches that a buy's budget
    left (max_quote - spent) is at least its book's `rich_q`, so it can pay for a lot at any
    price the fast paths take: the fast move path then skips the big-int budget check. False
    means "not known": it is set False wherever spent or max_quote change, and the move path
    refreshes it after its exact check.
    """

    __slots__ = (
        "book",
        "display",
        "expire_at",
        "filled",
        "flags",
        "id",
        "is_buy",
        "level",
        "maker_fee",
        "max_quote",
        "next",
        "prev",
        "price",
        "qty",
        "reserve",
        "rich",
        "seq",
        "spent",
        "stop_price",
        "stp",
        "taker_fee",
        "tif",
        "type",
        "user",
    )

    def record(self) -> tuple:
        """Plain tuple with every field bulk load needs (layout in API.md)."""
        return (
            self.id,
            self.user,
            self.book.symbol,
            self.is_buy,
            self.type,
            self.price,
            self.qty,
            self.reserve,
            self.display,
            self.filled,
            self.seq,
            self.tif,
            self.expire_at,
            self.flags,
            self.stop_price,
            self.max_quote,
            self.spent,
            self.maker_fee,
            self.taker_fee,
            self.stp,
        )

    def live_status(self) -> str:
        """A live order's status: untriggered (a stop, not in the book), else new or partially
        filled."""
        if self.level is None:
            return UNTRIGGERED
        return PARTIALLY_FILLED if self.filled else NEW


class Level:
    """One price level: FIFO doubly linked list of orders plus visible qty and order count."""

    __slots__ = ("count", "head", "marked", "price", "qty", "tail")

    def __init__(self, price: int) -> None:
        self.price = price
        self.head = None
        self.tail = None
        self.qty = 0
        self.count = 0
        self.marked = False  # in its side's `changed` since the last drain (False when pooled)


class Book:
    """Order book of one instrument, its untriggered stops and its market data counters."""

    __slots__ = (
        "ask_cap",
        "ask_heap",
        "asks",
        "bid_cap",
        "bid_heap",
        "bids",
        "buy_stops",
        "changed_a",
        "changed_b",
        "fast",
        "fast_ok",
        "fmax",
        "fmax1",
        "fmin",
        "gone_a",
        "gone_b",
        "halted",
        "index",
        "inst",
        "k_den",
        "k_num",
        "last",
        "pmax",
        "pmin",
        "pool_a",
        "pool_b",
        "rich_q",
        "sell_stops",
        "seq",
        "stp_default",
        "symbol",
        "touched",
        "traded_hi",
        "traded_lo",
    )

    def __init__(self, inst: Instrument, index: int) -> None:
        self.symbol = inst.symbol
        self.index = index
        self.bids: dict[int, Level] = {}
        self.asks: dict[int, Level] = {}
        self.bid_heap: list[int] = []  # lazy min-heap of negated prices: best bid is -heap[0]
        self.ask_heap: list[int] = []  # lazy min-heap of prices: best ask is heap[0]
        self.bid_cap = self.ask_cap = HEAP_SLACK  # heap size that triggers a rebuild
        self.halted = False
        self.seq = 0
        self.last: int | None = None
        self.touched = False
        # Emptied Level objects are reused by the same side (a move near the top often deletes a
        # level and creates one); a pooled level has count 0.
        self.pool_b: list[Level] = []
        self.pool_a: list[Level] = []
        # Level changes since the last drain, per side: changed_* holds the Level objects changed
        # (a flag on the level makes a repeat mark one attribute test, and object keys need no
        # int comparison); gone_* the prices whose level was deleted or re-keyed away.
        self.changed_b: dict[Level, None] = {}
        self.changed_a: dict[Level, None] = {}
        self.gone_b: dict[int, None] = {}
        self.gone_a: dict[int, None] = {}
        self.buy_stops: list[tuple] = []  # (stop_price, seq, order) ascending: nearest first
        self.sell_stops: list[tuple] = []  # (-stop_price, seq, order) ascending: nearest first
        # Lowest and highest trade price since the stops were last collected (None: no trade),
        # kept only while there are stops: a sweep's first print can cross a stop that its
        # last print (the last price) is back on the other side of.
        self.traded_lo: int | None = None
        self.traded_hi: int | None = None
        self.rules_set(inst)

    def rules_set(self, inst: Instrument) -> None:
        """Take `inst`'s rules (at listing, and when OP_UPDATE_INSTRUMENT changes them; its
        tick size, lot size and quote decimals, hence k_num / k_den, never change)."""
        self.inst = inst
        self.k_num = inst.k_num
        self.k_den = inst.k_den
        self.stp_default = inst.stp_default
        self.pmin = inst.price_min
        self.pmax = inst.price_max
        # The fast paths skip the relative band and min notional checks: only when both are off.
        self.fast_ok = not inst.band_ppm and not inst.min_notional
        self.set_fast()  # fast: fast_ok and not halted
        # A buy with at least this budget left can pay for one lot (at most 2 * price * k_num,
        # see _rest_new) at any price the fast paths take (see Order.rich).
        self.rich_q = 2 * self.pmax * self.k_num

    def set_fast(self) -> None:
        """fmin..fmax: prices the fast paths accept (an empty span when they are off); two
        int comparisons cost less than `in range(...)`, which builds temporaries in C.
        fmax1 is fmax capped to a one-digit int (< 2**30): the fast paths test fmin..fmax1
        first, as CPython 3.11 compares one-digit ints inline while a bigger bound (price_max
        is 10**12 by default) takes the generic compare; fmin..fmax is only tested when that
        fails, so the accepted prices are exactly fmin..fmax."""
        self.fast = self.fast_ok and not self.halted
        self.fmin, self.fmax = (self.pmin, self.pmax) if self.fast else (1, 0)
        self.fmax1 = min(self.fmax, (1 << 30) - 1)

    def index_ok(self) -> bool:
        """The level-index invariant (for tests): valid heaps holding every level's key, each
        with a live best level on top."""
        for levels, heap, sign in ((self.bids, self.bid_heap, -1), (self.asks, self.ask_heap, 1)):
            if any(heap[(i - 1) // 2] > heap[i] for i in range(1, len(heap))):
                return False
            if not {sign * p for p in levels} <= set(heap):
                return False
            if heap and heap[0] * sign not in levels:
                return False
        return True


def _rebuild(heap: list, levels: dict, sign: int) -> int:
    """Drop the stale keys of a level heap (in place: callers hold it); return the next cap."""
    heap[:] = [sign * p for p in levels]
    heapify(heap)
    return HEAP_GROWTH * len(heap) + HEAP_SLACK


def _best_first(heap: list, levels: dict, sign: int):
    """Yield the live level prices of one side, best first, without copying or changing the heap
    (a small heap of (key, index) frontier nodes walks the tree in key order); the caller must
    not change the book while it iterates."""
    n = len(heap)
    if not n:
        return
    todo = [(heap[0], 0)]
    prev = None
    while todo:
        k, i = heappop(todo)
        if k != prev and sign * k in levels:  # skip stale keys and duplicates of a live one
            yield sign * k
        prev = k
        i = 2 * i + 1
        if i < n:
            heappush(todo, (heap[i], i))
            i += 1
            if i < n:
                heappush(todo, (heap[i], i))


def _top_levels(levels: dict, best: int, step: int, n: int) -> list[tuple]:
    """(price, qty, count) of up to n levels from the best outward (step -1 for bids, 1 for
    asks): a walk tick by tick, as the top of a book is dense, falling back to a partial sort
    when it is sparse."""
    out = []
    get = levels.get
    p = best
    for _ in range(4 * min(n, len(levels)) + 64):
        lvl = get(p)
        if lvl is not None:
            out.append((p, lvl.qty, lvl.count))
            if len(out) == n:
                return out
        p += step
    if len(out) == len(levels):
        return out
    top = heapq.nlargest(n, levels) if step < 0 else heapq.nsmallest(n, levels)
    return [(p, levels[p].qty, levels[p].count) for p in top]


def _fee(n: int, rate: int) -> int:
    if rate >= 0:
        return -((-n * rate) // PPM)
    return -((n * -rate) // PPM)


class Engine:
    """Deterministic matching engine over several instruments. See API.md."""

    def __init__(self, instruments=()) -> None:
        self.books: dict[str, Book] = {}
        self.orders: dict[int, Order] = {}
        self.ev_seq = 0
        self.trade_seq = 0
        self._expiry: list[tuple] = []
        self._expiry_kept = 0  # the expiry heap's size after its last sweep
        self._touched: list[Book] = []
        slow = self._slow
        # Each opcode's general handler (cmd, out); `_handlers` runs one through `_slow`.
        self._raw_handlers = {
            OP_PLACE: self._place_slow,
            OP_CANCEL: self._cancel_slow,
            OP_AMEND: self._amend_slow,
            OP_MASS_CANCEL: self._mass_cancel,
            OP_EXPIRE_DUE: self._expire_due,
            OP_HALT: self._halt,
            OP_RESUME: self._resume,
            OP_ADD_INSTRUMENT: self._add_instrument,
            OP_UPDATE_INSTRUMENT: self._update_instrument,
        }
        self._handlers = {
            op: (lambda cmd, handler=handler: slow(handler, cmd))
            for op, handler in self._raw_handlers.items()
        }
        for inst in instruments:
            self._new_book(inst)

    # ======================================================================================
    # Command entry points
    # ======================================================================================
    def apply(self, cmd: tuple) -> list[tuple]:
        """Apply one command; return its events.

        Price moves, reduces and cancels of resting orders are inlined here (the bulk of an
        exchange's traffic); everything else goes through the handlers. A moved order takes its
        level's own price object as `o.price`, so later dict operations on that price (level
        deletion, gone marks) match by identity instead of calling int comparison.

        The opcode is tested by identity (`op is OP_AMEND`): CPython keeps one object per small
        int, and 3.11 does not specialize an `==` whose jump needs EXTENDED_ARG (these blocks
        are long), so `==` cost a generic rich comparison per command (~66 instructions of
        ~10,600). Anything else equal to an opcode (True, a numpy int) takes the handler table,
        with the same result.
        """
        try:
            op = cmd[0]
            expiry = self._expiry
            if (
                expiry
                and op is not OP_EXPIRE_DUE
                and len(cmd) > 1
                and cmd[1].__class__ is int
                and expiry[0][0] <= cmd[1]
            ):
                return self._expire_first(cmd)
            if op is OP_AMEND:
                _, ts, oid, price, qty, mq = cmd
                try:
                    o = self.orders[oid]
                except KeyError:
                    return self._slow(self._amend_slow, cmd)
                if mq is not None:
                    return self._slow(self._amend_slow, cmd)
                lvl = o.level
                book = o.book
                if qty is None:
                    old = o.price
                    if (
                        lvl is None
                        or price.__class__ is not int
                        or price == old
                        or not (book.fmin <= price <= book.fmax1 or book.fmin <= price <= book.fmax)
                    ):
                        return self._slow(self._amend_slow, cmd)
                    q = o.qty
                    if o.is_buy:
                        keys = book.ask_heap
                        if keys and keys[0] <= price:
                            return self._move_take(cmd, o, book, price)
                        if not o.rich:
                            if o.max_quote - o.spent < 2 * price * book.k_num:
                                return self._slow(self._amend_slow, cmd)
                            o.rich = o.max_quote - o.spent >= book.rich_q
                        levels = book.bids
                        keys = book.bid_heap
                        new = levels.get(price)
                        # `lvl.head is lvl.tail`: alone at its level (count == 1, but an `is`
                        # test: this jump is too long for 3.11's inline int compare).
                        if new is None and lvl.head is lvl.tail:
                            # Alone at its level, moving to an empty price: the level moves
                            # with it (the old key goes stale unless it was the best).
                            del levels[old]
                            levels[price] = lvl
                            lvl.price = price
                            book.gone_b[old] = None
                            if keys[0] == -old:
                                heapreplace(keys, -price)
                                while -keys[0] not in levels:
                                    heappop(keys)
                            else:
                                heappush(keys, -price)
                                if len(keys) > book.bid_cap:
                                    book.bid_cap = _rebuild(keys, levels, -1)
                            # The order stays linked as the level's only member.
                            if not lvl.marked:
                                lvl.marked = True
                                book.changed_b[lvl] = None
                            if o.display:
                                q += o.reserve
                                vis = o.display if q > o.display else q
                                o.qty = lvl.qty = vis
                                o.reserve = q - vis
                            o.price = price
                            self.ev_seq = book.seq = o.seq = seq = self.ev_seq + 1
                            filled = o.filled
                            return [(1, seq, ts, book.symbol, oid, o.user,
                                     PARTIALLY_FILLED if filled else NEW, None, filled, q, price,
                                     o.spent)]  # fmt: skip
                        else:
                            # Unlink from the old level (deleting it if it empties).
                            prev = o.prev
                            nxt = o.next
                            if prev is None:
                                lvl.head = nxt
                            else:
                                prev.next = nxt
                            if nxt is None:
                                lvl.tail = prev
                            else:
                                nxt.prev = prev
                            n = lvl.count - 1
                            lvl.count = n
                            lvl.qty -= q
                            if n:
                                if not lvl.marked:
                                    lvl.marked = True
                                    book.changed_b[lvl] = None
                            else:
                                del levels[old]
                                book.gone_b[old] = None
                                lvl.marked = False
                                book.pool_b.append(lvl)
                                if keys[0] == -old:
                                    heappop(keys)
                                    while keys and -keys[0] not in levels:
                                        heappop(keys)
                            if new is not None:
                                lvl = new
                                price = new.price  # the level's own key object (see apply)
                            else:
                                if book.pool_b:
                                    lvl = book.pool_b.pop()
                                    lvl.price = price
                                else:
                                    lvl = Level(price)
                                levels[price] = lvl
                                heappush(keys, -price)
                                if len(keys) > book.bid_cap:
                                    book.bid_cap = _rebuild(keys, levels, -1)
                    else:
                        keys = book.bid_heap
                        if keys and -keys[0] >= price:
                            return self._move_take(cmd, o, book, price)
                        levels = book.asks
                        keys = book.ask_heap
                        new = levels.get(price)
                        if new is None and lvl.head is lvl.tail:
                            del levels[old]
                            levels[price] = lvl
                            lvl.price = price
                            book.gone_a[old] = None
                            if keys[0] == old:
                                heapreplace(keys, price)
                                while keys[0] not in levels:
                                    heappop(keys)
                            else:
                                heappush(keys, price)
                                if len(keys) > book.ask_cap:
                                    book.ask_cap = _rebuild(keys, levels, 1)
                            # The order stays linked as the level's only member.
                            if not lvl.marked:
                                lvl.marked = True
                                book.changed_a[lvl] = None
                            if o.display:
                                q += o.reserve
                                vis = o.display if q > o.display else q
                                o.qty = lvl.qty = vis
                                o.reserve = q - vis
                            o.price = price
                            self.ev_seq = book.seq = o.seq = seq = self.ev_seq + 1
                            filled = o.filled
                            return [(1, seq, ts, book.symbol, oid, o.user,
                                     PARTIALLY_FILLED if filled else NEW, None, filled, q, price,
                                     o.spent)]  # fmt: skip
                        else:
                            prev = o.prev
                            nxt = o.next
                            if prev is None:
                                lvl.head = nxt
                            else:
                                prev.next = nxt
                            if nxt is None:
                                lvl.tail = prev
                            else:
                                nxt.prev = prev
                            n = lvl.count - 1
                            lvl.count = n
                            lvl.qty -= q
                            if n:
                                if not lvl.marked:
                                    lvl.marked = True
                                    book.changed_a[lvl] = None
                            else:
                                del levels[old]
                                book.gone_a[old] = None
                                lvl.marked = False
                                book.pool_a.append(lvl)
                                if keys[0] == old:
                                    heappop(keys)
                                    while keys and keys[0] not in levels:
                                        heappop(keys)
                            if new is not None:
                                lvl = new
                                price = new.price  # the level's own key object (see apply)
                            else:
                                if book.pool_a:
                                    lvl = book.pool_a.pop()
                                    lvl.price = price
                                else:
                                    lvl = Level(price)
                                levels[price] = lvl
                                heappush(keys, price)
                                if len(keys) > book.ask_cap:
                                    book.ask_cap = _rebuild(keys, levels, 1)
                    if not lvl.marked:
                        lvl.marked = True
                        (book.changed_b if o.is_buy else book.changed_a)[lvl] = None
                    vis = q
                    disp = o.display
                    if disp:
                        # A moved iceberg shows a fresh slice.
                        q += o.reserve
                        vis = disp if q > disp else q
                        o.qty = vis
                        o.reserve = q - vis
                    o.price = price
                    self.ev_seq = book.seq = o.seq = seq = self.ev_seq + 1
                    tail = lvl.tail
                    o.level = lvl
                    o.prev = tail
                    o.next = None
                    if tail is None:
                        lvl.head = o
                    else:
                        tail.next = o
                    lvl.tail = o
                    lvl.qty += vis
                    lvl.count += 1
                    filled = o.filled
                    return [(1, seq, ts, book.symbol, oid, o.user,
                             PARTIALLY_FILLED if filled else NEW, None, filled, q, price,
                             o.spent)]  # fmt: skip
                if (
                    price is None
                    and lvl is not None
                    and qty.__class__ is int
                    and book.fast
                    and o.filled < qty < o.filled + o.qty + o.reserve
                ):
                    # Reduce in place: keeps priority (iceberg: the reserve goes first). A
                    # resting buy could already pay one lot at its price, so it still can.
                    filled = o.filled
                    cut = filled + o.qty + o.reserve - qty
                    self.ev_seq = seq = self.ev_seq + 1
                    if o.reserve >= cut:
                        o.reserve -= cut
                    else:
                        cut -= o.reserve
                        o.reserve = 0
                        o.qty -= cut
                        lvl.qty -= cut
                        if not lvl.marked:
                            lvl.marked = True
                            (book.changed_b if o.is_buy else book.changed_a)[lvl] = None
                        book.seq = seq
                    return [(1, seq, ts, book.symbol, oid, o.user,
                             PARTIALLY_FILLED if filled else NEW, None, filled, qty - filled,
                             o.price, o.spent)]  # fmt: skip
                return self._slow(self._amend_slow, cmd)
            if op is OP_PLACE:
                # PLACE fast path: a valid plain GTC/IOC limit (no flags, no display) on a fast
                # book. A non-crossing GTC rests inline; a crossing one matches via _take.
                (_, ts, sym, oid, uid, is_buy, otype, price, qty, tif, _, flags, disp, _, mq,
                 mfee, tfee, stp) = cmd  # fmt: skip
                book = self.books.get(sym)
                orders = self.orders
                if not (
                    book is not None
                    and otype == 0
                    and (tif == 0 or tif == 1)
                    and flags == 0
                    and disp == 0
                    and price.__class__ is int
                    and qty.__class__ is int
                    and stp.__class__ is int
                    and mfee.__class__ is int
                    and tfee.__class__ is int
                    and (book.fmin <= price <= book.fmax1 or book.fmin <= price <= book.fmax)
                    and book.inst.min_qty <= qty
                    and 0 <= stp <= 6
                    and -PPM < mfee < PPM
                    and 0 <= tfee < PPM
                    and oid not in orders
                ):
                    return self._slow(self._place_slow, cmd)
                if is_buy is True:
                    if mq.__class__ is not int:
                        return self._slow(self._place_slow, cmd)
                    # One big-int comparison for the usual large budget (mq >= rich_q implies
                    # mq > 0 and mq >= 2 * price * k_num); the exact checks only below it.
                    rich = mq >= book.rich_q
                    if not rich and mq <= 0:
                        return self._slow(self._place_slow, cmd)
                    keys = book.ask_heap
                    take = keys and keys[0] <= price
                    if not take and (tif or (not rich and mq < 2 * price * book.k_num)):
                        # IOC that does not cross, or the exact budget check: no re-validation.
                        return self._slow(self._place_checked, cmd)
                elif is_buy is False:
                    keys = book.bid_heap
                    take = keys and -keys[0] >= price
                    if not take and tif:
                        return self._slow(self._place_checked, cmd)
                    mq = 0
                    rich = False
                else:
                    return self._slow(self._place_slow, cmd)
                o = Order()
                o.id = oid
                o.user = uid
                o.book = book
                o.is_buy = is_buy
                o.type = 0
                o.price = price
                o.qty = qty
                o.reserve = o.display = o.filled = o.expire_at = o.flags = 0
                o.stop_price = o.spent = 0
                o.tif = tif
                o.max_quote = mq
                o.rich = rich
                o.maker_fee = mfee
                o.taker_fee = tfee
                o.stp = stp  # STP_DEFAULT: the book's default when it matches
                if take:
                    o.seq = 0
                    o.level = o.prev = o.next = None
                    return self._take(book, o, ts, cmd)
                if is_buy:
                    levels = book.bids
                    lvl = levels.get(price)
                    if lvl is None:
                        if book.pool_b:
                            lvl = book.pool_b.pop()
                            lvl.price = price
                        else:
                            lvl = Level(price)
                        levels[price] = lvl
                        keys = book.bid_heap
                        heappush(keys, -price)
                        if len(keys) > book.bid_cap:
                            book.bid_cap = _rebuild(keys, levels, -1)
                else:
                    levels = book.asks
                    lvl = levels.get(price)
                    if lvl is None:
                        if book.pool_a:
                            lvl = book.pool_a.pop()
                            lvl.price = price
                        else:
                            lvl = Level(price)
                        levels[price] = lvl
                        keys = book.ask_heap
                        heappush(keys, price)
                        if len(keys) > book.ask_cap:
                            book.ask_cap = _rebuild(keys, levels, 1)
                if not lvl.marked:
                    lvl.marked = True
                    (book.changed_b if is_buy else book.changed_a)[lvl] = None
                self.ev_seq = book.seq = o.seq = seq = self.ev_seq + 1
                tail = lvl.tail
                o.level = lvl
                o.prev = tail
                o.next = None
                if tail is None:
                    lvl.head = o
                else:
                    tail.next = o
                lvl.tail = o
                lvl.qty += qty
                lvl.count += 1
                orders[oid] = o
                return [(1, seq, ts, sym, oid, uid, NEW, None, 0, qty, price, 0)]
            if op is OP_CANCEL:
                _, ts, oid = cmd
                orders = self.orders
                try:
                    o = orders[oid]
                except KeyError:
                    return self._slow(self._cancel_slow, cmd)
                if o.level is None:
                    return self._slow(self._cancel_slow, cmd)
                del orders[oid]
                book = o.book
                lvl = o.level
                prev = o.prev
                nxt = o.next
                if prev is None:
                    lvl.head = nxt
                else:
                    prev.next = nxt
                if nxt is None:
                    lvl.tail = prev
                else:
                    nxt.prev = prev
                o.prev = o.next = o.level = None
                n = lvl.count - 1
                lvl.count = n
                lvl.qty -= o.qty
                price = lvl.price
                if o.is_buy:
                    if n:
                        if not lvl.marked:
                            lvl.marked = True
                            book.changed_b[lvl] = None
                    else:
                        levels = book.bids
                        del levels[price]
                        book.gone_b[price] = None
                        lvl.marked = False
                        book.pool_b.append(lvl)
                        keys = book.bid_heap
                        if keys[0] == -price:
                            heappop(keys)
                            while keys and -keys[0] not in levels:
                                heappop(keys)
                else:
                    if n:
                        if not lvl.marked:
                            lvl.marked = True
                            book.changed_a[lvl] = None
                    else:
                        levels = book.asks
                        del levels[price]
                        book.gone_a[price] = None
                        lvl.marked = False
                        book.pool_a.append(lvl)
                        keys = book.ask_heap
                        if keys[0] == price:
                            heappop(keys)
                            while keys and keys[0] not in levels:
                                heappop(keys)
                self.ev_seq = book.seq = seq = self.ev_seq + 1
                return [(1, seq, ts, book.symbol, oid, o.user, CANCELLED, R_USER, o.filled, 0,
                         o.price, o.spent)]  # fmt: skip
            return self._handlers[op](cmd)
        except _BAD_INPUT:
            # Malformed command (unknown opcode, wrong arity or types) caught before any change.
            return self._invalid(cmd)

    def _move_take(self, cmd, o: Order, book: Book, price: int) -> list[tuple]:
        """A valid price move of a resting order to a crossing price (as _amend_slow does)."""
        if o.flags:
            return self._slow(self._amend_slow, cmd)  # post-only: rejected there
        try:
            self._unlink(book, o)
            del self.orders[o.id]
            o.price = price
            o.qty += o.reserve
            o.reserve = 0
        except _BAD_INPUT as exc:
            raise EngineBug(f"command failed half-way: {cmd!r}") from exc
        return self._take(book, o, cmd[1], cmd)

    def _expire_first(self, cmd) -> list[tuple]:
        """A command stamped at or after some order's `expire_at`: those orders expire first,
        as an `expire_due` at the command's time would expire them, then the command applies,
        all as one command (one book update): an order never trades, nor is amended, after
        its expiry, however late the scheduled `expire_due` comes."""
        handler = self._raw_handlers.get(cmd[0])
        if handler is None:
            return self._invalid(cmd)
        ts = cmd[1]

        def expire_then(c, out) -> None:
            self._expire_due((OP_EXPIRE_DUE, ts, ts), out)
            expired, touched = len(out), len(self._touched)
            try:
                handler(c, out)
            except _BAD_INPUT as exc:
                if len(out) != expired or len(self._touched) != touched:
                    raise EngineBug(f"command failed half-way: {c!r}") from exc
                self._reject(out, c, None, None, None, INVALID_COMMAND)

        return self._slow(expire_then, cmd)

    def _slow(self, handler, cmd) -> list[tuple]:
        """Run a general handler; count each touched book's update seq once."""
        out: list[tuple] = []
        try:
            handler(cmd, out)
        except _BAD_INPUT as exc:
            if out or self._touched:
                raise EngineBug(f"command failed half-way: {cmd!r}") from exc
            self._reject(out, cmd, None, None, None, INVALID_COMMAND)
        touched = self._touched
        if touched:
            seq = self.ev_seq
            for book in touched:
                book.seq = seq
                book.touched = False
            touched.clear()
        return out

    def apply_batch(self, cmds) -> list[tuple]:
        """Apply commands in order; return all their events concatenated (same as apply)."""
        events: list[tuple] = []
        extend = events.extend
        apply = self.apply
        for cmd in cmds:
            extend(apply(cmd))
        return events

    # ======================================================================================
    # Event helpers
    # ======================================================================================
    def _invalid(self, cmd) -> list[tuple]:
        """The events of a malformed command: one EV_REJECT InvalidCommand. (A helper rather
        than inline in apply: every local of apply costs each command a little.)"""
        out: list[tuple] = []
        self._reject(out, cmd, None, None, None, INVALID_COMMAND)
        return out

    def _reject(self, out, cmd, symbol, order_id, user_id, code, detail=None) -> None:
        op = cmd[0] if isinstance(cmd, tuple) and cmd else None
        ts = cmd[1] if isinstance(cmd, tuple) and len(cmd) > 1 else None
        reason = REJECT_STATUS_REASON.get(code, R_INVALID) if op == OP_PLACE else None
        self.ev_seq += 1
        out.append(
            (EV_REJECT, self.ev_seq, ts, symbol, order_id, user_id, op, code, reason, detail)
        )

    def _order_event(self, out, ts, o: Order, status, reason=None) -> None:
        if status is CANCELLED or status is FILLED or status is EXPIRED:
            rem = 0
        else:
            rem = o.qty + o.reserve
            if rem > BIG:
                rem = 0
        self.ev_seq += 1
        out.append(
            (EV_ORDER, self.ev_seq, ts, o.book.symbol, o.id, o.user, status, reason, o.filled,
             rem, o.price, o.spent)
        )  # fmt: skip

    # ======================================================================================
    # Book structure primitives
    # ======================================================================================
    def _rest(self, book: Book, o: Order, seq: int) -> None:
        """Append o at the back of its price level with priority seq `seq`: the seq of the event
        that announces it there (or, for an iceberg refill, of the trade that emptied its
        slice)."""
        p = o.price
        if o.is_buy:
            levels = book.bids
            lvl = levels.get(p)
            if lvl is None:
                if book.pool_b:
                    lvl = book.pool_b.pop()
                    lvl.price = p
                else:
                    lvl = Level(p)
                levels[p] = lvl
                keys = book.bid_heap
                heappush(keys, -p)
                if len(keys) > book.bid_cap:
                    book.bid_cap = _rebuild(keys, levels, -1)
        else:
            levels = book.asks
            lvl = levels.get(p)
            if lvl is None:
                if book.pool_a:
                    lvl = book.pool_a.pop()
                    lvl.price = p
                else:
                    lvl = Level(p)
                levels[p] = lvl
                keys = book.ask_heap
                heappush(keys, p)
                if len(keys) > book.ask_cap:
                    book.ask_cap = _rebuild(keys, levels, 1)
        if not lvl.marked:
            lvl.marked = True
            (book.changed_b if o.is_buy else book.changed_a)[lvl] = None
        o.seq = seq
        tail = lvl.tail
        o.level = lvl
        o.prev = tail
        o.next = None
        if tail is None:
            lvl.head = o
        else:
            tail.next = o
        lvl.tail = o
        lvl.qty += o.qty
        lvl.count += 1
        if not book.touched:
            book.touched = True
            self._touched.append(book)

    def _unlink(self, book: Book, o: Order) -> None:
        """Take o out of its level (deleting the level if it empties) and clear its links."""
        lvl = o.level
        prev = o.prev
        nxt = o.next
        if prev is None:
            lvl.head = nxt
        else:
            prev.next = nxt
        if nxt is None:
            lvl.tail = prev
        else:
            nxt.prev = prev
        o.prev = o.next = o.level = None
        lvl.qty -= o.qty
        lvl.count -= 1
        p = lvl.price
        if o.is_buy:
            if lvl.count:
                if not lvl.marked:
                    lvl.marked = True
                    book.changed_b[lvl] = None
            else:
                levels = book.bids
                del levels[p]
                book.gone_b[p] = None
                lvl.marked = False
                book.pool_b.append(lvl)
                keys = book.bid_heap
                if keys[0] == -p:
                    heappop(keys)
                    while keys and -keys[0] not in levels:
                        heappop(keys)
        else:
            if lvl.count:
                if not lvl.marked:
                    lvl.marked = True
                    book.changed_a[lvl] = None
            else:
                levels = book.asks
                del levels[p]
                book.gone_a[p] = None
                lvl.marked = False
                book.pool_a.append(lvl)
                keys = book.ask_heap
                if keys[0] == p:
                    heappop(keys)
                    while keys and keys[0] not in levels:
                        heappop(keys)
        if not book.touched:
            book.touched = True
            self._touched.append(book)

    def _touch(self, book: Book, o: Order) -> None:
        lvl = o.level
        if not lvl.marked:
            lvl.marked = True
            (book.changed_b if o.is_buy else book.changed_a)[lvl] = None
        if not book.touched:
            book.touched = True
            self._touched.append(book)

    def _remove_live(self, o: Order) -> None:
        """Remove a live order (resting or untriggered stop) from the engine."""
        book = o.book
        if o.level is not None:
            self._unlink(book, o)
        else:
            if o.is_buy:
                stops = book.buy_stops
                del stops[bisect_left(stops, (o.stop_price, o.seq))]
            else:
                stops = book.sell_stops
                del stops[bisect_left(stops, (-o.stop_price, o.seq))]
        del self.orders[o.id]

    def _add_stop(self, book: Book, o: Order) -> None:
        o.seq = self.ev_seq + 1  # the seq of its untriggered event, which follows
        book.traded_lo = book.traded_hi = None  # no earlier print may trigger it
        if o.is_buy:
            insort(book.buy_stops, (o.stop_price, o.seq, o))
        else:
            insort(book.sell_stops, (-o.stop_price, o.seq, o))

    # ======================================================================================
    # PLACE
    # ======================================================================================
    def _take(self, book: Book, o: Order, ts: int, cmd) -> list[tuple]:
        """Match a crossing limit order that is not FOK and has no post-only flags, then rest or
        end it, run stops and count the book update (the tail of _process plus _slow); return
        the events. A failure here is an EngineBug (state may have changed)."""
        out: list[tuple] = []
        try:
            stopped = self._match(book, o, o.price, ts, out)
            if stopped is not None:
                self._order_event(out, ts, o, CANCELLED, stopped)
            elif not o.qty:
                self.ev_seq = seq = self.ev_seq + 1
                out.append(
                    (EV_ORDER, seq, ts, book.symbol, o.id, o.user, FILLED, None, o.filled, 0,
                     o.price, o.spent)
                )  # fmt: skip
            elif o.tif == IOC:
                self.ev_seq = seq = self.ev_seq + 1
                out.append(
                    (EV_ORDER, seq, ts, book.symbol, o.id, o.user, CANCELLED, R_IOC_REMAINDER,
                     o.filled, 0, o.price, o.spent)
                )  # fmt: skip
            else:
                self._rest_new(book, o, ts, out)
            if book.buy_stops or book.sell_stops:
                self._run_stops(book, ts, out)
        except _BAD_INPUT as exc:
            raise EngineBug(f"command failed half-way: {cmd!r}") from exc
        if book.touched:
            # A place or move changes only its own book.
            book.seq = self.ev_seq
            book.touched = False
            self._touched.clear()
        return out

    def _place_slow(self, cmd, out) -> None:
        _, _, sym, oid, uid, is_buy = cmd[:6]
        book = self.books.get(sym)
        if book is None:
            return self._reject(out, cmd, sym, oid, uid, UNKNOWN_INSTRUMENT)
        if book.halted:
            return self._reject(out, cmd, sym, oid, uid, INSTRUMENT_HALTED)
        if oid in self.orders:
            return self._reject(out, cmd, sym, oid, uid, DUPLICATE_ORDER_ID)
        if is_buy.__class__ is not bool:
            return self._reject(out, cmd, sym, oid, uid, INVALID_COMMAND)
        code = self._validate_place(book, cmd)
        if code is not None:
            return self._reject(out, cmd, sym, oid, uid, code)
        self._place_checked(cmd, out)

    def _place_checked(self, cmd, out) -> None:
        (_, ts, sym, oid, uid, is_buy, otype, price, qty, tif, exp, flags, disp, stop_px, mq,
         mfee, tfee, stp) = cmd  # fmt: skip
        book = self.books[sym]
        o = Order()
        o.id = oid
        o.user = uid
        o.book = book
        o.is_buy = is_buy
        o.type = otype
        o.price = price if otype in (LIMIT, STOP_LIMIT) else 0
        o.qty = qty if qty else QUOTE_ONLY
        o.reserve = 0
        o.display = disp
        o.filled = 0
        o.seq = 0
        o.tif = tif
        o.expire_at = exp if tif in (GTD, DAY) else 0
        o.flags = flags
        o.stop_price = stop_px if otype >= STOP_MARKET else 0
        o.max_quote = mq if is_buy else 0
        o.rich = False
        o.spent = 0
        o.maker_fee = mfee
        o.taker_fee = tfee
        o.stp = stp  # STP_DEFAULT: the book's default when it matches
        o.level = o.prev = o.next = None
        if o.expire_at:
            expiry = self._expiry
            if len(expiry) >= 2 * self._expiry_kept + EXPIRY_SLACK:
                self._expiry_sweep()
            heapq.heappush(expiry, (o.expire_at, oid))
        if otype >= STOP_MARKET:
            last = book.last
            if last is not None and (last >= stop_px if is_buy else last <= stop_px):
                o.seq = self.ev_seq + 1  # every stop takes a seq on arrival: its triggered event's
                self._trigger(book, o, ts, out)
                self._process(book, o, ts, out, False)
            else:
                self._add_stop(book, o)
                self.orders[oid] = o
                self._order_event(out, ts, o, UNTRIGGERED)
                return
        else:
            self._process(book, o, ts, out, True)
        if book.buy_stops or book.sell_stops:
            self._run_stops(book, ts, out)

    def _expiry_sweep(self) -> None:
        """Drop the expiry heap's entries of orders no longer live, or whose expiry moved."""
        orders = self.orders
        expiry = self._expiry
        expiry[:] = [
            entry
            for entry in expiry
            if (o := orders.get(entry[1])) is not None and o.expire_at == entry[0]
        ]
        heapq.heapify(expiry)
        self._expiry_kept = len(expiry)

    def _validate_place(self, book: Book, cmd) -> str | None:
        (_, ts, _sym, _oid, _uid, is_buy, otype, price, qty, tif, exp, flags, disp, stop_px, mq,
         mfee, tfee, stp) = cmd  # fmt: skip
        inst = book.inst
        if otype.__class__ is not int or not 0 <= otype <= 3:
            return INVALID_ORDER_TYPE
        if flags and (otype != LIMIT or flags.__class__ is not int or not 0 < flags <= 3):
            return INVALID_ORDER_TYPE
        if tif.__class__ is not int or not 0 <= tif <= 4:
            return INVALID_TIME_IN_FORCE
        if otype == MARKET:
            if tif != GTC and tif != IOC and tif != FOK:
                return INVALID_TIME_IN_FORCE
            if qty == 0 and (tif == FOK or not is_buy):
                return INVALID_QUANTITY if not is_buy else INVALID_TIME_IN_FORCE
        if flags and (tif in (IOC, FOK)):
            return INVALID_TIME_IN_FORCE
        if stp.__class__ is not int or not 0 <= stp <= 6:
            return INVALID_STP_MODE
        if (
            mfee.__class__ is not int
            or tfee.__class__ is not int
            or not -PPM < mfee < PPM
            or not 0 <= tfee < PPM
        ):
            return INVALID_FEE
        if (qty.__class__ is not int or qty < inst.min_qty) and not (
            qty.__class__ is int and qty == 0 and otype == MARKET and is_buy
        ):
            return INVALID_QUANTITY
        if disp:
            if disp.__class__ is not int or disp < 0:
                return INVALID_DISPLAY_QUANTITY
            if otype in (MARKET, STOP_MARKET) or tif in (IOC, FOK):
                return INVALID_DISPLAY_QUANTITY
        if otype in (LIMIT, STOP_LIMIT):
            code = self._check_price(book, price)
            if code is not None:
                return code
            if inst.min_notional and price * qty * book.k_num // book.k_den < inst.min_notional:
                return BELOW_MIN_NOTIONAL
        if otype >= STOP_MARKET and (stop_px.__class__ is not int or stop_px < 1):
            return INVALID_PRICE
        if is_buy and (mq.__class__ is not int or mq <= 0):
            return INVALID_MAX_QUOTE
        if (tif in (GTD, DAY)) and (exp.__class__ is not int or exp <= ts):
            return INVALID_EXPIRE_AT
        return None

    @staticmethod
    def _check_price(book: Book, price) -> str | None:
        if price.__class__ is not int or price < 1:
            return INVALID_PRICE
        inst = book.inst
        if price < inst.price_min or price > inst.price_max:
            return PRICE_OUTSIDE_BAND
        band = inst.band_ppm
        if band:
            last = book.last
            if last is not None and abs(price - last) * PPM > last * band:
                return PRICE_OUTSIDE_BAND
        return None

    def _process(self, book: Book, o: Order, ts: int, out, incoming: bool) -> None:
        """Match an incoming/triggered/amended order, then rest it or end it (final event)."""
        is_buy = o.is_buy
        if o.type == MARKET:
            if is_buy:
                keys = book.ask_heap
                best = keys[0] if keys else None
                lim = best + best * book.inst.collar_ppm // PPM if best is not None else 0
            else:
                keys = book.bid_heap
                best = -keys[0] if keys else None
                lim = best - best * book.inst.collar_ppm // PPM if best is not None else 0
            if best is None:
                if o.tif == FOK:
                    return self._reject_order(book, o, ts, out, FOK_UNFILLABLE)
                return self._order_event(out, ts, o, CANCELLED, R_NO_LIQUIDITY)
        else:
            lim = o.price
            if is_buy:
                keys = book.ask_heap
                crosses = keys and keys[0] <= lim
            else:
                keys = book.bid_heap
                crosses = keys and -keys[0] >= lim
            if crosses and o.flags:
                best = keys[0] if is_buy else -keys[0]
                if o.flags & POST_ONLY:
                    return self._reject_order(book, o, ts, out, POST_ONLY_WOULD_MATCH, best)
                lim = best - 1 if is_buy else best + 1
                code = self._check_price(book, lim)
                if code is not None:
                    return self._reject_order(book, o, ts, out, code)
                o.price = lim
                crosses = False
            if not crosses:
                if o.tif == FOK:
                    return self._reject_order(book, o, ts, out, FOK_UNFILLABLE)
                if o.tif == IOC:
                    return self._order_event(out, ts, o, CANCELLED, R_IOC_REMAINDER)
                return self._rest_new(book, o, ts, out)
        # The order crosses: FOK runs an exact dry run first.
        if o.tif == FOK and not self._fok_fillable(book, o, lim):
            return self._reject_order(book, o, ts, out, FOK_UNFILLABLE)
        stopped = self._match(book, o, lim, ts, out)
        if stopped is not None:
            if stopped is R_MAX_QUOTE and o.qty > BIG and o.filled:
                return self._order_event(out, ts, o, FILLED)
            return self._order_event(out, ts, o, CANCELLED, stopped)
        if not o.qty:
            return self._order_event(out, ts, o, FILLED)
        if o.type == MARKET:
            return self._order_event(out, ts, o, CANCELLED, R_NO_LIQUIDITY)
        if o.tif == IOC:
            return self._order_event(out, ts, o, CANCELLED, R_IOC_REMAINDER)
        return self._rest_new(book, o, ts, out)

    def _reject_order(self, book, o, ts, out, code, detail=None) -> None:
        self.ev_seq += 1
        out.append(
            (EV_REJECT, self.ev_seq, ts, book.symbol, o.id, o.user, OP_PLACE, code,
             REJECT_STATUS_REASON.get(code, R_INVALID), detail)
        )  # fmt: skip

    def _rest_new(self, book: Book, o: Order, ts, out) -> None:
        """Put the remainder of a limit order in the book (or cancel it for max_quote)."""
        if (
            o.is_buy
            # One lot costs at most twice price * k_num: the exact check only near the cap.
            and o.max_quote - o.spent < 2 * o.price * book.k_num
            and buy_cost(book.k_num, book.k_den, o.price, 1, o.maker_fee) > o.max_quote - o.spent
        ):
            return self._order_event(out, ts, o, CANCELLED, R_MAX_QUOTE)
        disp = o.display
        if disp and o.qty > disp:
            o.reserve = o.qty - disp
            o.qty = disp
        # Its EV_ORDER event, built here rather than by _order_event (one call less for every
        # taker that rests): a resting limit order's remaining is never a quote-only marker.
        # Its seq is the order's priority seq.
        self.ev_seq = seq = self.ev_seq + 1
        self._rest(book, o, seq)
        self.orders[o.id] = o
        filled = o.filled
        out.append(
            (EV_ORDER, seq, ts, book.symbol, o.id, o.user, PARTIALLY_FILLED if filled else NEW,
             None, filled, o.qty + o.reserve, o.price, o.spent)
        )  # fmt: skip

    # ======================================================================================
    # Matching
    # ======================================================================================
    def _match(self, book: Book, t: Order, lim: int, ts: int, out) -> str | None:
        """Fill taker t against the opposite side up to price lim; t.qty becomes what is left.

        Returns None, or the reason the taker must stop (R_STP, R_MAX_QUOTE). The event and
        trade counters live in locals and are written back around every helper call.
        """
        is_buy = t.is_buy
        if is_buy:
            levels = book.asks
            keys = book.ask_heap
            gone = book.gone_a
            changed = book.changed_a
            pool = book.pool_a
            budget = t.max_quote - t.spent
            sign = 1
        else:
            levels = book.bids
            keys = book.bid_heap
            gone = book.gone_b
            changed = book.changed_b
            pool = book.pool_b
            budget = 0
            sign = -1
        klim = sign * lim  # in key space the best level is the smallest key
        kn = book.k_num
        kd = book.k_den
        tuser = t.user
        tid = t.id
        tfee = t.taker_fee  # taker rates are >= 0 (validated)
        stp_on = (t.stp or book.stp_default) != STP_NONE
        rem = t.qty
        tfilled = t.filled
        sym = book.symbol
        orders = self.orders
        append = out.append
        ev = self.ev_seq
        tr = self.trade_seq
        stopped = None
        last = None
        while rem and keys:
            k = keys[0]
            if k > klim:
                break
            p = sign * k
            lvl = levels[p]
            m = lvl.head
            while m is not None:
                if stp_on and m.user == tuser:
                    t.qty = rem
                    t.filled = tfilled
                    self.ev_seq = ev
                    stopped = self._stp(book, t, m, ts, out)
                    ev = self.ev_seq
                    rem = t.qty
                    if stopped is not None or not rem:
                        break
                    m = lvl.head
                    continue
                mq = m.qty
                fill = mq if mq < rem else rem
                n = p * fill * kn // kd or 1
                mf = m.maker_fee
                if is_buy:
                    tf = -((-n * tfee) // PPM)
                    cost = n + tf
                    if cost > budget:
                        fill = affordable_lots(kn, kd, p, budget, tfee)
                        if not fill:
                            stopped = R_MAX_QUOTE
                            break
                        n = p * fill * kn // kd or 1
                        tf = -((-n * tfee) // PPM)
                        cost = n + tf
                    budget -= cost
                    t.spent += cost
                    mf = -((-n * mf) // PPM) if mf >= 0 else -((n * -mf) // PPM)
                else:
                    mf = -((-n * mf) // PPM) if mf >= 0 else -((n * -mf) // PPM)
                    cost = n + mf
                    if cost > m.max_quote - m.spent:
                        fill = affordable_lots(kn, kd, p, m.max_quote - m.spent, m.maker_fee)
                        if not fill:
                            self.ev_seq = ev
                            self._remove_live(m)
                            self._order_event(out, ts, m, CANCELLED, R_MAX_QUOTE)
                            ev = self.ev_seq
                            m = lvl.head
                            continue
                        n = p * fill * kn // kd or 1
                        mf = _fee(n, m.maker_fee)
                        cost = n + mf
                    m.spent += cost
                    m.rich = False
                    tf = -((-n * tfee) // PPM)
                rem -= fill
                tfilled += fill
                mq -= fill
                m.qty = mq
                mfilled = m.filled + fill
                m.filled = mfilled
                lvl.qty -= fill
                if not lvl.marked:
                    lvl.marked = True
                    changed[lvl] = None
                if last is None:
                    first = p
                last = p
                tr += 1
                ev += 1
                if mq:
                    append(
                        (EV_TRADE, ev, ts, sym, tr, p, fill, n, m.id, m.user, tid, tuser, is_buy,
                         mf, tf, PARTIALLY_FILLED, mfilled, mq + m.reserve, tfilled,
                         rem if rem < BIG else 0)
                    )  # fmt: skip
                    if (
                        not is_buy
                        and m.max_quote - m.spent < 2 * p * kn
                        and buy_cost(kn, kd, p, 1, m.maker_fee) > m.max_quote - m.spent
                    ):
                        self.ev_seq = ev
                        self._remove_live(m)
                        self._order_event(out, ts, m, CANCELLED, R_MAX_QUOTE)
                        ev = self.ev_seq
                    break  # taker exhausted (or budget-capped maker removed)
                res = m.reserve
                append(
                    (EV_TRADE, ev, ts, sym, tr, p, fill, n, m.id, m.user, tid, tuser, is_buy, mf,
                     tf, PARTIALLY_FILLED if res else FILLED, mfilled, res, tfilled,
                     rem if rem < BIG else 0)
                )  # fmt: skip
                if res:
                    # Iceberg refill: new slice, new priority seq, back of the queue.
                    if (
                        not is_buy
                        and m.max_quote - m.spent < 2 * p * kn
                        and buy_cost(kn, kd, p, 1, m.maker_fee) > m.max_quote - m.spent
                    ):
                        self.ev_seq = ev
                        self._remove_live(m)
                        self._order_event(out, ts, m, CANCELLED, R_MAX_QUOTE)
                        ev = self.ev_seq
                    else:
                        vis = m.display if m.display < res else res
                        if m.next is None:
                            # Already last in its level: refill in place with a new seq.
                            m.seq = ev  # the trade that emptied its slice
                            m.qty = vis
                            m.reserve = res - vis
                            lvl.qty += vis
                        else:
                            self._unlink(book, m)
                            m.qty = vis
                            m.reserve = res - vis
                            self._rest(book, m, ev)
                else:
                    nxt = m.next
                    # Filled: unlink from the head of the level.
                    lvl.head = nxt
                    m.next = m.level = None
                    lvl.count -= 1
                    del orders[m.id]
                    if nxt is None:
                        lvl.tail = None
                        del levels[p]
                        gone[p] = None
                        lvl.marked = False
                        pool.append(lvl)
                        heappop(keys)
                        while keys and sign * keys[0] not in levels:
                            heappop(keys)
                        break
                    nxt.prev = None
                if not rem:
                    break
                m = lvl.head
            if stopped is not None:
                break
        t.qty = rem
        t.filled = tfilled
        self.ev_seq = ev
        self.trade_seq = tr
        if last is not None:
            t.rich = False  # spent changed (a buy)
            book.last = last
            if book.buy_stops or book.sell_stops:
                # A taker's fills go from the best price outward: its prints span first..last.
                lo, hi = (first, last) if is_buy else (last, first)
                if book.traded_lo is None or lo < book.traded_lo:
                    book.traded_lo = lo
                if book.traded_hi is None or hi > book.traded_hi:
                    book.traded_hi = hi
            if not book.touched:
                book.touched = True
                self._touched.append(book)
        return stopped

    def _stp(self, book: Book, t: Order, m: Order, ts: int, out) -> str | None:
        """Self-trade prevention between taker t and maker m; returns R_STP if t must stop."""
        mode = t.stp or book.stp_default
        rem = t.qty
        mtotal = m.qty + m.reserve
        self.ev_seq += 1
        out.append(
            (EV_STP, self.ev_seq, ts, book.symbol, STP_MODE_NAMES[mode], t.id, m.id, t.user,
             m.price, m.qty if m.qty < rem else rem)
        )  # fmt: skip
        if mode == STP_CANCEL_RESTING:
            self._remove_live(m)
            self._order_event(out, ts, m, CANCELLED, R_STP)
            return None
        if mode == STP_CANCEL_INCOMING:
            return R_STP
        if mode == STP_CANCEL_BOTH:
            self._remove_live(m)
            self._order_event(out, ts, m, CANCELLED, R_STP)
            return R_STP
        if mode == STP_CANCEL_SMALLEST:
            if mtotal <= rem:
                self._remove_live(m)
                self._order_event(out, ts, m, CANCELLED, R_STP)
            if rem <= mtotal:
                return R_STP
            return None
        # STP_DECREMENT_BOTH
        d = rem if rem < mtotal else mtotal
        if d == mtotal:
            self._remove_live(m)
            self._order_event(out, ts, m, CANCELLED, R_STP)
        else:
            self._reduce_resting(book, m, mtotal - d)
            self._order_event(out, ts, m, PARTIALLY_FILLED if m.filled else NEW)
        if rem < BIG:
            t.qty = rem - d
            if not t.qty:
                return R_STP
            # The taker survives the decrement: report its new remaining (API.md).
            self._order_event(out, ts, t, PARTIALLY_FILLED if t.filled else NEW)
        return None

    def _reduce_resting(self, book: Book, m: Order, new_rem: int) -> None:
        """Reduce a resting order's remaining (reserve first), keeping its priority."""
        cut = m.qty + m.reserve - new_rem
        if cut <= 0:
            return
        if m.reserve >= cut:
            m.reserve -= cut
            return
        cut -= m.reserve
        m.reserve = 0
        m.qty -= cut
        m.level.qty -= cut
        self._touch(book, m)

    def _fok_fillable(self, book: Book, t: Order, lim: int) -> bool:
        """Exact dry run of `_match` for a FOK taker: can its whole quantity fill?"""
        is_buy = t.is_buy
        if is_buy:
            levels = book.asks
            keys = book.ask_heap
            budget = t.max_quote - t.spent
            sign = 1
        else:
            levels = book.bids
            keys = book.bid_heap
            budget = 0
            sign = -1
        kn = book.k_num
        kd = book.k_den
        tfee = t.taker_fee
        stp = t.stp or book.stp_default
        rem = t.qty
        for p in _best_first(keys, levels, sign):
            if (p > lim) if is_buy else (p < lim):
                return False
            queue = deque()
            m = levels[p].head
            while m is not None:
                queue.append([m.user, m.qty, m.reserve, m.display, m.maker_fee,
                              m.max_quote - m.spent])  # fmt: skip
                m = m.next
            while queue:
                e = queue[0]
                user, mq, res, disp, mfee, mbud = e
                if user == t.user and stp != STP_NONE:
                    mtotal = mq + res
                    if stp == STP_CANCEL_RESTING or (stp == STP_CANCEL_SMALLEST and mtotal < rem):
                        queue.popleft()
                        continue
                    return False
                fill = mq if mq < rem else rem
                n = p * fill * kn // kd or 1
                if is_buy:
                    cost = n + _fee(n, tfee)
                    if cost > budget:
                        return False
                    budget -= cost
                else:
                    cost = n + _fee(n, mfee)
                    if cost > mbud:
                        fill = affordable_lots(kn, kd, p, mbud, mfee)
                        if not fill:
                            queue.popleft()
                            continue
                        n = p * fill * kn // kd or 1
                        cost = n + _fee(n, mfee)
                    mbud -= cost
                    e[5] = mbud
                rem -= fill
                if not rem:
                    return True
                mq -= fill
                e[1] = mq
                if mq:
                    # Only a budget-capped maker buy stops short; it stays if it can pay a lot.
                    if buy_cost(kn, kd, p, 1, mfee) > mbud:
                        queue.popleft()
                    continue
                queue.popleft()
                if res:
                    if not is_buy and buy_cost(kn, kd, p, 1, mfee) > mbud:
                        continue
                    vis = disp if disp < res else res
                    e[1] = vis
                    e[2] = res - vis
                    queue.append(e)
        return False

    # ======================================================================================
    # Stops
    # ======================================================================================
    def _trigger(self, book: Book, o: Order, ts: int, out) -> None:
        o.type = MARKET if o.type == STOP_MARKET else LIMIT
        self._order_event(out, ts, o, TRIGGERED)

    def _traded_range(self, book: Book) -> tuple[int, int]:
        """(lowest, highest) trade price since the stops were last collected, or the last price
        twice when there was none; the range starts again from here."""
        lo = book.traded_lo
        if lo is None:
            return book.last, book.last
        hi = book.traded_hi
        book.traded_lo = book.traded_hi = None
        return lo, hi

    def _collect_stops(self, book: Book, queue, ts: int, out, lo: int, hi: int) -> None:
        """Trigger every stop that a trade since the last collection reached (a buy stop at or
        below the highest print, a sell stop at or above the lowest): buy stops by stop price
        ascending then seq, then sell stops by stop price descending then seq."""
        buys = book.buy_stops
        while buys and buys[0][0] <= hi:
            o = buys.pop(0)[2]
            del self.orders[o.id]
            self._trigger(book, o, ts, out)
            queue.append(o)
        sells = book.sell_stops
        while sells and -sells[0][0] >= lo:
            o = sells.pop(0)[2]
            del self.orders[o.id]
            self._trigger(book, o, ts, out)
            queue.append(o)

    def _run_stops(self, book: Book, ts: int, out) -> None:
        """Trigger every eligible stop and process the cascade within this command."""
        if book.last is None:
            return
        lo, hi = self._traded_range(book)
        buys = book.buy_stops
        sells = book.sell_stops
        if not ((buys and buys[0][0] <= hi) or (sells and -sells[0][0] >= lo)):
            return
        queue: deque = deque()
        self._collect_stops(book, queue, ts, out, lo, hi)
        while queue:
            o = queue.popleft()
            self._process(book, o, ts, out, False)
            lo, hi = self._traded_range(book)
            self._collect_stops(book, queue, ts, out, lo, hi)

    # ======================================================================================
    # CANCEL / AMEND / MASS CANCEL / EXPIRY
    # ======================================================================================
    def _cancel_slow(self, cmd, out) -> None:
        o = self.orders.get(cmd[2])
        if o is None:
            return self._reject(out, cmd, None, cmd[2], None, UNKNOWN_ORDER)
        self._remove_live(o)
        self._order_event(out, cmd[1], o, CANCELLED, R_USER)

    def _amend_slow(self, cmd, out) -> None:
        _, ts, oid, price, qty, mq = cmd
        o = self.orders.get(oid)
        if o is None:
            return self._reject(out, cmd, None, oid, None, UNKNOWN_ORDER)
        book = o.book
        sym = book.symbol
        if book.halted:
            return self._reject(out, cmd, sym, oid, o.user, INSTRUMENT_HALTED)
        rem_now = o.qty + o.reserve
        if qty is not None:
            if qty.__class__ is not int or qty < 1:
                return self._reject(out, cmd, sym, oid, o.user, INVALID_QUANTITY)
            if qty <= o.filled:
                return self._reject(out, cmd, sym, oid, o.user, AMEND_QUANTITY_TOO_LOW)
            new_rem = qty - o.filled
        else:
            new_rem = rem_now
        if price is not None:
            if o.type == STOP_MARKET:
                return self._reject(out, cmd, sym, oid, o.user, INVALID_PRICE)
            code = self._check_price(book, price)
            if code is not None:
                return self._reject(out, cmd, sym, oid, o.user, code)
            new_price = price
        else:
            new_price = o.price
        if mq is not None and o.is_buy and (mq.__class__ is not int or mq < o.spent or mq <= 0):
            return self._reject(out, cmd, sym, oid, o.user, INVALID_MAX_QUOTE)
        requeue = new_price != o.price or new_rem > rem_now
        if o.level is None:
            # Untriggered stop: no matching; same priority rule as the book.
            if requeue:
                self._remove_live(o)
                o.price = new_price
                o.qty = new_rem
                if mq is not None and o.is_buy:
                    o.max_quote = mq
                    o.rich = False
                self._add_stop(book, o)
                self.orders[oid] = o
            else:
                o.qty = new_rem
                if mq is not None and o.is_buy:
                    o.max_quote = mq
                    o.rich = False
            return self._order_event(out, ts, o, UNTRIGGERED)
        if not requeue:
            self._reduce_resting(book, o, new_rem)
            if mq is not None and o.is_buy:
                o.max_quote = mq
                o.rich = False
            if o.is_buy and (
                buy_cost(book.k_num, book.k_den, o.price, 1, o.maker_fee) > o.max_quote - o.spent
            ):
                self._remove_live(o)
                return self._order_event(out, ts, o, CANCELLED, R_MAX_QUOTE)
            return self._order_event(out, ts, o, PARTIALLY_FILLED if o.filled else NEW)
        if o.flags:
            if o.is_buy:
                keys = book.ask_heap
                if keys and keys[0] <= new_price:
                    return self._reject(out, cmd, sym, oid, o.user, POST_ONLY_WOULD_MATCH,
                                        keys[0])  # fmt: skip
            else:
                keys = book.bid_heap
                if keys and -keys[0] >= new_price:
                    return self._reject(out, cmd, sym, oid, o.user, POST_ONLY_WOULD_MATCH,
                                        -keys[0])  # fmt: skip
        if mq is not None and o.is_buy:
            o.max_quote = mq
            o.rich = False
        self._unlink(book, o)
        del self.orders[oid]
        o.price = new_price
        o.qty = new_rem
        o.reserve = 0
        self._process(book, o, ts, out, False)
        if book.buy_stops or book.sell_stops:
            self._run_stops(book, ts, out)

    def _mass_cancel(self, cmd, out) -> None:
        _, ts, uid, sym = cmd
        if sym is not None and sym not in self.books:
            return self._reject(out, cmd, sym, None, uid, UNKNOWN_INSTRUMENT)
        mine = [o for o in self.orders.values() if o.user == uid]
        if sym is not None:
            mine = [o for o in mine if o.book.symbol == sym]
        mine.sort(key=lambda o: (o.book.index, o.level is None, o.seq))
        for o in mine:
            self._remove_live(o)
            self._order_event(out, ts, o, CANCELLED, R_USER)

    def _expire_due(self, cmd, out) -> None:
        ts = cmd[1]
        now = cmd[2]
        heap = self._expiry
        orders = self.orders
        due: dict[int, Order] = {}
        while heap and heap[0][0] <= now:
            exp, oid = heapq.heappop(heap)
            o = orders.get(oid)
            if o is not None and o.expire_at == exp:
                due[oid] = o
        for o in sorted(due.values(), key=lambda o: (o.expire_at, o.seq)):
            self._remove_live(o)
            self._order_event(out, ts, o, EXPIRED, R_DAY_EXPIRED if o.tif == DAY else R_GTD_EXPIRED)

    # ======================================================================================
    # Instruments
    # ======================================================================================
    def _new_book(self, inst: Instrument) -> Book:
        book = Book(inst, len(self.books))
        self.books[inst.symbol] = book
        return book

    def _instrument_event(self, out, ts, sym, action) -> None:
        self.ev_seq += 1
        out.append((EV_INSTRUMENT, self.ev_seq, ts, sym, action))

    def _halt(self, cmd, out) -> None:
        book = self.books.get(cmd[2])
        if book is None:
            return self._reject(out, cmd, cmd[2], None, None, UNKNOWN_INSTRUMENT)
        book.halted = True
        book.set_fast()
        self._instrument_event(out, cmd[1], cmd[2], "halted")

    def _resume(self, cmd, out) -> None:
        book = self.books.get(cmd[2])
        if book is None:
            return self._reject(out, cmd, cmd[2], None, None, UNKNOWN_INSTRUMENT)
        book.halted = False
        book.set_fast()
        self._instrument_event(out, cmd[1], cmd[2], "resumed")

    def _add_instrument(self, cmd, out) -> None:
        inst = cmd[2]
        if not isinstance(inst, Instrument):
            return self._reject(out, cmd, None, None, None, INVALID_COMMAND)
        if inst.symbol in self.books:
            return self._reject(out, cmd, inst.symbol, None, None, DUPLICATE_INSTRUMENT)
        self._new_book(inst)
        self._instrument_event(out, cmd[1], inst.symbol, "added")

    def _update_instrument(self, cmd, out) -> None:
        """New rules for a listed symbol (band, collar, minimums, price limits, default STP);
        resting orders stay as they are. Its scale (tick size, lot size, quote decimals) cannot
        change: every resting price and quantity is counted in it.

        With a `day_expire_at` (its session hours changed), every live DAY order of the symbol
        expires then instead: at once when that is not after the command's ts."""
        inst = cmd[2]
        day_expire_at = cmd[3] if len(cmd) > 3 else None
        if not isinstance(inst, Instrument) or not (
            day_expire_at is None or (day_expire_at.__class__ is int and day_expire_at > 0)
        ):
            return self._reject(out, cmd, None, None, None, INVALID_COMMAND)
        book = self.books.get(inst.symbol)
        if book is None:
            return self._reject(out, cmd, inst.symbol, None, None, UNKNOWN_INSTRUMENT)
        old = book.inst
        if (inst.tick_size, inst.lot_size, inst.quote_decimals) != (
            old.tick_size,
            old.lot_size,
            old.quote_decimals,
        ):
            return self._reject(out, cmd, inst.symbol, None, None, INSTRUMENT_SCALE_CHANGED)
        rich_q = book.rich_q
        book.rules_set(inst)
        if book.rich_q > rich_q:  # a higher price_max: no order is known to be "rich" now
            for o in self.orders.values():
                if o.book is book:
                    o.rich = False
        self._instrument_event(out, cmd[1], inst.symbol, "updated")
        if day_expire_at is not None:
            self._day_orders_expire_at(book, day_expire_at, cmd[1], out)

    def _day_orders_expire_at(self, book: Book, expire_at: int, ts: int, out) -> None:
        """Move every live DAY order of `book` to `expire_at` (a stale entry of the expiry heap
        is skipped: its time no longer equals its order's), one EV_EXPIRY_MOVED each, resting
        orders first in priority order, then stops (as a mass cancel: the order table's own
        order differs in an engine rebuilt from its state); they expire now if that is due."""
        expiry = self._expiry
        symbol = book.symbol
        moved = [
            o
            for o in self.orders.values()
            if o.book is book and o.tif == DAY and o.expire_at != expire_at
        ]
        moved.sort(key=lambda o: (o.level is None, o.seq))
        for o in moved:
            before, o.expire_at = o.expire_at, expire_at
            heapq.heappush(expiry, (expire_at, o.id))
            self.ev_seq += 1
            out.append((EV_EXPIRY_MOVED, self.ev_seq, ts, symbol, o.id, o.user, expire_at, before))
        if expire_at <= ts:
            self._expire_due((OP_EXPIRE_DUE, ts, ts), out)

    # ======================================================================================
    # Read side
    # ======================================================================================
    def best_bid(self, symbol: str) -> int | None:
        """Best bid price in ticks, or None."""
        heap = self.books[symbol].bid_heap
        return -heap[0] if heap else None

    def best_ask(self, symbol: str) -> int | None:
        """Best ask price in ticks, or None."""
        heap = self.books[symbol].ask_heap
        return heap[0] if heap else None

    def spread(self, symbol: str) -> int | None:
        """Best ask minus best bid in ticks, or None if a side is empty."""
        b, a = self.best_bid(symbol), self.best_ask(symbol)
        return None if b is None or a is None else a - b

    def mid(self, symbol: str) -> Fraction | None:
        """Exact mid price in ticks, or None if a side is empty."""
        b, a = self.best_bid(symbol), self.best_ask(symbol)
        return None if b is None or a is None else Fraction(a + b, 2)

    def depth(self, symbol: str, n: int = 10) -> tuple[list, list]:
        """Top n levels per side, best first: [(price, visible_qty, order_count)]."""
        book = self.books[symbol]
        if n <= 0:
            return [], []
        bids = book.bids
        asks = book.asks
        return (
            _top_levels(bids, -book.bid_heap[0], -1, n) if bids else [],
            _top_levels(asks, book.ask_heap[0], 1, n) if asks else [],
        )

    def l3(self, symbol: str) -> tuple[list, list]:
        """Every resting order in priority order: [(price, order_id, user_id, visible, seq)]."""
        book = self.books[symbol]
        sides = []
        for levels, descending in ((book.bids, True), (book.asks, False)):
            rows = []
            for p in sorted(levels, reverse=descending):
                o = levels[p].head
                while o is not None:
                    rows.append((p, o.id, o.user, o.qty, o.seq))
                    o = o.next
            sides.append(rows)
        return sides[0], sides[1]

    def book_seq(self, symbol: str) -> int:
        """Update sequence number of the book (one per command that changed its levels)."""
        return self.books[symbol].seq

    def last_price(self, symbol: str) -> int | None:
        """Last trade price in ticks, or None."""
        return self.books[symbol].last

    def is_halted(self, symbol: str) -> bool:
        """Whether the instrument is halted."""
        return self.books[symbol].halted

    def instruments(self) -> list[Instrument]:
        """Instruments in add order."""
        return [b.inst for b in self.books.values()]

    def drain_level_changes(self) -> dict[str, tuple[int, list]]:
        """Levels touched since the last drain: {symbol: (book_seq, [(is_buy, price, qty, n)])}."""
        result = {}
        for sym, book in self.books.items():
            if not (book.changed_b or book.changed_a or book.gone_b or book.gone_a):
                continue
            # A changed level still in use is at its price on its side (pools are per side); one
            # pooled since (count 0) reports through its old price in gone_*. Any level now at a
            # gone price was created since, so it is in changed_* and the gone row is skipped.
            bids = book.bids
            asks = book.asks
            for lvl in book.changed_b:
                lvl.marked = False
            for lvl in book.changed_a:
                lvl.marked = False
            rows = [(True, lvl.price, lvl.qty, lvl.count) for lvl in book.changed_b if lvl.count]
            rows += [(True, p, 0, 0) for p in book.gone_b if p not in bids]
            rows.sort(key=_ROW_PRICE, reverse=True)
            changes = rows
            rows = [(False, lvl.price, lvl.qty, lvl.count) for lvl in book.changed_a if lvl.count]
            rows += [(False, p, 0, 0) for p in book.gone_a if p not in asks]
            rows.sort(key=_ROW_PRICE)
            changes += rows
            book.changed_b.clear()
            book.changed_a.clear()
            book.gone_b.clear()
            book.gone_a.clear()
            result[sym] = (book.seq, changes)
        return result

    def order(self, order_id: int) -> dict | None:
        """A live order as a dict (fields of the order record plus status), or None."""
        o = self.orders.get(order_id)
        if o is None:
            return None
        d = dict(zip(RECORD_FIELDS, o.record(), strict=True))
        d["status"] = o.live_status()
        d["remaining"] = o.qty + o.reserve
        return d

    def live_state(self, order_id: int) -> tuple | None:
        """`(status, filled, remaining, reserve, price, seq, quote_spent, max_quote,
        expire_at)` of a live order: those fields of `order(order_id)` without building the
        dict (the worker reads them for every order a batch touched), or None."""
        o = self.orders.get(order_id)
        if o is None:
            return None
        return (
            o.live_status(),
            o.filled,
            o.qty + o.reserve,
            o.reserve,
            o.price,
            o.seq,
            o.spent,
            o.max_quote,
            o.expire_at,
        )

    def priority_seq(self, order_id: int) -> int | None:
        """A live order's priority sequence (`order(order_id)["seq"]` without building the
        dict), or None."""
        o = self.orders.get(order_id)
        return None if o is None else o.seq

    # ======================================================================================
    # State: export, bulk load, hash, snapshot
    # ======================================================================================
    def resting_orders(self) -> list[tuple]:
        """Records of every resting order: per book, bids best first then asks, queue order."""
        rows = []
        for book in self.books.values():
            for levels, descending in ((book.bids, True), (book.asks, False)):
                for p in sorted(levels, reverse=descending):
                    o = levels[p].head
                    while o is not None:
                        rows.append(o.record())
                        o = o.next
        return rows

    def stop_orders(self) -> list[tuple]:
        """Records of every untriggered stop, in seq order."""
        stops = []
        for book in self.books.values():
            stops.extend(e[2] for e in book.buy_stops)
            stops.extend(e[2] for e in book.sell_stops)
        stops.sort(key=lambda o: o.seq)
        return [o.record() for o in stops]

    def export_state(self) -> dict:
        """Plain-data state (everything bulk_load needs); see API.md."""
        return {
            "version": STATE_VERSION,
            "instruments": [b.inst.as_tuple() for b in self.books.values()],
            "counters": (self.ev_seq, self.trade_seq),
            "books": [(b.symbol, b.halted, b.seq, b.last) for b in self.books.values()],
            "orders": self.resting_orders(),
            "stops": self.stop_orders(),
        }

    @classmethod
    def bulk_load(cls, state: dict) -> Engine:
        """Rebuild an engine from export_state() data without matching (orders in priority).

        The garbage collector is paused while loading (millions of linked objects); the worker
        may call gc.freeze() afterwards so later collections skip them.
        """
        if state.get("version") != STATE_VERSION:
            raise ValueError("unsupported engine state version")
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            eng = cls._load(state)
        finally:
            if was_enabled:
                gc.enable()
        return eng

    @classmethod
    def _load(cls, state: dict) -> Engine:
        eng = cls([Instrument.from_tuple(tuple(t)) for t in state["instruments"]])
        eng.ev_seq, eng.trade_seq = state["counters"]
        books = eng.books
        for sym, halted, seq, last in state["books"]:
            b = books[sym]
            b.halted = halted
            b.set_fast()
            b.seq = seq
            b.last = last
        orders = eng.orders
        expiry = eng._expiry
        new = Order
        for rec in state["orders"]:
            (oid, uid, sym, is_buy, otype, price, qty, reserve, disp, filled, seq, tif, exp,
             flags, stop_px, mq, spent, mfee, tfee, stp) = rec  # fmt: skip
            book = books[sym]
            o = new()
            o.id = oid
            o.user = uid
            o.book = book
            o.is_buy = is_buy
            o.type = otype
            o.price = price
            o.qty = qty
            o.reserve = reserve
            o.display = disp
            o.filled = filled
            o.seq = seq
            o.tif = tif
            o.expire_at = exp
            o.flags = flags
            o.stop_price = stop_px
            o.max_quote = mq
            o.spent = spent
            o.rich = False
            o.maker_fee = mfee
            o.taker_fee = tfee
            o.stp = stp
            levels = book.bids if is_buy else book.asks
            lvl = levels.get(price)
            if lvl is None:
                lvl = levels[price] = Level(price)
            tail = lvl.tail
            o.level = lvl
            o.prev = tail
            o.next = None
            if tail is None:
                lvl.head = o
            else:
                tail.next = o
            lvl.tail = o
            lvl.qty += qty
            lvl.count += 1
            orders[oid] = o
            if exp:
                expiry.append((exp, oid))
        for book in books.values():
            book.bid_cap = _rebuild(book.bid_heap, book.bids, -1)
            book.ask_cap = _rebuild(book.ask_heap, book.asks, 1)
        for rec in state["stops"]:
            (oid, uid, sym, is_buy, otype, price, qty, reserve, disp, filled, seq, tif, exp,
             flags, stop_px, mq, spent, mfee, tfee, stp) = rec  # fmt: skip
            book = books[sym]
            o = new()
            (o.id, o.user, o.book, o.is_buy, o.type, o.price, o.qty, o.reserve, o.display,
             o.filled, o.seq, o.tif, o.expire_at, o.flags, o.stop_price, o.max_quote, o.spent,
             o.maker_fee, o.taker_fee, o.stp) = (oid, uid, book, is_buy, otype, price, qty,
                                                 reserve, disp, filled, seq, tif, exp, flags,
                                                 stop_px, mq, spent, mfee, tfee, stp)  # fmt: skip
            o.level = o.prev = o.next = None
            o.rich = False
            if is_buy:
                book.buy_stops.append((stop_px, seq, o))
            else:
                book.sell_stops.append((-stop_px, seq, o))
            orders[oid] = o
            if exp:
                expiry.append((exp, oid))
        for book in books.values():
            book.buy_stops.sort(key=lambda e: e[:2])
            book.sell_stops.sort(key=lambda e: e[:2])
        heapq.heapify(expiry)
        eng._expiry_kept = len(expiry)
        return eng

    def state_hash(self) -> str:
        """sha256 hex of the canonical state (books, stops, reserves, counters, book seqs)."""
        h = hashlib.sha256()
        st = self.export_state()
        h.update(repr((st["version"], st["instruments"], st["counters"], st["books"])).encode())
        orders = st["orders"]
        for i in range(0, len(orders), 4096):
            h.update(repr(orders[i : i + 4096]).encode())
        h.update(repr(st["stops"]).encode())
        return h.hexdigest()

    def snapshot(self) -> bytes:
        """Serialize the full state to bytes (flat lists of plain tuples, marshal)."""
        return marshal.dumps(self.export_state())

    @classmethod
    def restore(cls, data: bytes) -> Engine:
        """Inverse of snapshot()."""
        return cls.bulk_load(marshal.loads(data))


RECORD_FIELDS = (
    "order_id",
    "user_id",
    "symbol",
    "is_buy",
    "order_type",
    "price",
    "visible",
    "reserve",
    "display",
    "filled",
    "seq",
    "tif",
    "expire_at",
    "flags",
    "stop_price",
    "max_quote",
    "quote_spent",
    "maker_fee_ppm",
    "taker_fee_ppm",
    "stp",
)

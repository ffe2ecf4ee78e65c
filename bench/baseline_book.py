"""Baseline order book for the engine benchmark: a SortedDict of price -> deque per side.

The yardstick of fixed design the engine is measured against: price-time priority limit orders,
cancel by `deque.remove`, no STP, fees or budgets. Plain idiomatic code, neither slowed down
nor tuned. Trades are `(maker_id, taker_id, price, qty)` tuples, as the benchmark compares them
with the engine's.
"""

from __future__ import annotations

from collections import deque

from sortedcontainers import SortedDict


class RestingOrder:
    """One order in the book; `qty` is what is still open."""

    __slots__ = ("is_buy", "order_id", "price", "qty", "user_id")

    def __init__(self, order_id: int, user_id: int, is_buy: bool, price: int, qty: int) -> None:
        self.order_id = order_id
        self.user_id = user_id
        self.is_buy = is_buy
        self.price = price
        self.qty = qty


class BaselineBook:
    """Limit order book with place, cancel, move (loses priority) and reduce (keeps it)."""

    def __init__(self) -> None:
        self.bids: SortedDict = SortedDict()  # price -> deque[RestingOrder]; best bid is last
        self.asks: SortedDict = SortedDict()  # price -> deque[RestingOrder]; best ask is first
        self.orders: dict[int, RestingOrder] = {}

    def place(
        self, order_id: int, user_id: int, is_buy: bool, price: int, qty: int, ioc: bool
    ) -> list[tuple[int, int, int, int]]:
        """Match a limit order, then rest what is left (an IOC remainder is dropped)."""
        trades = []
        opposite = self.asks if is_buy else self.bids
        while qty and opposite:
            level_price, queue = opposite.peekitem(0 if is_buy else -1)
            if level_price > price if is_buy else level_price < price:
                break
            while qty and queue:
                maker = queue[0]
                fill = min(qty, maker.qty)
                trades.append((maker.order_id, order_id, level_price, fill))
                qty -= fill
                maker.qty -= fill
                if not maker.qty:
                    queue.popleft()
                    del self.orders[maker.order_id]
            if not queue:
                del opposite[level_price]
        if qty and not ioc:
            order = RestingOrder(order_id, user_id, is_buy, price, qty)
            side = self.bids if is_buy else self.asks
            queue = side.get(price)
            if queue is None:
                queue = side[price] = deque()
            queue.append(order)
            self.orders[order_id] = order
        return trades

    def cancel(self, order_id: int) -> bool:
        """Remove a resting order; False if it is not in the book."""
        order = self.orders.pop(order_id, None)
        if order is None:
            return False
        side = self.bids if order.is_buy else self.asks
        queue = side[order.price]
        queue.remove(order)
        if not queue:
            del side[order.price]
        return True

    def move(self, order_id: int, new_price: int) -> list[tuple[int, int, int, int]]:
        """Cancel and re-place the open quantity at new_price: back of the queue, may trade."""
        order = self.orders.get(order_id)
        if order is None:
            return []
        self.cancel(order_id)
        return self.place(order_id, order.user_id, order.is_buy, new_price, order.qty, False)

    def reduce(self, order_id: int, new_remaining_qty: int) -> bool:
        """Lower the open quantity in place, keeping priority; False if not a reduction."""
        order = self.orders.get(order_id)
        if order is None or not 0 < new_remaining_qty <= order.qty:
            return False
        order.qty = new_remaining_qty
        return True

    def best_bid(self) -> int | None:
        return self.bids.peekitem(-1)[0] if self.bids else None

    def best_ask(self) -> int | None:
        return self.asks.peekitem(0)[0] if self.asks else None

"""Baseline order book for the engine benchmark: SortedDict price -> deque, cancel by remove.

Deliberately plain (no STP, fees or budgets): the yardstick our engine must beat.
"""

from __future__ import annotations

from collections import deque

from sortedcontainers import SortedDict


class BaselineBook:
    """Price-time priority limit order book with place/cancel/move/reduce."""

    def __init__(self) -> None:
        self.bids: SortedDict = SortedDict()
        self.asks: SortedDict = SortedDict()
        self.orders: dict[int, list] = {}  # id -> [id, user, is_buy, price, qty]

    def place(self, order_id, user_id, is_buy, price, qty, ioc) -> list[tuple]:
        """Match against the opposite side, rest the remainder unless IOC."""
        trades = []
        book = self.asks if is_buy else self.bids
        while qty and book:
            best_price, queue = book.peekitem(0) if is_buy else book.peekitem(-1)
            if (best_price > price) if is_buy else (best_price < price):
                break
            while qty and queue:
                maker = queue[0]
                fill = min(qty, maker[4])
                trades.append((maker[0], order_id, best_price, fill))
                qty -= fill
                maker[4] -= fill
                if not maker[4]:
                    queue.popleft()
                    del self.orders[maker[0]]
            if not queue:
                del book[best_price]
        if qty and not ioc:
            order = [order_id, user_id, is_buy, price, qty]
            self.orders[order_id] = order
            side = self.bids if is_buy else self.asks
            queue = side.get(price)
            if queue is None:
                queue = side[price] = deque()
            queue.append(order)
        return trades

    def cancel(self, order_id) -> bool:
        """Remove a resting order."""
        order = self.orders.pop(order_id, None)
        if order is None:
            return False
        side = self.bids if order[2] else self.asks
        queue = side[order[3]]
        queue.remove(order)
        if not queue:
            del side[order[3]]
        return True

    def move(self, order_id, new_price) -> list[tuple]:
        """Cancel and re-place at new_price with the remaining quantity (loses priority)."""
        order = self.orders.get(order_id)
        if order is None:
            return []
        self.cancel(order_id)
        return self.place(order_id, order[1], order[2], new_price, order[4], False)

    def reduce(self, order_id, new_total_qty_remaining) -> bool:
        """Lower the remaining quantity in place (keeps priority)."""
        order = self.orders.get(order_id)
        if order is None or not 0 < new_total_qty_remaining < order[4]:
            return False
        order[4] = new_total_qty_remaining
        return True

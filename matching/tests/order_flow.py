"""A background stream of orders for the crash/takeover/flush tests."""

import random
import threading
import time

from django.db import DatabaseError, connection

from exchange.models import Instrument
from matching.tests.order_rows import order_cancel_enqueue, order_row_place


class OrderFlow(threading.Thread):
    """Places (and now and then cancels) crossing limit orders until stopped; `acked` holds the
    ids of the orders whose transaction committed."""

    def __init__(self, *, instrument: Instrument, users: list, seed: int = 7) -> None:
        super().__init__(daemon=True)
        self.instrument = instrument
        self.users = users
        self.random = random.Random(seed)
        self.stop = threading.Event()
        self.acked: list[int] = []
        self.errors: list[str] = []

    def run(self) -> None:
        rnd = self.random
        try:
            while not self.stop.is_set():
                side = rnd.choice(("buy", "sell"))
                try:
                    order = order_row_place(
                        user=rnd.choice(self.users),
                        instrument=self.instrument,
                        side=side,
                        quantity=str(rnd.randint(1, 5)),
                        price=f"{100 + rnd.randint(-4, 4)}.00",
                    )
                    self.acked.append(order.pk)
                    if rnd.random() < 0.1:
                        order_cancel_enqueue(order)
                except DatabaseError as exc:
                    self.errors.append(str(exc))
                time.sleep(0.002)
        finally:
            connection.close()

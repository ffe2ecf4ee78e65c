"""Order entry in batches: the orders (and cancels) a web process receives together are stored
together.

Each request validates its order itself (`services.order_plan`) and hands the plan to the
process's one `OrderBatcher`, then waits. A batcher thread takes every plan waiting (up to
`ORDER_ENTRY_BATCH_MAX`) and stores them with `services.orders_store` in ONE transaction on its
own database connection: one commit, one lock of the ledger accounts and one INSERT per table
for the whole batch, instead of one of each per order. Under load a batch forms while the
previous one commits; a lone order is stored at once (no timer). `ORDER_ENTRY_BATCH_THREADS`
threads take batches from the same queue, so one batch's round trips to PostgreSQL overlap
another's (their commands still get ids in commit order: see
`matching.services.COMMAND_ORDER_LOCK_KEY`). Between batches, when nothing waits, a thread's
connection goes back to the pool. Every plan gets its own
answer: an order that is refused (insufficient balance, client_order_id conflict) does not
affect the others; a failure of the transaction itself is raised to every waiter of that batch
(nothing of it was stored). Cancels (`services.CancelPlan`) go in the same transaction.
"""

import logging
import queue
import threading
from concurrent.futures import Future

from django.conf import settings
from django.db import connection

from exchange.api_errors import database_unavailable
from exchange.view_threads import query_log_forget

logger = logging.getLogger(__name__)


class OrderBatcher:
    """One per process; `store` is safe to call from any thread."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def store(self, plan):
        """Store `plan` (an OrderPlan or a CancelPlan) in the next batch; returns what
        `orders_store` / `orders_cancel_store` gives for it (an ApiError is returned, not
        raised)."""
        return self.submit(plan).result()

    def submit(self, plan) -> Future:
        """Queue `plan`; the future resolves to what `store` returns."""
        future: Future = Future()
        self._queue.put((plan, future))
        if len(self._threads) < settings.ORDER_ENTRY_BATCH_THREADS or not all(
            thread.is_alive() for thread in self._threads
        ):
            self._start()
        return future

    def _start(self) -> None:
        with self._lock:
            self._threads = [thread for thread in self._threads if thread.is_alive()]
            while len(self._threads) < settings.ORDER_ENTRY_BATCH_THREADS:
                thread = threading.Thread(
                    target=self._run, name=f"order-batcher-{len(self._threads)}", daemon=True
                )
                thread.start()
                self._threads.append(thread)

    def _run(self) -> None:
        limit = settings.ORDER_ENTRY_BATCH_MAX
        while True:
            batch = [self._queue.get()]
            while len(batch) < limit:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            query_log_forget()  # each batch is a request of its own
            self._store(batch)
            if self._queue.empty():
                connection.close()  # idle: the connection goes back to the pool

    def _store(self, batch: list[tuple]) -> None:
        from exchange.services import OrderPlan, entry_batch_store

        places = [(plan, future) for plan, future in batch if isinstance(plan, OrderPlan)]
        cancels = [(plan, future) for plan, future in batch if not isinstance(plan, OrderPlan)]
        try:
            connection.close_if_unusable_or_obsolete()
            placed, cancelled = entry_batch_store(
                plans=[plan for plan, _ in places], cancels=[plan for plan, _ in cancels]
            )
        except Exception as exc:  # every waiter must hear of the failure
            if database_unavailable(exc):
                # An outage its clients retry through (503), logged as REST logs one: a
                # traceback at ERROR per batch had read as a bug, 22 of them in one stall.
                logger.warning(
                    "order entry batch failed: database out of reach",
                    extra={"requests": len(batch), "why": str(exc).strip()[:200]},
                )
            else:
                logger.exception("order entry batch failed", extra={"requests": len(batch)})
            connection.close()
            for _, future in batch:
                future.set_exception(exc)
            return
        for (_, future), result in zip(places + cancels, placed + cancelled, strict=True):
            future.set_result(result)


order_batcher = OrderBatcher()

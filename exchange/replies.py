"""Waiting for the matching worker's answer to a command, up to a deadline.

Each web process has one subscriber to the replies channel (the worker publishes the ids of the
commands each committed batch applied); it remembers the most recent ids. A request registers
its command id and reads the database only once the command is known to be applied (woken, or
among the remembered ids when the reply came before it registered), or after a second without
news, or when Redis is down (then it polls the database, so answers still arrive).
"""

import json
import logging
import threading
import time
from collections.abc import Callable

import redis
from django.conf import settings
from django.db import connection

from matching.transport import replies_channel

logger = logging.getLogger(__name__)

DB_POLL_SECONDS = 0.1
RECENT_REPLIES = 65_536  # applied command ids remembered, for waiters that register late


def release_db_connection() -> None:
    """Hand this thread's database connection back to the pool before it blocks (outside a
    transaction): a thread waiting for the engine, or for the order entry batch, must not hold
    one, or as many waiting threads as the pool has connections starve the batch that would
    wake them."""
    if not connection.in_atomic_block:
        connection.close()


class ReplyHub:
    """One per process: a listener thread that wakes the requests waiting on command ids."""

    def __init__(self, *, recheck_seconds: float = 1.0) -> None:
        # Each command's waiters: one request each, and several may wait on one command (the
        # same client_order_id sent again while the first is still waiting).
        self._waiters: dict[int, list[threading.Event]] = {}
        self.recheck_seconds = recheck_seconds  # the longest sleep without a wake-up
        self._recent: dict[int, None] = {}  # insertion-ordered: the oldest ids go first
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.connected = threading.Event()

    def _ensure_listening(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._listen, name="reply-hub", daemon=True)
                self._thread.start()

    def _listen(self) -> None:
        while True:
            try:
                # Its own connection without a read timeout: a quiet channel is not an error.
                client = redis.Redis.from_url(
                    settings.REDIS_URL, socket_connect_timeout=1, health_check_interval=15
                )
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(replies_channel())
                self.connected.set()
                while True:
                    message = pubsub.get_message(timeout=5.0)
                    if message is not None:
                        self._wake(json.loads(message["data"]))
            except (redis.RedisError, OSError, ValueError) as exc:
                self.connected.clear()
                logger.warning("reply listener reconnecting", extra={"why": str(exc)})
                time.sleep(0.5)

    def _wake(self, command_ids: list[int]) -> None:
        with self._lock:
            recent = self._recent
            for command_id in command_ids:
                recent[command_id] = None
            while len(recent) > RECENT_REPLIES:
                del recent[next(iter(recent))]
            events = [
                event for command_id in command_ids for event in self._waiters.get(command_id, ())
            ]
        for event in events:
            event.set()

    def wait(self, command_id: int, *, done: Callable[[], bool], timeout: float) -> bool:
        """Wait until `done()` is true (checked on each wake-up) or `timeout`; return done()."""
        self._ensure_listening()
        event = threading.Event()
        with self._lock:
            self._waiters.setdefault(command_id, []).append(event)
        try:
            deadline = time.monotonic() + timeout
            check = not self.connected.is_set() or command_id in self._recent
            while True:
                if check and done():
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                release_db_connection()
                # Connected: sleep until woken (recheck_seconds at most). Not connected: poll.
                slice_ = remaining if self.connected.is_set() else DB_POLL_SECONDS
                event.wait(min(remaining, slice_, self.recheck_seconds))
                event.clear()
                check = True
        finally:
            with self._lock:
                waiting = self._waiters[command_id]
                waiting.remove(event)
                if not waiting:
                    del self._waiters[command_id]


reply_hub = ReplyHub()

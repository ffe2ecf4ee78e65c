"""Waiting for the matching worker's answer to a command, up to a deadline.

Each web process has one subscriber to the replies channel (the worker publishes the ids of the
commands each committed batch applied). A request registers its command id, re-checks the
database once (the reply may have come before it registered), then sleeps until woken or the
deadline. Without Redis the wait falls back to polling the database, so answers still arrive.
"""

import json
import logging
import threading
import time
from collections.abc import Callable

import redis
from django.conf import settings

from matching.transport import replies_channel

logger = logging.getLogger(__name__)

DB_POLL_SECONDS = 0.1


class ReplyHub:
    """One per process: a listener thread that wakes the requests waiting on command ids."""

    def __init__(self) -> None:
        self._waiters: dict[int, threading.Event] = {}
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
            events = [self._waiters.get(command_id) for command_id in command_ids]
        for event in events:
            if event is not None:
                event.set()

    def wait(self, command_id: int, *, done: Callable[[], bool], timeout: float) -> bool:
        """Wait until `done()` is true (checked on each wake-up) or `timeout`; return done()."""
        self._ensure_listening()
        event = threading.Event()
        with self._lock:
            self._waiters[command_id] = event
        try:
            deadline = time.monotonic() + timeout
            while True:
                if done():
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                # Connected: sleep until woken. Not connected: poll the database.
                slice_ = remaining if self.connected.is_set() else DB_POLL_SECONDS
                event.wait(min(remaining, slice_, 1.0))
                event.clear()
        finally:
            with self._lock:
                self._waiters.pop(command_id, None)


reply_hub = ReplyHub()

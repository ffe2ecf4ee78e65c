"""Reference client of the streaming WebSocket: `python -m exchange.wsclient --symbol AAPL`.

Keeps a local book from the `snapshot` and `update` frames of `book.<symbol>`, checks that each
update continues the last seq (prev_seq) and that the CRC32 checksum of its top 10 levels
matches, and resubscribes for a fresh snapshot when either fails. Answers the server's pings.
A refused subscription of the book is tried again a second later when the refusal is for the
moment (Redis or the database out of reach, the message rate), and ends the client otherwise (an
unknown symbol: exit status 1, the server's error printed), as does a socket the server closes.
With an API key (`--api-key`, secret in EXCHANGE_API_SECRET) it logs in with a signed `login`
op and prints your order events too. Importable by tests and benchmarks (no Django needed).
"""

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable
from decimal import Decimal

import websockets

from accounts.signing import ws_login_message
from exchange.book_checksum import book_checksum

# The id of the client's own subscribe ops: their refusals repeat it.
SUBSCRIBE_ID = "book"
# Refusals of the book's subscription for the moment (docs/websocket.md): tried again.
RETRYABLE_ERRORS = ("ServiceUnavailable", "TooManyRequests")
RETRY_SECONDS = 1.0


class SubscriptionRefused(Exception):
    """The server refused the book's subscription for good (an unknown symbol, say)."""

    def __init__(self, frame: dict) -> None:
        super().__init__(f"{frame.get('error')} ({frame.get('code')}): {frame.get('message')}")
        self.frame = frame


class LocalBook:
    """A book kept from snapshot + updates: price -> (price string, quantity string)."""

    def __init__(self) -> None:
        self.bids: dict[Decimal, tuple[str, str]] = {}
        self.asks: dict[Decimal, tuple[str, str]] = {}
        self.seq: int | None = None

    def load(self, frame: dict) -> None:
        self.bids = {Decimal(p): (p, q) for p, q in frame["bids"]}
        self.asks = {Decimal(p): (p, q) for p, q in frame["asks"]}
        self.seq = frame["seq"]

    def apply(self, frame: dict) -> None:
        for side, rows in ((self.bids, frame["bids"]), (self.asks, frame["asks"])):
            for row in rows:
                price, qty = row[0], row[1]
                if Decimal(qty) == 0:
                    side.pop(Decimal(price), None)
                else:
                    side[Decimal(price)] = (price, qty)
        self.seq = frame["seq"]

    def top(self, depth: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        bids = [self.bids[k] for k in sorted(self.bids, reverse=True)[:depth]]
        asks = [self.asks[k] for k in sorted(self.asks)[:depth]]
        return bids, asks

    def checksum(self) -> int:
        return book_checksum(*self.top(10))


class BookClient:
    """Follows one symbol's book (and optionally other channels) over one connection."""

    def __init__(
        self,
        url: str,
        symbol: str,
        *,
        depth: int = 50,
        extra_channels: tuple[str, ...] = (),
        on_frame: Callable[[dict, int], None] | None = None,
        api_key: tuple[str, str] | None = None,
    ) -> None:
        self.url = url
        self.api_key = api_key  # (key, secret): log in before subscribing
        self.symbol = symbol
        self.depth = depth
        self.channel = f"book.{symbol}"
        self.extra_channels = extra_channels
        self.on_frame = on_frame  # called with (frame, receive time ns) for every frame
        self.book = LocalBook()
        self.awaiting_snapshot = True
        self.snapshots = self.updates = self.gaps = self.checksum_errors = 0
        # The instrument's trading status as the status frames tell it ("trading" until one
        # says otherwise; a subscription made during a halt gets one right behind the
        # snapshot), and staff's reason.
        self.status, self.status_reason = "trading", None
        self.drop_next_updates = 0  # tests: drop this many updates on purpose (forces a gap)
        self.refusals = 0  # subscriptions of the book refused for the moment, then tried again
        self._retry: asyncio.Task | None = None
        self.ws = None
        self.ready = asyncio.Event()

    async def _send(self, message: dict) -> None:
        await self.ws.send(json.dumps(message))

    async def _subscribe(self, channels: list[str]) -> None:
        await self._send(
            {"op": "subscribe", "channels": channels, "depth": self.depth, "id": SUBSCRIBE_ID}
        )

    async def resync(self) -> None:
        """Ask for a fresh snapshot: unsubscribe and subscribe again."""
        self.awaiting_snapshot = True
        await self._send({"op": "unsubscribe", "channels": [self.channel]})
        await self._subscribe([self.channel])

    async def _subscribe_again(self, channels: list[str]) -> None:
        await asyncio.sleep(RETRY_SECONDS)
        with contextlib.suppress(websockets.ConnectionClosed):
            await self._subscribe(channels)

    def _refused(self, frame: dict) -> None:
        """A refusal of one of the client's subscribe ops that concerns the book: the whole
        message (the rate, say) or the book's channel; another channel's is not the book's."""
        if frame.get("error") not in RETRYABLE_ERRORS:
            raise SubscriptionRefused(frame)
        self.refusals += 1
        # The first subscription again with every channel it named; a resync's, the book's.
        first = self.snapshots == 0 and frame.get("channel") is None
        channels = [self.channel, *self.extra_channels] if first else [self.channel]
        self._retry = asyncio.ensure_future(self._subscribe_again(channels))

    async def handle(self, frame: dict) -> None:
        kind = frame.get("type")
        if kind == "ping":
            await self._send({"op": "pong", "id": frame.get("id")})
            return
        if (
            kind == "error"
            and frame.get("op") == "subscribe"
            and frame.get("id") == SUBSCRIBE_ID
            and frame.get("channel") in (None, self.channel)
        ):
            self._refused(frame)
            return
        if frame.get("channel") != self.channel:
            return
        if kind == "snapshot":
            self.book.load(frame)
            self.awaiting_snapshot = False
            self.snapshots += 1
            self.ready.set()
        elif kind == "status":
            self.status = frame["data"]["status"]
            self.status_reason = frame["data"].get("reason")
        elif kind == "update" and not self.awaiting_snapshot:
            if frame["seq"] <= self.book.seq:
                return  # already in the snapshot
            if self.drop_next_updates:
                self.drop_next_updates -= 1
                return
            if frame["prev_seq"] != self.book.seq:
                self.gaps += 1
                await self.resync()
                return
            self.book.apply(frame)
            self.updates += 1
            if self.book.checksum() != frame["checksum"]:
                self.checksum_errors += 1
                await self.resync()

    async def run(self, *, stop: asyncio.Event | None = None) -> None:
        """Connect, subscribe, and follow the book until `stop` is set or the socket closes."""
        stop = stop or asyncio.Event()
        async with websockets.connect(self.url, max_size=None, ping_interval=None) as ws:
            self.ws = ws
            if self.api_key is not None:
                key, secret = self.api_key
                now_ms = time.time_ns() // 1_000_000
                await self._send(ws_login_message(api_key=key, secret=secret, timestamp_ms=now_ms))
            await self._subscribe([self.channel, *self.extra_channels])
            stopping = asyncio.ensure_future(stop.wait())
            try:
                while not stop.is_set():
                    receiving = asyncio.ensure_future(ws.recv())
                    await asyncio.wait({receiving, stopping}, return_when=asyncio.FIRST_COMPLETED)
                    if not receiving.done():
                        receiving.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await receiving
                        break
                    raw = receiving.result()
                    received_ns = time.time_ns()
                    frame = json.loads(raw)
                    if self.on_frame is not None:
                        self.on_frame(frame, received_ns)
                    await self.handle(frame)
            finally:
                stopping.cancel()
                if self._retry is not None:
                    self._retry.cancel()


def print_top(client: BookClient, levels: int) -> None:
    bids, asks = client.book.top(levels)
    print(
        f"seq {client.book.seq}  updates {client.updates}  gaps {client.gaps}  "
        f"checksum errors {client.checksum_errors}  snapshots {client.snapshots}"
    )
    if client.status != "trading":
        print(
            f"  {client.status.upper()}"
            + (f": {client.status_reason}" if client.status_reason else "")
        )
    for i in range(max(len(bids), len(asks))):
        bid = f"{bids[i][1]:>12} @ {bids[i][0]:<12}" if i < len(bids) else " " * 27
        ask = f"{asks[i][0]:>12} x {asks[i][1]:<12}" if i < len(asks) else ""
        print(f"  {bid} | {ask}")


def print_private(frame: dict, received_ns: int) -> None:
    """Order events and login or error answers (the book is printed once a second)."""
    if frame.get("channel") == "orders" or frame.get("type") in ("login", "error"):
        print(json.dumps(frame))


async def follow(
    url: str,
    symbol: str,
    depth: int,
    levels: int,
    seconds: float | None,
    api_key: tuple[str, str] | None = None,
) -> int:
    """Follow the book, printing its top every second; the exit status (1: the server refused
    the book or closed the socket)."""
    client = BookClient(
        url,
        symbol,
        depth=depth,
        extra_channels=("orders",) if api_key else (),
        on_frame=print_private,
        api_key=api_key,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(client.run(stop=stop))
    started = time.monotonic()
    try:
        while not task.done():
            await asyncio.sleep(1.0)
            if client.book.seq is not None:
                print_top(client, levels)
            if seconds is not None and time.monotonic() - started > seconds:
                stop.set()
    finally:
        stop.set()
        await asyncio.wait({task})
    try:
        task.result()
    except SubscriptionRefused as refused:
        print(f"subscription of {client.channel} refused: {refused}", file=sys.stderr)
        return 1
    except websockets.ConnectionClosed as closed:
        print(f"the server closed the socket: {closed}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m exchange.wsclient")
    parser.add_argument("--url", default="ws://127.0.0.1:8000/ws/v1")
    parser.add_argument("--symbol", required=True)
    parser.add_argument("--depth", type=int, default=50)
    parser.add_argument("--levels", type=int, default=5, help="levels printed per side")
    parser.add_argument("--seconds", type=float, default=None, help="stop after this long")
    parser.add_argument(
        "--api-key", help="log in with this API key (its secret in EXCHANGE_API_SECRET)"
    )
    args = parser.parse_args(argv)
    api_key = None
    if args.api_key:
        secret = os.environ.get("EXCHANGE_API_SECRET")
        if not secret:
            parser.error("--api-key needs the key's secret in EXCHANGE_API_SECRET")
        api_key = (args.api_key, secret)
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(
            follow(args.url, args.symbol, args.depth, args.levels, args.seconds, api_key)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

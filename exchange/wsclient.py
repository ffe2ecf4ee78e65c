"""Reference client of the streaming WebSocket: `python -m exchange.wsclient --symbol AAPL`.

Keeps a local book from the `snapshot` and `update` frames of `book.<symbol>`, checks that each
update continues the last seq (prev_seq) and that the CRC32 checksum of its top 10 levels
matches, and resubscribes for a fresh snapshot when either fails. Answers the server's pings.
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
        self.ws = None
        self.ready = asyncio.Event()

    async def _send(self, message: dict) -> None:
        await self.ws.send(json.dumps(message))

    async def resync(self) -> None:
        """Ask for a fresh snapshot: unsubscribe and subscribe again."""
        self.awaiting_snapshot = True
        await self._send({"op": "unsubscribe", "channels": [self.channel]})
        await self._send({"op": "subscribe", "channels": [self.channel], "depth": self.depth})

    async def handle(self, frame: dict) -> None:
        kind = frame.get("type")
        if kind == "ping":
            await self._send({"op": "pong", "id": frame.get("id")})
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
            await self._send(
                {
                    "op": "subscribe",
                    "channels": [self.channel, *self.extra_channels],
                    "depth": self.depth,
                }
            )
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
) -> None:
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
        await task


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
        asyncio.run(follow(args.url, args.symbol, args.depth, args.levels, args.seconds, api_key))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

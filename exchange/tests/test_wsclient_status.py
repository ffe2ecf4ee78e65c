"""The reference client: the trading status from the status frames, refused subscriptions."""

import asyncio
import json

import pytest

from exchange import wsclient
from exchange.wsclient import BookClient


def test_the_reference_client_follows_the_status_frames_of_its_book():
    client = BookClient("ws://unused", "AAPL")
    assert (client.status, client.status_reason) == ("trading", None)
    halted = {"symbol": "AAPL", "status": "halted", "reason": "Pending news"}
    frames = [
        {"channel": "book.AAPL", "type": "status", "data": halted},
        # Another book's frame (not this client's channel) changes nothing.
        {"channel": "book.MSFT", "type": "status", "data": {"symbol": "MSFT", "status": "x"}},
    ]
    for frame in frames:
        asyncio.run(client.handle(frame))
    assert (client.status, client.status_reason) == ("halted", "Pending news")
    resumed = {"symbol": "AAPL", "status": "trading", "ts_ns": 1}
    asyncio.run(client.handle({"channel": "book.AAPL", "type": "status", "data": resumed}))
    assert (client.status, client.status_reason) == ("trading", None)


class SentFrames:
    """Stands in for the socket: keeps what the client sends."""

    def __init__(self) -> None:
        self.sent: list[dict] = []

    async def send(self, raw: str) -> None:
        self.sent.append(json.loads(raw))


def test_a_refusal_for_the_moment_is_tried_again_and_any_other_ends_the_client(monkeypatch):
    monkeypatch.setattr(wsclient, "RETRY_SECONDS", 0.01)
    client = BookClient("ws://unused", "AAPL", extra_channels=("trades.AAPL",))
    client.ws = SentFrames()
    refusal = {"type": "error", "op": "subscribe", "id": wsclient.SUBSCRIBE_ID}

    async def refused_then_retried(frame: dict) -> None:
        await client.handle(frame)
        await client._retry

    # The whole first subscription refused (the message rate): sent again with every channel.
    asyncio.run(refused_then_retried({**refusal, "error": "TooManyRequests"}))
    # Only the book's channel refused (Redis out of reach): the book's channel again.
    unavailable = {**refusal, "error": "ServiceUnavailable", "channel": "book.AAPL"}
    asyncio.run(refused_then_retried(unavailable))
    assert [m["channels"] for m in client.ws.sent] == [["book.AAPL", "trades.AAPL"], ["book.AAPL"]]
    assert client.refusals == 2
    # Another channel's refusal, or an answer to an op of someone else's, is not the book's.
    asyncio.run(client.handle({**refusal, "error": "UnknownChannel", "channel": "trades.AAPL"}))
    asyncio.run(client.handle({**refusal, "error": "UnknownSymbol", "id": 7}))
    with pytest.raises(wsclient.SubscriptionRefused, match="UnknownSymbol"):
        asyncio.run(client.handle({**refusal, "error": "UnknownSymbol", "channel": "book.AAPL"}))

"""The reference client keeps the instrument's trading status from the status frames."""

import asyncio

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

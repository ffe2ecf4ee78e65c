"""The CRC32 checksum of a book's top 10 levels, as the WebSocket `update` frames carry it.

Shared by the server (exchange.market_hub) and the reference client (exchange.wsclient); no
Django import, so a client can use it alone. The algorithm is in docs/websocket.md.
"""

import zlib
from collections.abc import Iterable

CHECKSUM_LEVELS = 10


def book_checksum(bids: Iterable[tuple[str, str]], asks: Iterable[tuple[str, str]]) -> int:
    """CRC32 (unsigned) of "bidprice:bidqty:askprice:askqty:..." over the best 10 levels of each
    side (bids best first = highest, asks best first = lowest), interleaved level by level; a
    side with fewer levels just stops contributing. Prices and quantities are the exact decimal
    strings of the frames."""
    bids, asks = list(bids)[:CHECKSUM_LEVELS], list(asks)[:CHECKSUM_LEVELS]
    parts: list[str] = []
    for i in range(max(len(bids), len(asks))):
        if i < len(bids):
            parts.extend(bids[i][:2])
        if i < len(asks):
            parts.extend(asks[i][:2])
    return zlib.crc32(":".join(parts).encode())

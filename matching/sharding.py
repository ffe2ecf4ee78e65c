"""Which shard owns a symbol: a stable hash, the same in every process and every run."""

import zlib


def shard_for_symbol(symbol: str, shard_count: int) -> int:
    """Map a symbol to a shard in [0, shard_count) by CRC32 (Python's hash() is salted)."""
    if shard_count < 1:
        raise ValueError(f"shard_count must be at least 1, got {shard_count}")
    return zlib.crc32(symbol.encode("utf-8")) % shard_count

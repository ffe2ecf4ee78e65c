// A local L2 book kept from the WebSocket's `book.{symbol}` snapshot and updates, checked on
// every update: seq continuity (prev_seq) and the CRC32 checksum of the top 10 levels
// (docs/websocket.md; exchange/book_checksum.py is the reference).

const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n += 1) {
    let c = n;
    for (let k = 0; k < 8; k += 1) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

export function crc32(text) {
  const bytes = new TextEncoder().encode(text);
  let crc = 0xffffffff;
  for (const byte of bytes) crc = CRC_TABLE[(crc ^ byte) & 0xff] ^ (crc >>> 8);
  return (crc ^ 0xffffffff) >>> 0;
}

// "bid1price:bid1qty:ask1price:ask1qty:..." over the best 10 levels of each side, as received.
export function bookChecksum(bids, asks) {
  const parts = [];
  const depth = Math.max(Math.min(bids.length, 10), Math.min(asks.length, 10));
  for (let i = 0; i < depth; i += 1) {
    if (i < bids.length && i < 10) parts.push(bids[i][0], bids[i][1]);
    if (i < asks.length && i < 10) parts.push(asks[i][0], asks[i][1]);
  }
  return crc32(parts.join(":"));
}

// Decimal strings compared exactly (no floats): "150.4" vs "150.40" vs "99.999".
export function compareDecimal(a, b) {
  const [ai, af = ""] = a.split(".");
  const [bi, bf = ""] = b.split(".");
  if (ai.length !== bi.length) return ai.length < bi.length ? -1 : 1;
  if (ai !== bi) return ai < bi ? -1 : 1;
  const width = Math.max(af.length, bf.length);
  const fa = af.padEnd(width, "0");
  const fb = bf.padEnd(width, "0");
  if (fa === fb) return 0;
  return fa < fb ? -1 : 1;
}

function isZero(quantity) {
  return /^0*(\.0*)?$/.test(quantity);
}

export class LocalBook {
  constructor() {
    this.reset();
  }

  reset() {
    this.seq = null;
    this.bids = new Map(); // price string -> quantity string
    this.asks = new Map();
  }

  get synced() {
    return this.seq !== null;
  }

  applySnapshot(frame) {
    this.reset();
    for (const [price, quantity] of frame.bids) this.bids.set(price, quantity);
    for (const [price, quantity] of frame.asks) this.asks.set(price, quantity);
    this.seq = frame.seq;
    return this.verify(frame.checksum) ? "ok" : "mismatch";
  }

  // "ok", "stale" (already applied: ignored), "gap" or "mismatch" (resubscribe for both).
  applyUpdate(frame) {
    if (!this.synced) return "gap";
    if (frame.seq <= this.seq) return "stale";
    if (frame.prev_seq !== this.seq) return "gap";
    for (const [side, levels] of [
      [this.bids, frame.bids],
      [this.asks, frame.asks],
    ]) {
      for (const [price, quantity] of levels) {
        if (isZero(quantity)) side.delete(price);
        else side.set(price, quantity);
      }
    }
    this.seq = frame.seq;
    return this.verify(frame.checksum) ? "ok" : "mismatch";
  }

  verify(checksum) {
    if (checksum === undefined || checksum === null) return true;
    return bookChecksum(this.sortedBids(), this.sortedAsks()) === checksum;
  }

  sortedBids() {
    return [...this.bids.entries()].sort((x, y) => compareDecimal(y[0], x[0]));
  }

  sortedAsks() {
    return [...this.asks.entries()].sort((x, y) => compareDecimal(x[0], y[0]));
  }
}

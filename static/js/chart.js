// Candlesticks with volume (lightweight-charts from npm, served from node_modules): loaded from
// GET /api/v1/candles/{symbol}, then the last candle follows the live trades. The answer names
// the last trade it counts (last_trade_id): live trades that arrive while it loads are held, and
// only those with a higher id are folded in (a trade was counted twice or dropped otherwise).
// The chart library draws numbers; what the page says in words (the latest candle) it says in
// the exact decimal strings of the API and the trades, at the instrument's precision.
import { api } from "./api.js";
import { compareDecimal } from "./book.js";
import { addDecimals, decimalPlaces } from "./decimal.js";

const INTERVAL_SECONDS = { "1m": 60, "5m": 300, "1h": 3600, "1d": 86400 };
const UP = "#1a7f4b";
const DOWN = "#c0392b";

export class CandleChart {
  constructor({ container, summary, moduleUrl, symbol, tick }) {
    this.container = container;
    this.summary = summary;
    this.symbol = symbol;
    this.tick = tick; // the tick size as a decimal string ("0.00000001")
    this.interval = "1m";
    // The latest candle, for live updates and the summary: its `time` and its open, high, low,
    // close and volume as decimal strings (the chart's numbers are read off them).
    this.last = null;
    this.lastTradeId = null; // the highest trade id counted in the candles shown
    this.loads = 0; // each load's number: only the latest one's answer is shown
    this.loading = true; // until a load ends, live trades are held in `held`
    this.held = [];
    this.ready = import(moduleUrl).then((charts) => this.create(charts));
    this.ready.catch(() => {
      this.summary.textContent = "The chart library could not be loaded.";
    });
  }

  create(charts) {
    this.chart = charts.createChart(this.container, {
      autoSize: true,
      layout: { background: { color: "transparent" }, textColor: "#333" },
      grid: { vertLines: { color: "#eee" }, horzLines: { color: "#eee" } },
      timeScale: { timeVisible: true, secondsVisible: false },
    });
    // The price axis at the tick's places (the library's default is two: a coin trading below
    // a cent read 0.00 all the way up the axis).
    this.candles = this.chart.addSeries(charts.CandlestickSeries, {
      priceFormat: {
        type: "price",
        precision: decimalPlaces(this.tick),
        minMove: Number(this.tick),
      },
      upColor: UP,
      downColor: DOWN,
      borderVisible: false,
      wickUpColor: UP,
      wickDownColor: DOWN,
    });
    this.volume = this.chart.addSeries(charts.HistogramSeries, {
      priceFormat: { type: "volume" },
      priceScaleId: "",
      lastValueVisible: false,
      priceLineVisible: false,
    });
    this.volume.priceScale().applyOptions({ scaleMargins: { top: 0.8, bottom: 0 } });
    // How the price axis writes one tick (what a test can read of a canvas).
    this.container.dataset.priceFormat = this.candles.priceFormatter().format(Number(this.tick));
  }

  async load(interval) {
    this.interval = interval;
    const load = ++this.loads;
    this.loading = true;
    try {
      await this.ready;
      const path = `/api/v1/candles/${encodeURIComponent(this.symbol)}?interval=${interval}&limit=500`;
      const { data } = await api("GET", path);
      if (load !== this.loads) return; // loaded again meanwhile (another interval, a reconnect)
      this.show(data);
    } finally {
      if (load === this.loads) {
        // The trades that arrived meanwhile: those the answer did not count (after a failed
        // load, those newer than the candles still shown).
        this.loading = false;
        const held = this.held;
        this.held = [];
        if (held.length) this.addTrades(held);
      }
    }
  }

  show(data) {
    const interval = this.interval;
    const candles = data.candles.map((c) => ({
      time: Date.parse(c.open_time) / 1000,
      open: c.open,
      high: c.high,
      low: c.low,
      close: c.close,
      volume: c.volume,
    }));
    this.candles.setData(candles.map((candle) => this.bar(candle)));
    this.volume.setData(candles.map((candle) => this.volumeBar(candle)));
    this.chart.timeScale().fitContent();
    this.last = candles.at(-1) || null;
    this.lastTradeId = data.last_trade_id ?? null;
    this.container.dataset.candles = String(candles.length);
    this.container.dataset.interval = interval;
    this.describe();
  }

  // A candle (decimal strings) as the chart draws it.
  bar({ time, open, high, low, close }) {
    return { time, open: Number(open), high: Number(high), low: Number(low), close: Number(close) };
  }

  volumeBar(candle) {
    const up = compareDecimal(candle.close, candle.open) >= 0;
    return { time: candle.time, value: Number(candle.volume), color: up ? UP : DOWN };
  }

  // Trades from the socket (oldest first in a frame) extend or start the latest candle; those
  // the loaded candles counted already (an id not above last_trade_id) are left out.
  addTrades(trades) {
    if (this.loading) {
      this.held.push(...trades);
      return;
    }
    if (!this.candles || !this.container.dataset.interval) return;
    const width = INTERVAL_SECONDS[this.interval];
    for (const trade of trades) {
      const id = BigInt(trade.trade_id);
      if (this.lastTradeId !== null && id <= BigInt(this.lastTradeId)) continue;
      this.lastTradeId = String(id);
      const seconds = Number(BigInt(trade.ts_ns) / 1000000000n);
      const time = Math.floor(seconds / width) * width;
      const { price, quantity } = trade;
      if (this.last && time < this.last.time) continue; // already counted in a loaded candle
      if (this.last && time === this.last.time) {
        if (compareDecimal(price, this.last.high) > 0) this.last.high = price;
        if (compareDecimal(price, this.last.low) < 0) this.last.low = price;
        this.last.close = price;
        this.last.volume = addDecimals(this.last.volume, quantity);
      } else {
        this.last = { time, open: price, high: price, low: price, close: price, volume: quantity };
        this.container.dataset.candles = String(Number(this.container.dataset.candles) + 1);
      }
      this.candles.update(this.bar(this.last));
      this.volume.update(this.volumeBar(this.last));
    }
    this.describe();
  }

  describe() {
    const count = Number(this.container.dataset.candles || 0);
    const last = this.last;
    this.summary.textContent = last
      ? `${this.symbol}, ${this.interval} candles (${count}): latest open ${last.open}, ` +
        `high ${last.high}, low ${last.low}, close ${last.close}, volume ${last.volume}.`
      : `${this.symbol}: no trades yet, so no candles.`;
  }
}

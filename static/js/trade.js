// The trading page: live ladder (local book checked by seq and checksum, resynced by itself),
// trades tape, candles, and for a signed-in user the order ticket, open orders and fills.
import {
  ApiError, api, cell, clearErrors, dateTime, debounce, marketStatusText, shortTime, showError,
  signedOutNotice, whileBusy,
} from "./api.js";
import { LocalBook, compareDecimal } from "./book.js";
import { CandleChart } from "./chart.js";
import { addDecimals, decimalPlaces } from "./decimal.js";
import { feePreview } from "./fees.js";
import { Stream } from "./stream.js";

const page = document.getElementById("trade");
const symbol = page.dataset.symbol;
const canTrade = page.dataset.canTrade === "true";
const LADDER_LEVELS = 15;
const TAPE_ROWS = 50;

const priceDecimals = decimalPlaces(page.dataset.tick);
const lotDecimals = decimalPlaces(page.dataset.lot);

// ---- order book ladder -------------------------------------------------------------------

const book = new LocalBook();
const ladder = document.getElementById("ladder");
let resyncs = 0;
let awaitingSnapshot = true;

function ladderRow(side, price, quantity, total, maxTotal) {
  const row = document.createElement("tr");
  row.className = side;
  row.dataset.side = side;
  row.dataset.price = price;
  row.style.setProperty("--depth", `${maxTotal > 0 ? (total / maxTotal) * 100 : 0}%`);
  const priceCell = document.createElement("td");
  priceCell.className = "num";
  const button = document.createElement("button");
  button.type = "button";
  button.className = "price-pick";
  button.textContent = price;
  button.setAttribute("aria-label", `${side === "ask" ? "Ask" : "Bid"} ${price}, size ${quantity}`);
  button.addEventListener("click", () => pickPrice(price));
  priceCell.append(button);
  row.append(priceCell, cell(quantity, "num"), cell(total.toFixed(lotDecimals), "num"));
  return row;
}

function renderLadder() {
  const bids = book.sortedBids().slice(0, LADDER_LEVELS);
  const asks = book.sortedAsks().slice(0, LADDER_LEVELS);
  const cumulative = (levels) => {
    let sum = 0;
    return levels.map(([price, quantity]) => [price, quantity, (sum += Number(quantity))]);
  };
  const bidRows = cumulative(bids);
  const askRows = cumulative(asks);
  const maxTotal = Math.max(bidRows.at(-1)?.[2] || 0, askRows.at(-1)?.[2] || 0);
  document
    .getElementById("asks")
    .replaceChildren(...askRows.reverse().map(([p, q, t]) => ladderRow("ask", p, q, t, maxTotal)));
  document
    .getElementById("bids")
    .replaceChildren(...bidRows.map(([p, q, t]) => ladderRow("bid", p, q, t, maxTotal)));
  const spread = document.getElementById("spread");
  if (bids.length && asks.length) {
    const bid = Number(bids[0][0]);
    const ask = Number(asks[0][0]);
    const mid = (bid + ask) / 2;
    spread.textContent =
      `Spread ${(ask - bid).toFixed(priceDecimals)} ` +
      `(${(((ask - bid) / mid) * 10000).toFixed(1)} bps) · Mid ${mid.toFixed(priceDecimals + 1)}`;
  } else {
    spread.textContent = bids.length || asks.length ? "One-sided book" : "The book is empty";
  }
  ladder.dataset.seq = book.seq ?? "";
  updateFeePreview();
}

function resync(reason) {
  resyncs += 1;
  ladder.dataset.resyncs = String(resyncs);
  ladder.dataset.lastResync = reason;
  awaitingSnapshot = true;
  book.reset();
  stream.resubscribe(`book.${symbol}`);
}

function onBookFrame(frame) {
  if (frame.type === "snapshot") {
    awaitingSnapshot = false;
    if (book.applySnapshot(frame) === "mismatch") {
      resync("checksum");
      return;
    }
    renderLadder();
  } else if (frame.type === "update") {
    if (awaitingSnapshot) return;
    const outcome = book.applyUpdate(frame);
    if (outcome === "gap") resync("gap");
    else if (outcome === "mismatch") resync("checksum");
    else if (outcome === "ok") renderLadder();
  }
}

// ---- trades tape and market statistics ---------------------------------------------------

const tapeBody = document.querySelector("#tape tbody");
const tapeIds = new Set();

function tapeRow(trade, iso) {
  const row = document.createElement("tr");
  row.dataset.tradeId = String(trade.trade_id);
  row.className = trade.taker_side === "buy" ? "up" : "down";
  row.append(
    cell(shortTime(iso)),
    cell(trade.price, "num"),
    cell(trade.quantity, "num"),
    cell(trade.taker_side === "buy" ? "Buy" : "Sell"),
  );
  return row;
}

// Newest first by trade id, wherever a trade comes from: the trades read again over REST
// after a reconnect or a lost frame are newer than the rows shown, and had been appended below
// them (under a full tape, trimmed away at once).
function addTrades(trades) {
  for (const trade of trades) {
    const id = String(trade.trade_id);
    if (tapeIds.has(id)) continue;
    tapeIds.add(id);
    const iso = trade.executed_at || new Date(Number(BigInt(trade.ts_ns) / 1000000n)).toISOString();
    const older = [...tapeBody.rows].find((row) => Number(row.dataset.tradeId) < Number(id));
    tapeBody.insertBefore(tapeRow(trade, iso), older ?? null);
  }
  while (tapeBody.rows.length > TAPE_ROWS) {
    tapeIds.delete(tapeBody.lastElementChild.dataset.tradeId);
    tapeBody.lastElementChild.remove();
  }
}

async function loadTrades() {
  const { data } = await api("GET", `/api/v1/trades/${encodeURIComponent(symbol)}?limit=30`);
  addTrades(data.results);
}

async function loadStats() {
  const { data } = await api("GET", `/api/v1/ticker/${encodeURIComponent(symbol)}`);
  document.getElementById("stat-last").textContent = data.last_price ?? "–";
  const change = document.getElementById("stat-change");
  change.textContent = data.change_pct_24h === null ? "–" : `${data.change_pct_24h} %`;
  change.className = Number(data.change_pct_24h) > 0 ? "up" : Number(data.change_pct_24h) < 0 ? "down" : "";
  document.getElementById("stat-high").textContent = data.high_24h ?? "–";
  document.getElementById("stat-low").textContent = data.low_24h ?? "–";
  document.getElementById("stat-volume").textContent = `${data.volume_24h} ${page.dataset.base}`;
  showStatus(data.status, data.status_reason);
}
// After trades, once they pause (a burst reads the ticker once). The status poll, a resume and
// the page's load read it at once: a debounce that every trade restarts had held them off for
// as long as trades kept coming.
const refreshStats = debounce(loadStats, 1000);
// The instrument's status (the ticker's: Instrument.Status, or closed outside its trading
// hours) with staff's reason for a halt; a halt, resume or delisting shows at once from the
// ticker channel's status frame, else within STATUS_REFRESH_MS, or when an order is refused
// because of it.
const STATUS_REFRESH_MS = 10_000;

function showStatus(status, reason) {
  document.getElementById("stat-status").textContent = marketStatusText(status, reason);
}
setInterval(() => loadStats().catch(() => {}), STATUS_REFRESH_MS);

// ---- chart ---------------------------------------------------------------------------------

const chart = new CandleChart({
  container: document.getElementById("chart"),
  summary: document.getElementById("chart-summary"),
  moduleUrl: page.dataset.chartModule,
  symbol,
  tick: page.dataset.tick,
});

for (const button of document.querySelectorAll("#chart-intervals button")) {
  button.addEventListener("click", () => {
    for (const other of document.querySelectorAll("#chart-intervals button")) {
      other.setAttribute("aria-pressed", String(other === button));
    }
    chart.load(button.dataset.interval);
  });
}

// ---- order ticket ----------------------------------------------------------------------------

const ticket = document.getElementById("ticket");
let feeRates = null;

function ticketValue(name) {
  const element = ticket.elements.namedItem(name);
  if (element instanceof RadioNodeList) return element.value;
  if (element.type === "checkbox") return element.checked;
  return element.value.trim();
}

function updateTicketFields() {
  const type = ticketValue("order_type");
  const side = ticketValue("side");
  if (side !== "buy") ticket.querySelector('input[name="market_by"][value="quantity"]').checked = true;
  const by = type === "market" ? ticketValue("market_by") : "quantity";
  const tif = ticketValue("time_in_force");
  for (const element of ticket.querySelectorAll("[data-show-for], [data-show-tif]")) {
    let shown = true;
    if (element.dataset.showFor) shown = element.dataset.showFor.split(" ").includes(type);
    if (shown && element.dataset.showSide) shown = element.dataset.showSide === side;
    if (shown && element.dataset.showBy && type === "market") shown = element.dataset.showBy === by;
    if (element.dataset.showTif) shown = type !== "market" && element.dataset.showTif === tif;
    element.hidden = !shown;
  }
  const submit = document.getElementById("ticket-submit");
  submit.className = side;
  submit.textContent = `${side === "buy" ? "Buy" : "Sell"} ${page.dataset.base}`;
  updateFeePreview();
}

function visibleValue(name) {
  const element = ticket.elements.namedItem(name);
  const holder = element instanceof RadioNodeList ? element[0] : element;
  return holder.closest("[hidden]") ? null : ticketValue(name);
}

function ticketBody() {
  const body = { symbol, side: ticketValue("side"), order_type: ticketValue("order_type") };
  const names = ["price", "stop_price", "limit_price", "quantity", "quote_quantity"];
  for (const name of [...names, "display_quantity", "time_in_force", "stp_mode"]) {
    const value = visibleValue(name);
    if (value) body[name] = value;
  }
  const expireAt = visibleValue("expire_at");
  if (expireAt) {
    const moment = new Date(expireAt);
    body.expire_at = Number.isNaN(moment.getTime()) ? expireAt : moment.toISOString();
  }
  for (const name of ["post_only", "post_only_adjust"]) {
    if (visibleValue(name)) body[name] = true;
  }
  return body;
}

function updateFeePreview() {
  if (!ticket) return;
  const output = document.getElementById("fee-preview");
  output.textContent = feePreview({
    body: ticketBody(),
    rates: feeRates,
    bestBid: book.sortedBids()[0]?.[0] ?? null,
    bestAsk: book.sortedAsks()[0]?.[0] ?? null,
    quote: page.dataset.quote,
    quotePrecision: Number(page.dataset.quotePrecision),
    compare: compareDecimal,
  });
}

function pickPrice(price) {
  if (!ticket) return;
  let type = ticketValue("order_type");
  if (type === "market") {
    ticket.elements.namedItem("order_type").value = "limit";
    type = "limit";
  }
  const name = type === "stop_limit" ? "limit_price" : type === "stop_loss" ? "stop_price" : "price";
  ticket.elements.namedItem(name).value = price;
  updateTicketFields();
  ticket.elements.namedItem(name).focus();
}

async function submitTicket(event) {
  event.preventDefault();
  clearErrors(ticket);
  const result = document.getElementById("ticket-result");
  result.textContent = "Sending…";
  const submit = document.getElementById("ticket-submit");
  submit.disabled = true;
  try {
    const body = ticketBody();
    if (body.order_type === "market" && visibleValue("quote_quantity") === "") {
      // Else the API's answer names `quantity`, a field this choice hides.
      throw new ApiError(400, { error: "MissingParameter", field: "quote_quantity",
                                message: "quote_quantity: Enter the amount to spend." });
    }
    const { status, data } = await api("POST", "/api/v1/orders", body);
    const filled = data.filled_quantity && Number(data.filled_quantity) > 0;
    // Post-only, adjusting: the engine may rest it at another price than typed (it had said
    // only "new", the price it rests at to be found in the open orders).
    const repriced =
      status !== 202 && body.price && data.price && compareDecimal(data.price, body.price) !== 0;
    if (status === 202) {
      const text = `Order ${data.order_id} accepted; the engine has not confirmed it yet.`;
      unconfirmed(data.order_id, "place", result, text);
    } else {
      result.textContent =
        `Order ${data.order_id}: ${statusText(data)}` +
        (repriced ? ` at ${data.price} (repriced from ${body.price} to stay a maker)` : "") +
        (filled ? `, filled ${data.filled_quantity} at ${trimPrice(data.avg_price)}` : "") +
        ".";
    }
    refreshMine();
  } catch (error) {
    result.textContent = "";
    showError(ticket, error);
    if (error.error === "InstrumentHalted") refreshStats();
  } finally {
    submit.disabled = false;
  }
}

// ---- my open orders, fills, balances ---------------------------------------------------------

const ordersBody = document.querySelector("#open-orders tbody");
const fillsBody = document.querySelector("#fills tbody");
const ordersResult = document.getElementById("orders-result");

function emptyRow(columns, text) {
  const row = document.createElement("tr");
  row.className = "empty";
  const only = cell(text);
  only.colSpan = columns;
  row.append(only);
  return row;
}

function orderPrice(order) {
  if (order.order_type === "stop_loss") return `stop ${order.stop_price}`;
  if (order.order_type === "stop_limit") return `${order.price} (stop ${order.stop_price})`;
  return order.price ?? "market";
}

// A row of one of your orders: when it was placed, its side, type and price, then `cells`.
function orderTableRow(order, ...cells) {
  const row = document.createElement("tr");
  row.dataset.orderId = String(order.order_id);
  row.className = order.side;
  row.append(
    cell(shortTime(order.created_at)),
    cell(order.side === "buy" ? "Buy" : "Sell", order.side),
    cell(order.order_type.replace("_", "-")),
    cell(orderPrice(order), "num"),
    ...cells,
  );
  return row;
}

function orderRow(order) {
  const actions = document.createElement("td");
  actions.className = "actions";
  const amend = document.createElement("button");
  amend.type = "button";
  amend.className = "secondary";
  amend.textContent = "Amend";
  amend.setAttribute("aria-label", `Amend order ${order.order_id}`);
  amend.setAttribute("aria-expanded", "false");
  amend.addEventListener("click", () => toggleAmend(row, order, amend));
  const cancel = document.createElement("button");
  cancel.type = "button";
  cancel.className = "secondary";
  cancel.textContent = "Cancel";
  cancel.setAttribute("aria-label", `Cancel order ${order.order_id}`);
  cancel.addEventListener("click", () => cancelOrder(order));
  actions.append(amend, cancel);
  const row = orderTableRow(
    order,
    cell(order.remaining_quantity, "num"),
    cell(order.filled_quantity, "num"),
    cell(order.status.replaceAll("_", " ")),
    cell(timeInForce(order)),
    actions,
  );
  return row;
}

// "GTC", or when it expires ("DAY until 2026-11-27 21:00 UTC"): a time in force left over from
// an earlier ticket had gone unseen.
function timeInForce(order) {
  const tif = order.time_in_force;
  if (!order.expire_at) return tif;
  return `${tif} until ${dateTime(order.expire_at).slice(0, 16)} UTC`;
}

function toggleAmend(row, order, button) {
  const next = row.nextElementSibling;
  if (next && next.classList.contains("amend-row")) {
    next.remove();
    button.setAttribute("aria-expanded", "false");
    button.focus();
    return;
  }
  button.setAttribute("aria-expanded", "true");
  const amendRow = document.createElement("tr");
  amendRow.className = "amend-row";
  amendRow.dataset.orderId = String(order.order_id);
  const holder = document.createElement("td");
  holder.colSpan = 9;
  const form = document.createElement("form");
  form.className = "amend-form";
  form.noValidate = true;
  const id = order.order_id;
  const fields = [];
  if (order.price !== null) fields.push(["price", `New price (order ${id})`, order.price]);
  const total = addDecimals(order.filled_quantity, order.remaining_quantity) ?? order.quantity;
  fields.push(["quantity", `New total quantity, fills included (order ${id})`, total]);
  const general = document.createElement("p");
  general.className = "form-error";
  general.dataset.errorFor = "__all__";
  general.setAttribute("role", "alert");
  general.hidden = true;
  form.append(general);
  for (const [name, label, value] of fields) {
    const wrap = document.createElement("div");
    wrap.className = "field inline";
    const labelEl = document.createElement("label");
    labelEl.htmlFor = `amend-${id}-${name}`;
    labelEl.textContent = label;
    const input = document.createElement("input");
    input.id = `amend-${id}-${name}`;
    input.name = name;
    input.value = value;
    input.inputMode = "decimal";
    input.autocomplete = "off";
    input.setAttribute("aria-describedby", `amend-${id}-${name}-error`);
    const error = document.createElement("p");
    error.className = "field-error";
    error.id = `amend-${id}-${name}-error`;
    error.dataset.errorFor = name;
    error.hidden = true;
    wrap.append(labelEl, input, error);
    form.append(wrap);
  }
  const save = document.createElement("button");
  save.type = "submit";
  save.textContent = "Save changes";
  form.append(save);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    whileBusy(save, () => sendAmend(form, fields, id, amendRow));
  });
  holder.append(form);
  amendRow.append(holder);
  row.after(amendRow);
  form.elements[0].focus();
}

async function sendAmend(form, fields, id, amendRow) {
  clearErrors(form);
  const body = {};
  for (const [name, , original] of fields) {
    const value = form.elements.namedItem(name).value.trim();
    if (value && value !== original) body[name] = value;
  }
  try {
    const { status, data } = await api("PATCH", `/api/v1/orders/${id}`, body);
    const price = data.price === null || data.price === undefined ? "" : `${data.price} × `;
    // 202: queued, and the order it carries is the one before the change (it had read
    // "amended" with the old price and quantity).
    if (status === 202) {
      const text = `Amend of order ${id} sent; the engine has not confirmed it yet.`;
      unconfirmed(id, "amend", ordersResult, text);
    } else {
      ordersResult.textContent = `Order ${id} amended: ${price}${data.quantity}.`;
    }
    amendRow.remove();
    refreshMine();
  } catch (error) {
    ordersResult.textContent = "";  // not a message of an earlier success beside this error
    showError(form, error);
  }
}

async function cancelOrder(order) {
  try {
    const { status, data } = await api("DELETE", `/api/v1/orders/${order.order_id}`);
    // 202: queued, the engine has not taken it yet (it had read "cancelled" then too).
    if (status === 202) {
      const text = `Cancel of order ${order.order_id} sent; the engine has not confirmed it yet.`;
      unconfirmed(order.order_id, "cancel", ordersResult, text);
    } else {
      ordersResult.textContent = `Order ${order.order_id}: ${statusText(data)}.`;
    }
  } catch (error) {
    showOrdersError(error);
  }
  refreshMine();
}

async function cancelAll() {
  try {
    await api("DELETE", `/api/v1/orders?symbol=${encodeURIComponent(symbol)}`);
    // Always 202: the orders leave the table as the engine cancels them.
    ordersResult.textContent = `Cancel of all your open ${symbol} orders sent.`;
  } catch (error) {
    showOrdersError(error);
  }
  refreshMine();
}

// Why an order ended, in words ("cancelled (no liquidity)"): it had read "cancelled" alone.
const REASONS = {
  user: "by you",
  staff: "by staff",
  ioc_remainder: "rest of an IOC order",
  fok_unfillable: "could not fill whole",
  no_liquidity: "no liquidity",
  stp: "self-trade prevention",
  post_only: "post-only would have matched",
  max_quote: "funds held used up",
  gtd_expired: "its expiry passed",
  day_expired: "session closed",
  halted: "trading halted",
};

// What the engine had not confirmed yet (a 202), by order id: the message that said so gives
// way to what the engine made of it once the order's frame comes (it had kept saying "not
// confirmed yet" after the order was cancelled, amended or placed).
const ENDED = ["filled", "cancelled", "rejected", "expired"];
const awaiting = new Map();

function unconfirmed(orderId, kind, element, text) {
  element.textContent = text;
  awaiting.set(String(orderId), { kind, element, text });
}

function confirmIfAwaited(order) {
  const id = String(order.order_id);
  const notice = awaiting.get(id);
  if (!notice) return;
  const ended = ENDED.includes(order.status);
  if (notice.kind === "cancel" && !ended) return; // a fill of the order, before the cancel
  if (notice.kind === "amend" && !ended && !order.amended) return;
  awaiting.delete(id);
  if (notice.element.textContent !== notice.text) return; // a later message is shown there
  const total = addDecimals(order.filled, order.remaining);
  notice.element.textContent =
    notice.kind === "amend" && order.amended && total
      ? `Order ${id} amended: ${order.price ? `${order.price} × ` : ""}${total}.`
      : `Order ${id}: ${statusText(order)}.`;
}

function statusText(order) {
  const status = order.status.replaceAll("_", " ");
  const reason = order.reason && (REASONS[order.reason] ?? order.reason.replaceAll("_", " "));
  return reason ? `${status} (${reason})` : status;
}

// An average price without the zeros past the tick's decimals ("150.000000" -> "150.00").
function trimPrice(value) {
  if (!value || !value.includes(".")) return value;
  let text = value.replace(/0+$/, "");
  const [whole, fraction = ""] = text.split(".");
  text =
    fraction.length < priceDecimals ? `${whole}.${fraction.padEnd(priceDecimals, "0")}` : text;
  return text.endsWith(".") ? text.slice(0, -1) : text;
}

function showOrdersError(error) {
  if (error.error === "NotAuthenticated") signedOutNotice(ordersResult);
  else ordersResult.textContent = error.message;
}

async function loadOrders() {
  const { data } = await api(
    "GET",
    `/api/v1/orders?symbol=${encodeURIComponent(symbol)}&status=open&limit=100`,
  );
  // Keep an amend form that is open (the user may be typing in it).
  const open = new Map(
    [...ordersBody.querySelectorAll("tr.amend-row")].map((row) => [row.dataset.orderId, row]),
  );
  const rows = [];
  for (const order of data.results) {
    rows.push(orderRow(order));
    const amendRow = open.get(String(order.order_id));
    if (amendRow) {
      rows.at(-1).querySelector("[aria-expanded]").setAttribute("aria-expanded", "true");
      rows.push(amendRow);
    }
  }
  ordersBody.replaceChildren(...(rows.length ? rows : [emptyRow(9, "No open orders.")]));
}

// Orders that ended, newest first, with why: one that left the open orders (filled, cancelled
// by self-trade prevention, expired, ...) could not be looked up on this page.
const historyBody = document.querySelector("#order-history tbody");

async function loadHistory() {
  const { data } = await api(
    "GET",
    `/api/v1/orders?symbol=${encodeURIComponent(symbol)}&status=closed&limit=20`,
  );
  const rows = data.results.map((order) =>
    orderTableRow(
      order,
      cell(order.filled_quantity, "num"),
      cell(order.avg_price ? trimPrice(order.avg_price) : "–", "num"),
      cell(statusText(order)),
    ),
  );
  historyBody.replaceChildren(...(rows.length ? rows : [emptyRow(7, "No ended orders yet.")]));
}

async function loadFills() {
  const { data } = await api("GET", `/api/v1/fills?symbol=${encodeURIComponent(symbol)}&limit=30`);
  const rows = data.results.map((fill) => {
    const row = document.createElement("tr");
    row.dataset.tradeId = String(fill.trade_id);
    row.append(
      cell(shortTime(fill.executed_at)),
      cell(fill.side === "buy" ? "Buy" : "Sell", fill.side),
      cell(fill.price, "num"),
      cell(fill.quantity, "num"),
      cell(fill.fee, "num"),
      cell(fill.liquidity),
    );
    return row;
  });
  fillsBody.replaceChildren(...(rows.length ? rows : [emptyRow(6, "No fills yet.")]));
}

// A balance shown next to the ticket, from GET /balances or a live `balance` event: the newer
// by its version wins (an answer read before an event but arriving after it had overwritten
// the event's newer balance until the next change).
function showBalance(slot, balance) {
  const shown = slot.dataset.version === undefined ? -1 : Number(slot.dataset.version);
  if (balance.version < shown) return;
  slot.dataset.version = String(balance.version);
  slot.textContent = balance.available;
}

async function loadBalances() {
  const { data } = await api("GET", "/api/v1/balances");
  const panel = document.getElementById("ticket-balances");
  for (const slot of panel.querySelectorAll("[data-asset]")) {
    const row = data.find((balance) => balance.asset === slot.dataset.asset);
    showBalance(slot, row ?? { asset: slot.dataset.asset, available: "0", version: 0 });
  }
  panel.dataset.reads = String(Number(panel.dataset.reads || 0) + 1); // answers shown or passed
}

async function loadFeeRates() {
  const { data } = await api("GET", `/api/v1/users/${page.dataset.userId}/fee-tier`);
  // The rates a new order gets now (the tier's, or the exchange's fallback without tiers).
  feeRates = {
    maker: data.maker_fee_ppm,
    taker: data.taker_fee_ppm,
    tier: data.tier ? data.tier.name : "base",
  };
  updateFeePreview();
}

const refreshMine = debounce(() => {
  loadOrders().catch(() => {});
  loadHistory().catch(() => {});
  loadFills().catch(() => {});
  loadBalances().catch(() => {});
}, 100);

// ---- the socket --------------------------------------------------------------------------

const channels = [`book.${symbol}`, `trades.${symbol}`, `ticker.${symbol}`];
if (canTrade) channels.push("orders");
const stateLabel = { connecting: "Connecting…", live: "Live", reconnecting: "Reconnecting…" };
let tradesSubscribedBefore = false;
const refused = new Set(); // channels refused for the moment, asked for again

const stream = new Stream(channels, {
  depth: 50,
  onState: (state) => {
    document.getElementById("stream-state").textContent = stateLabel[state];
    if (state === "connecting") {
      awaitingSnapshot = true;
      book.reset();
    }
  },
  onFrame: (frame) => {
    if (frame.type === "subscribed") {
      if (refused.delete(frame.channel) && !refused.size) {
        document.getElementById("stream-state").textContent = stateLabel.live;
      }
      // Subscribed (again, after a reconnect): frames sent while the socket was away are gone
      // (docs/websocket.md), so read what they would have said. An order filled meanwhile had
      // stayed in the open orders, its fill, its trade and the new balances unseen.
      if (frame.channel === `trades.${symbol}`) {
        loadTrades().catch(() => {});
        refreshStats();
        // The candles too, once subscribed again (the page loaded them when it opened).
        if (tradesSubscribedBefore) chart.load(chart.interval).catch(() => {});
        tradesSubscribedBefore = true;
      } else if (frame.channel === "orders") {
        refreshMine();
      }
      return;
    }
    if (frame.type === "error" && frame.error === "ServiceUnavailable" && frame.channel) {
      // Refused for the moment (market data out of reach, the book being restored after Redis
      // lost it): asked again a second later, as the reference client does; it had waited for
      // a reload of the page.
      refused.add(frame.channel);
      document.getElementById("stream-state").textContent = `Feed error: ${frame.message}`;
      setTimeout(() => stream.send({ op: "subscribe", channels: [frame.channel], depth: 50 }), 1000);
      return;
    }
    if (frame.channel === `book.${symbol}`) onBookFrame(frame);
    else if (frame.type === "trades" && frame.channel === `trades.${symbol}`) {
      addTrades(frame.data);
      chart.addTrades(frame.data);
      refreshStats();
    } else if (frame.type === "ticker" && frame.channel === `ticker.${symbol}`) {
      if (frame.data.last_price) {
        document.getElementById("stat-last").textContent = frame.data.last_price;
      }
    } else if (frame.type === "status" && frame.channel === `ticker.${symbol}`) {
      // Resumed: the ticker says whether it trades now or is closed (outside its hours).
      showStatus(frame.data.status, frame.data.reason);
      if (frame.data.status === "trading") loadStats().catch(() => {});
    } else if (frame.type === "order" && frame.data.symbol === symbol) {
      // An order the engine ended by itself (self-trade prevention, expiry, funds) says why
      // before it leaves the table; the user's own cancels say so where they were made.
      confirmIfAwaited(frame.data);
      const why = frame.data.reason;
      if (["cancelled", "expired"].includes(frame.data.status) && why && why !== "user") {
        ordersResult.textContent = `Order ${frame.data.order_id}: ${statusText(frame.data)}.`;
      } else if (frame.data.event === "expiry_changed") {
        const until = dateTime(frame.data.expire_at).slice(0, 16);
        ordersResult.textContent =
          `Order ${frame.data.order_id} now expires ${until} UTC: the session hours changed.`;
      }
      refreshMine();
    } else if (frame.type === "balance") {
      // Any change of a balance shown here: an order of another symbol, a deposit, a
      // withdrawal (the hub sends only a newer balance than the last it sent).
      const slot = document.querySelector(`#ticket-balances [data-asset="${CSS.escape(frame.data.asset)}"]`);
      if (slot) showBalance(slot, frame.data);
    } else if (frame.type === "error" && frame.error === "NotAuthenticated") {
      signedOutNotice(document.getElementById("stream-state"));
    } else if (frame.type === "error" && frame.error !== "NotSubscribed") {
      document.getElementById("stream-state").textContent = `Feed error: ${frame.message}`;
    } else if (frame.type === "resync") {
      // Trade and order frames were lost: for a slow consumer (fresh snapshots follow), or
      // upstream of the server ("feed_gap": the book checks its own seq). Re-read the tape.
      if (frame.reason !== "feed_gap") awaitingSnapshot = true;
      loadTrades().catch(() => {});
      refreshStats(); // a status frame (a halt, a resume) may have been lost too
      if (canTrade) refreshMine();
    }
  },
});

loadTrades().catch(() => {});
loadStats().catch(() => {}); // the status as the ticker says it now (closed outside its hours)
chart.load("1m");

if (ticket) {
  ticket.addEventListener("change", updateTicketFields);
  ticket.addEventListener("input", updateFeePreview);
  ticket.addEventListener("submit", submitTicket);
  document.getElementById("cancel-all").addEventListener("click", cancelAll);
  updateTicketFields();
  loadFeeRates().catch(() => {});
  refreshMine();
}

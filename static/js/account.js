// The account page: balances, deposits and withdrawals, ledger, fee tier and API keys, all
// through the REST API with the web session.
import {
  ApiError, api, cell, clearErrors, dateTime, showError, signedOutNotice, whileBusy,
} from "./api.js";

const page = document.getElementById("account");
const userId = page.dataset.userId;

// A request refused because the session ended (logged out in another tab, a password change)
// says so with a way back; it read "Authentication credentials were not provided.", or showed
// nothing and threw (Show older entries).
function report(element, error) {
  if (error instanceof ApiError && error.error === "NotAuthenticated") signedOutNotice(element);
  else element.textContent = error instanceof ApiError ? error.message : String(error);
}

function emptyRow(columns, text) {
  const row = document.createElement("tr");
  row.className = "empty";
  const only = cell(text);
  only.colSpan = columns;
  row.append(only);
  return row;
}

// ---- balances --------------------------------------------------------------------------------

async function loadBalances() {
  const { data } = await api("GET", "/api/v1/balances");
  const rows = data.map((balance) => {
    const row = document.createElement("tr");
    row.dataset.asset = balance.asset;
    row.append(
      cell(balance.asset, null, "th"),
      cell(balance.available, "num"),
      cell(balance.held, "num"),
      cell(balance.total, "num"),
    );
    row.firstChild.scope = "row";
    return row;
  });
  document
    .querySelector("#balances tbody")
    .replaceChildren(...(rows.length ? rows : [emptyRow(4, "No balances yet: make a deposit.")]));
}

// ---- deposit and withdraw ----------------------------------------------------------------------

for (const form of document.querySelectorAll(".funds-form")) {
  const submit = form.querySelector('button[type="submit"]');
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    whileBusy(submit, () => sendFunds(form));
  });
}

async function sendFunds(form) {
  clearErrors(form);
  const result = form.querySelector("[data-result]");
  result.textContent = "";
  const kind = form.dataset.kind;
  const body = {
    asset: form.elements.namedItem("asset").value,
    amount: form.elements.namedItem("amount").value.trim(),
  };
  try {
    const { data } = await api("POST", `/api/v1/users/${userId}/${kind}`, body);
    result.textContent =
      `${kind === "deposit" ? "Deposited" : "Withdrew"} ${data.amount} ${data.asset}; ` +
      `available now ${data.balance.available} ${data.asset}.`;
    form.elements.namedItem("amount").value = "";
    loadBalances();
    loadLedger({ reset: true });
  } catch (error) {
    showError(form, error);
  }
}

// ---- ledger ----------------------------------------------------------------------------------

const ledgerBody = document.querySelector("#ledger tbody");
const ledgerMore = document.getElementById("ledger-more");
let ledgerNext = null;

async function loadLedger({ reset }) {
  const path = reset ? "/api/v1/ledger?limit=25" : ledgerNext;
  const { data } = await api("GET", path);
  const rows = data.results.map((posting) => {
    const row = document.createElement("tr");
    row.append(
      cell(dateTime(posting.created_at)),
      cell(posting.kind),
      cell(posting.account),
      cell(posting.asset),
      cell(posting.amount, `num ${posting.amount.startsWith("-") ? "down" : "up"}`),
      cell(posting.order_id ?? ""),
      cell(posting.trade_id ?? ""),
    );
    return row;
  });
  if (reset) {
    ledgerBody.replaceChildren(...(rows.length ? rows : [emptyRow(7, "No entries yet.")]));
  } else {
    ledgerBody.append(...rows);
  }
  // Follow the cursor on this origin (the API gives an absolute URL).
  const next = data.next ? new URL(data.next, window.location.href) : null;
  ledgerNext = next ? next.pathname + next.search : null;
  ledgerMore.hidden = !ledgerNext;
}

const ledgerResult = document.getElementById("ledger-result");
ledgerMore.addEventListener("click", () => {
  ledgerResult.textContent = "";
  whileBusy(ledgerMore, () => loadLedger({ reset: false })).catch((error) => report(ledgerResult, error));
});

// ---- fee tier ----------------------------------------------------------------------------------

function definition(list, term, value) {
  const dt = document.createElement("dt");
  dt.textContent = term;
  const dd = document.createElement("dd");
  dd.textContent = value;
  list.append(dt, dd);
  return dd;
}

async function loadFeeTier() {
  const { data } = await api("GET", `/api/v1/users/${userId}/fee-tier`);
  const holder = document.getElementById("fee-tier");
  const list = document.createElement("dl");
  list.className = "facts";
  if (data.tier) {
    definition(list, "Your tier", data.tier.name).id = "fee-tier-name";
    definition(list, "Maker fee", `${data.tier.maker_fee_pct} %${data.tier.maker_fee_ppm < 0 ? " (a rebate)" : ""}`);
    definition(list, "Taker fee", `${data.tier.taker_fee_pct} %`);
  } else {
    definition(list, "Your tier", "none configured");
  }
  definition(list, "30-day volume", `${data.volume_30d} ${data.quote_asset}`);
  definition(list, "Quote presence (uptime)", data.uptime_pct === null ? "not sampled" : `${data.uptime_pct} %`);
  definition(list, "Window", `${data.window_start} to ${data.window_end} (UTC days)`);
  const parts = [list];
  if (data.next_tier) {
    const next = data.next_tier;
    const need = [];
    if (Number(next.volume_needed) > 0) need.push(`${next.volume_needed} ${data.quote_asset} more volume`);
    if (next.uptime_needed_pct !== null && Number(next.uptime_needed_pct) > 0) {
      need.push(`${next.uptime_needed_pct} more points of uptime`);
    }
    const para = document.createElement("p");
    para.id = "fee-next-tier";
    para.textContent =
      `Next: ${next.name} (maker ${next.maker_fee_pct} %, taker ${next.taker_fee_pct} %) ` +
      (need.length ? `needs ${need.join(" and ")}.` : "at the next assessment.");
    const progress = document.createElement("progress");
    progress.max = Number(next.min_volume_30d) || 1;
    progress.value = Math.min(Number(data.volume_30d), progress.max);
    progress.setAttribute("aria-label", `30-day volume towards ${next.name}`);
    parts.push(para, progress);
  } else if (data.tier) {
    const para = document.createElement("p");
    para.textContent = "You are in the highest tier.";
    parts.push(para);
  }
  holder.replaceChildren(...parts);
}

// ---- API keys ----------------------------------------------------------------------------------

const keyForm = document.getElementById("key-form");
const keysResult = document.getElementById("keys-result");

async function loadKeys() {
  const { data } = await api("GET", "/api/v1/api-keys?limit=100");
  const rows = data.results.map((key) => {
    const row = document.createElement("tr");
    row.dataset.keyId = String(key.id);
    const code = document.createElement("code");
    code.textContent = key.api_key;
    const keyCell = document.createElement("td");
    keyCell.append(code);
    const actions = document.createElement("td");
    if (key.status === "active") {
      const revoke = document.createElement("button");
      revoke.type = "button";
      revoke.className = "secondary";
      revoke.textContent = "Revoke";
      revoke.setAttribute("aria-label", `Revoke key ${key.label}`);
      revoke.addEventListener("click", () => revokeKey(key));
      actions.append(revoke);
    }
    row.append(
      cell(key.label),
      keyCell,
      cell(key.permissions.join(", ")),
      cell(key.ip_allowlist.length ? key.ip_allowlist.join(", ") : "any"),
      cell(dateTime(key.created_at)),
      cell(key.last_used_at ? `${dateTime(key.last_used_at)} from ${key.last_used_ip}` : "never"),
      cell(key.status),
      actions,
    );
    return row;
  });
  document
    .querySelector("#api-keys tbody")
    .replaceChildren(...(rows.length ? rows : [emptyRow(8, "No API keys yet.")]));
}

async function revokeKey(key) {
  if (!window.confirm(`Revoke the key "${key.label}"? Programs using it will stop working.`)) return;
  try {
    await api("DELETE", `/api/v1/api-keys/${key.id}`);
    keysResult.textContent = `Key "${key.label}" revoked.`;
  } catch (error) {
    report(keysResult, error);
    if (error.error === "NotAuthenticated") return;
  }
  loadKeys().catch((error) => report(keysResult, error));
}

keyForm.addEventListener("submit", (event) => {
  event.preventDefault();
  whileBusy(keyForm.querySelector('button[type="submit"]'), createKey);
});

async function createKey() {
  clearErrors(keyForm);
  const body = {
    label: keyForm.elements.namedItem("label").value.trim(),
    permissions: [...keyForm.querySelectorAll('input[name="permissions"]:checked')].map((i) => i.value),
    ip_allowlist: keyForm.elements
      .namedItem("ip_allowlist")
      .value.split(/[\s,]+/)
      .filter(Boolean),
  };
  try {
    const { data } = await api("POST", "/api/v1/api-keys", body);
    document.getElementById("created-key").textContent = data.api_key;
    document.getElementById("created-secret").textContent = data.secret;
    const box = document.getElementById("key-created");
    box.hidden = false;
    box.focus();
    keyForm.reset();
    loadKeys();
  } catch (error) {
    showError(keyForm, error);
  }
}

loadBalances();
loadLedger({ reset: true });
loadFeeTier();
loadKeys();

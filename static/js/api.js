// The REST API with the web session: JSON in and out, the CSRF token on unsafe methods, and
// errors in the API's one shape ({error, code, message, field}) thrown as ApiError.

export class ApiError extends Error {
  constructor(status, body) {
    super(body.message || body.detail || `HTTP ${status}`);
    this.status = status;
    this.error = body.error || "HttpError";
    this.code = body.code;
    this.field = body.field || null;
    this.orderId = body.order_id || null;
  }
}

// The CSRF cookie first: logging in again (in another tab, say) gives a new token there, and the
// copy written into the page is then stale (every change from this page was a 403).
function csrfToken() {
  const cookie = document.cookie.split("; ").find((part) => part.startsWith("csrftoken="));
  if (cookie) return decodeURIComponent(cookie.slice("csrftoken=".length));
  const holder = document.querySelector("[data-csrf]");
  return holder ? holder.dataset.csrf : "";
}

export async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  const options = { method, headers, credentials: "same-origin" };
  if (method !== "GET") headers["X-CSRFToken"] = csrfToken();
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  const text = await response.text();
  let data = {};
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = { message: `The server answered ${response.status}.` };
    }
  }
  if (!response.ok) throw new ApiError(response.status, data);
  return { status: response.status, data };
}

// A request refused because the session has ended (logged out in another tab, a password
// change, deactivation): what to do about it, with a link back here after logging in.
export function signedOutNotice(element) {
  const link = document.createElement("a");
  link.href = `/accounts/login/?next=${encodeURIComponent(location.pathname)}`;
  link.textContent = "Log in again";
  element.replaceChildren("You are signed out. ", link, ".");
}

// Shows an ApiError next to the input its `field` names (an element with
// data-error-for="field" inside `form`), else in the form's general error box.
export function showError(form, error) {
  clearErrors(form);
  const general = form.querySelector('[data-error-for="__all__"]');
  if (error instanceof ApiError && error.error === "NotAuthenticated" && general) {
    signedOutNotice(general);
    general.hidden = false;
    return;
  }
  const message = error instanceof ApiError ? error.message : `Something went wrong: ${error}`;
  // A nested field ("ip_allowlist.0") is shown at its top-level input.
  const field = error.field ? String(error.field).split(".")[0] : null;
  let slot = field ? form.querySelector(`[data-error-for="${field}"]`) : null;
  if (!slot || slot.parentElement.closest("[hidden]")) slot = form.querySelector('[data-error-for="__all__"]');
  const atField = slot.dataset.errorFor !== "__all__";
  // At its input the message need not name the field ("label: This field may not be blank.").
  const prefix = `${error.field}: `;
  slot.textContent = atField && message.startsWith(prefix) ? message.slice(prefix.length) : message;
  slot.hidden = false;
  const input = atField && form.elements.namedItem(field);
  if (input && input.setAttribute) {
    input.setAttribute("aria-invalid", "true");
    input.focus();
  }
}

export function clearErrors(form) {
  for (const slot of form.querySelectorAll("[data-error-for]")) {
    slot.textContent = "";
    slot.hidden = true;
  }
  for (const input of form.querySelectorAll("[aria-invalid]")) input.removeAttribute("aria-invalid");
}

// An instrument's status as the ticker gives it (exchange.selectors.ticker_24h: closed outside
// its trading hours), with staff's reason for a halt; exchange/web_views.py renders it the same.
const MARKET_STATUS_LABELS = {
  trading: "Trading",
  halted: "Halted",
  delisted: "Delisted",
  closed: "Closed (outside trading hours)",
};

export function marketStatusText(status, reason) {
  const label = MARKET_STATUS_LABELS[status] ?? status;
  return reason ? `${label}: ${reason}` : label;
}

// A <td> (or other element) with text, optionally a class.
export function cell(text, className, tag = "td") {
  const element = document.createElement(tag);
  element.textContent = text == null ? "–" : String(text);
  if (className) element.className = className;
  return element;
}

export function shortTime(iso) {
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? "–" : date.toISOString().slice(11, 19);
}

export function dateTime(iso) {
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? "–" : date.toISOString().replace("T", " ").slice(0, 19);
}

// Runs `action` with `button` disabled until it settles: a double click (or Enter pressed
// twice) sent a form twice (two withdrawals, two API keys, the same ledger page twice).
export async function whileBusy(button, action) {
  if (button.disabled) return undefined;
  button.disabled = true;
  try {
    return await action();
  } finally {
    button.disabled = false;
  }
}

// Calls `fn` at most once per `ms`, after the last call of a burst.
export function debounce(fn, ms) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

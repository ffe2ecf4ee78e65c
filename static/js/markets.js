// Markets page: refreshes each row's last price, 24 h figures and status from GET /api/v1/ticker.
import { api, marketStatusText } from "./api.js";

const REFRESH_MS = 5000;

async function refreshRow(row) {
  const { data } = await api("GET", `/api/v1/ticker/${encodeURIComponent(row.dataset.symbol)}`);
  for (const name of ["last_price", "high_24h", "low_24h"]) {
    row.querySelector(`[data-field="${name}"]`).textContent = data[name] ?? "–";
  }
  const volume = row.querySelector('[data-field="volume_24h"]');
  volume.textContent = volume.textContent.replace(/^\S+/, data.volume_24h);
  const change = row.querySelector('[data-field="change_pct_24h"]');
  const pct = data.change_pct_24h;
  change.classList.toggle("up", pct !== null && Number(pct) > 0);
  change.classList.toggle("down", pct !== null && Number(pct) < 0);
  change.textContent = pct === null ? "–" : `${Number(pct) > 0 ? "+" : ""}${pct} %`;
  // A halt, a resume or the session's close shows here too (it kept the status first rendered).
  row.querySelector('[data-field="status"]').textContent = marketStatusText(
    data.status,
    data.status_reason,
  );
}

async function refreshAll() {
  const rows = document.querySelectorAll("#markets tbody tr[data-symbol]");
  await Promise.allSettled([...rows].map(refreshRow));
  setTimeout(refreshAll, REFRESH_MS);
}

setTimeout(refreshAll, REFRESH_MS);

// The flow metrics page /boards/NAME/metrics: lead and cycle times, throughput and the
// cumulative flow of features and of tasks, from GET /api/boards/NAME/metrics.
import { api, boardApi, boardNameFromPath, signedIn } from "./api.js";
import { bars, dayRange, legend, stackedArea } from "./charts.js";
import { formatDuration, h, renderTopbar, showFatal } from "./ui.js";

const name = boardNameFromPath();
const base = boardApi(name);
const out = document.getElementById("metrics");
const form = document.getElementById("range-form");

function median(values) {
  if (!values.length) return null;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

function percentile(values, p) {
  if (!values.length) return null;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
}

function tile(label, value, note, testid) {
  return h("div", { class: "tile", "data-testid": testid },
    h("div", { class: "tile-label" }, label),
    h("div", { class: "tile-value" }, value),
    h("div", { class: "tile-note" }, note));
}

function timeTile(label, times, testid) {
  const values = Object.values(times);
  return tile(label, formatDuration(median(values)),
    values.length ? `median of ${values.length} · 85% within ${formatDuration(percentile(values, 85))}`
      : "no completed cards yet", testid);
}

// Cards by id (live and archived), to name them and tell features from tasks.
async function knownCards() {
  const cards = new Map();
  const [board, bag] = await Promise.all([api(base), api(`${base}/archive`).catch(() => [])]);
  for (const card of board.cards) cards.set(card.id, card);
  for (const entry of bag) {
    for (const card of [entry.feature, ...(entry.tasks || [])]) cards.set(card.id, card);
  }
  return { board, cards };
}

function split(times, cards, tasks) {
  return Object.fromEntries(Object.entries(times)
    .filter(([id]) => cards.has(id) && Boolean(cards.get(id).parent) === tasks));
}

function flowChart(title, testid, days, cfd, states) {
  const series = states.map((state, k) => ({
    label: state.title, colour: k, values: days.map((day) => (cfd[day] || {})[state.id] || 0),
  }));
  return h("section", { class: "chart-box" },
    h("h2", {}, title),
    h("p", { class: "hint" }, "Cards in each state at the end of each day; a widening band is work piling up."),
    stackedArea(`${title}: cards per state per day`, testid, days, series),
    legend(series));
}

function completedTable(metrics, cards) {
  const rows = Object.entries(metrics.lead_times)
    .map(([id, lead]) => ({ card: cards.get(id), lead, cycle: metrics.cycle_times[id] }))
    .filter((row) => row.card)
    .sort((a, b) => b.lead - a.lead)
    .slice(0, 15);
  if (!rows.length) return null;
  return h("section", { class: "chart-box" },
    h("h2", {}, "Longest lead times"),
    h("p", { class: "hint" }, "Completed cards, the slowest first."),
    h("table", { class: "metrics-table", "data-testid": "lead-table" },
      h("thead", {}, h("tr", {}, h("th", {}, "Card"), h("th", {}, "Kind"),
        h("th", { class: "num" }, "Lead time"), h("th", { class: "num" }, "Cycle time"))),
      h("tbody", {}, rows.map((row) => h("tr", {},
        h("td", {}, row.card.title), h("td", {}, row.card.parent ? "Task" : "Feature"),
        h("td", { class: "num" }, formatDuration(row.lead)),
        h("td", { class: "num" }, formatDuration(row.cycle)))))));
}

async function show(from, to) {
  const query = new URLSearchParams();
  if (from) query.set("from", from);
  if (to) query.set("to", to);
  out.setAttribute("aria-busy", "true");
  const [metrics, { board, cards }] = await Promise.all([api(`${base}/metrics?${query}`), knownCards()]);
  form.from.value = metrics.from;
  form.to.value = metrics.to;
  const days = dayRange(metrics.from, metrics.to);
  const states = metrics.states || board.states;
  const throughput = days.map((day) => metrics.throughput[day] || 0);
  const done = throughput.reduce((a, b) => a + b, 0);
  const working = new Set(states.filter((s) => s.working).map((s) => s.id));
  const wip = board.cards.filter((card) => working.has(card.state)).length;
  out.replaceChildren(
    h("div", { class: "tiles" },
      timeTile("Feature lead time", split(metrics.lead_times, cards, false), "tile-lead"),
      timeTile("Feature cycle time", split(metrics.cycle_times, cards, false), "tile-cycle"),
      timeTile("Task cycle time", split(metrics.cycle_times, cards, true), "tile-task-cycle"),
      tile("Throughput", String(done), `cards completed in ${days.length} days · ${(done / Math.max(days.length / 7, 1)).toFixed(1)} a week`, "tile-throughput"),
      tile("In progress", String(wip), "cards in working states now", "tile-wip")),
    flowChart("Cumulative flow: features", "cfd-features", days, metrics.cfd, states.filter((s) => !s.task)),
    flowChart("Cumulative flow: tasks", "cfd-tasks", days, metrics.cfd, states.filter((s) => s.task)),
    h("section", { class: "chart-box" },
      h("h2", {}, "Throughput"),
      h("p", { class: "hint" }, "Cards (features and tasks) completed each day."),
      bars("Cards completed per day", "throughput-chart", days, throughput)),
    completedTable(metrics, cards) || "");
  out.removeAttribute("aria-busy");
  return board;
}

async function main() {
  const user = await signedIn();
  const params = new URLSearchParams(location.search);
  const board = await show(params.get("from"), params.get("to"));
  document.title = `Metrics · ${board.title} · Kanban`;
  document.getElementById("metrics-title").textContent = `Flow metrics: ${board.title}`;
  renderTopbar(user, [{ label: "Boards", href: "/" },
    { label: board.title, href: `/boards/${encodeURIComponent(name)}` }, { label: "Metrics" }]);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const error = document.getElementById("metrics-error");
    error.hidden = true;
    try {
      await show(form.from.value, form.to.value);
      const url = new URL(location.href);
      url.searchParams.set("from", form.from.value);
      url.searchParams.set("to", form.to.value);
      history.replaceState(null, "", url);
    } catch (failure) {
      error.textContent = failure.message;
      error.hidden = false;
    }
  });
}

main().catch((error) => showFatal(document.getElementById("main"),
  error.status === 404 ? `There is no board “${name}”.` : error.message));

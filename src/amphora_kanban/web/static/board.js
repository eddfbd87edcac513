// The board page /boards/NAME: loads the board and its people, draws it, keeps it live,
// and turns drops, quick-adds and the panels' actions into API calls. The page shows
// what the server says: a change is drawn from the server's answer or from the stream,
// except a dropped card, shown where it was dropped until the server answers the move.
import { api, boardApi, boardNameFromPath, loginUrl, signedIn } from "./api.js";
import { createBag } from "./bag.js";
import { BoardModel, Filters, parseQuickAdd } from "./board-model.js";
import { createBoardSettings } from "./board-settings.js";
import { renderBoard } from "./board-view.js";
import { createCardPanel } from "./card-panel.js";
import { enableDragAndDrop } from "./dnd.js";
import { liveStream } from "./live.js";
import { timeSlider } from "./time-travel.js";
import { h, renderTopbar, showFatal, toast } from "./ui.js";

const root = document.getElementById("board");
const view = {
  model: new BoardModel(boardNameFromPath()),
  filters: new Filters(),
  users: new Map(),
  readonly: false,
};
const base = boardApi(view.model.name);
let dragging = false;
let redrawPending = false;
let panel = null;

function redraw() {
  if (dragging) {
    redrawPending = true; // drawn when the drag ends: the dragged card must stay put
    return;
  }
  redrawPending = false;
  refreshStateFilter();
  renderBoard(root, view);
}

function warn(answer) {
  for (const warning of answer.warnings || []) toast(warning.message, "warning");
}

function applied(answer) {
  view.model.put(answer);
  warn(answer);
  redraw();
}

const live = liveStream({
  url: () => `${base}/events?generation=${view.model.generation}`,
  status(state) {
    const badge = document.getElementById("live-status");
    badge.dataset.state = state;
    badge.textContent = { live: "Live", connecting: "Connecting…", offline: "Offline",
                          paused: "Paused" }[state];
  },
  refused() {
    // Signed out meanwhile (the session expired or ended elsewhere): sign in again.
    api("/api/me").catch((error) => {
      if (error.status === 401) location.assign(loginUrl());
    });
  },
  delta(delta) {
    if (view.readonly) return;
    if (!view.model.apply(delta)) {
      reload();
      return;
    }
    redraw();
    panel?.refresh(new Set([...delta.cards.map((card) => card.id), ...(delta.removed || [])]));
  },
});

async function reload(at = null) {
  const board = await api(at ? `${base}?at=${encodeURIComponent(at)}` : base);
  view.model.load(board);
  if (board.users) {
    for (const user of board.users) view.users.set(user.id, user);
  }
  redraw();
}

// -- moving cards -----------------------------------------------------------------

function accepts(id, stateId, parent) {
  const card = view.model.card(id);
  const state = view.model.state(stateId);
  if (!card || !state || view.readonly) return false;
  if (!parent) return !state.task;
  return state.task && parent !== id && !view.model.tasks(id).length;
}

// The card is drawn where it was dropped at once; the server's answer then puts it
// where the server has it (back where it was, with the refusal, when refused). Moves
// are sent one after the other, in the order they were dropped: a card dropped in front
// of one still on its way must reach the server after it.
let moves = Promise.resolve();

function move(id, state, parent, before) {
  const card = view.model.card(id);
  const column = view.model.column(state, parent);
  const next = column[column.findIndex((c) => c.id === id) + 1];
  const unchanged = card.state === state && (card.parent || null) === parent
    && (before === id || (column.some((c) => c.id === id) && (next ? next.id : null) === before));
  if (unchanged) return moves;
  const ticket = view.model.moveLocally(id, state, parent, before);
  redraw();
  moves = moves.then(async () => {
    try {
      const answer = await api(`${base}/cards/${id}/move`, { method: "POST", body: { state, parent, before } });
      view.model.settle(id, ticket);
      applied(answer);
    } catch (error) {
      view.model.settle(id, ticket);
      toast(error.message, "error");
      redraw();
    }
  });
  return moves;
}

// -- quick add: "Title [3]" + Enter -------------------------------------------------

async function quickAdd(input) {
  const { title, size } = parseQuickAdd(input.value);
  if (!title) return;
  const body = { title, state: input.dataset.state };
  if (size !== undefined) body.size = size;
  if (input.dataset.parent) body.parent = input.dataset.parent;
  // The board may be redrawn while the card is created: the box is found again by its id.
  const box = () => root.querySelector(`[data-testid="${CSS.escape(input.dataset.testid)}"]`) || input;
  input.disabled = true;
  try {
    const answer = await api(`${base}/cards`, { method: "POST", body });
    box().value = "";
    applied(answer);
  } catch (error) {
    toast(error.message, "error");
  } finally {
    box().disabled = false;
    box().focus();
  }
}

root.addEventListener("keydown", (event) => {
  const input = event.target.closest(".quick-add");
  if (input) {
    if (event.key === "Enter") {
      event.preventDefault();
      quickAdd(input);
    } else if (event.key === "Escape") {
      input.value = "";
      input.blur();
    }
    return;
  }
  const card = event.target.matches("[data-card]") ? event.target : null;
  if (card && (event.key === "Enter" || event.key === " ")) {
    event.preventDefault();
    panel.open(card.dataset.card);
  }
});

root.addEventListener("click", (event) => {
  if (event.target.closest("input, button, a, select, textarea")) return;
  const card = event.target.closest("[data-card]");
  // A click on a feature's task board, between its tasks, does not open the feature.
  if (!card || event.target.closest(".taskboard") && !card.closest(".taskboard")) return;
  panel.open(card.dataset.card);
});

// "/" anywhere but in a field goes to the text filter.
document.addEventListener("keydown", (event) => {
  if (event.key !== "/" || event.ctrlKey || event.metaKey || event.altKey) return;
  if (event.target.closest("input, textarea, select, [contenteditable]")) return;
  if (document.querySelector("dialog[open]")) return;
  event.preventDefault();
  document.getElementById("filter-text").focus();
});

// -- filters ------------------------------------------------------------------------

let stateFilterOf = null;

// The state filter lists the board's states; it follows them as they change (a removed
// state's filter is dropped).
function refreshStateFilter() {
  const shown = JSON.stringify(view.model.states.map((s) => [s.id, s.title, s.task]));
  if (shown === stateFilterOf) return;
  stateFilterOf = shown;
  const select = document.getElementById("filter-state");
  const group = (label, states) => (states.length ? h("optgroup", { label },
    states.map((s) => h("option", { value: s.id }, s.title))) : null);
  select.replaceChildren(h("option", { value: "" }, "All states"),
    group("Features", view.model.featureStates()), group("Tasks", view.model.taskStates()));
  if (!view.model.state(view.filters.state)) view.filters.state = "";
  select.value = view.filters.state;
}

function setUpFilters() {
  const text = document.getElementById("filter-text");
  const assignee = document.getElementById("filter-assignee");
  const state = document.getElementById("filter-state");
  assignee.append(...[...view.users.values()].map((user) => h("option", { value: user.id }, user.display_name)));
  text.addEventListener("input", () => { view.filters.text = text.value.trim(); redraw(); });
  assignee.addEventListener("change", () => { view.filters.assignee = assignee.value; redraw(); });
  state.addEventListener("change", () => { view.filters.state = state.value; redraw(); });
}

// -- time travel ----------------------------------------------------------------------

async function showAt(date, slider) {
  const at = date ? date.toISOString() : null;
  live.stop();
  try {
    await reload(at);
  } catch (error) {
    toast(error.message, "error");
    if (at) return showAt(null, slider);
    throw error;
  }
  view.readonly = Boolean(at);
  slider.show(view.model.at || at);
  redraw();
  if (!at) live.start();
  return undefined;
}

// The board as of ?at= (falling back to now when the storage keeps no such past).
async function firstLoad(at) {
  try {
    await reload(at);
    return at;
  } catch (error) {
    if (!at || error.status === 401) throw error;
    toast(`The board cannot be shown as of ${at}: ${error.message}`, "error");
    await reload();
    return null;
  }
}

async function main() {
  const user = await signedIn();
  renderTopbar(user, [{ label: "Boards", href: "/" }, { label: view.model.name }]);
  const [users, at] = await Promise.all([
    api("/api/users"), firstLoad(new URLSearchParams(location.search).get("at"))]);
  for (const person of users) view.users.set(person.id, person);
  document.title = `${view.model.title} · Kanban`;
  renderTopbar(user, [{ label: "Boards", href: "/" }, { label: view.model.title }]);
  document.getElementById("metrics-link").href = `/boards/${encodeURIComponent(view.model.name)}/metrics`;
  setUpFilters();
  panel = createCardPanel(view, {
    changed: applied,
    archived(ids) {
      for (const id of ids) view.model.cards.delete(id);
      redraw();
    },
  });
  const bag = createBag(view, {
    restored(feature, tasks) {
      for (const card of [feature, ...tasks]) view.model.put(card);
      redraw();
    },
  });
  document.getElementById("open-bag").addEventListener("click", () => bag.open());
  if (user.role === "admin") {
    const settings = createBoardSettings(view, {
      saved(board) {
        view.model.load(board);
        redraw();
      },
    });
    const button = document.getElementById("open-settings");
    button.hidden = false;
    button.addEventListener("click", () => settings.open());
  }
  enableDragAndDrop(root, {
    accepts,
    drop: move,
    dragging(active) {
      dragging = active;
      if (!active && redrawPending) redraw();
    },
  });
  const slider = timeSlider({ created: view.model.created, go: (date) => showAt(date, slider) });
  view.readonly = Boolean(at);
  slider.show(view.model.at || at);
  redraw();
  if (!at) live.start();
}

main().catch((error) => {
  document.getElementById("toolbar").hidden = true;
  showFatal(root, error.status === 404 ? `There is no board “${view.model.name}”.` : error.message);
});

// Drawing the board from a BoardModel: feature columns with their WIP state, feature
// cards, and inside a feature in an `explode` state its task board. The whole board is
// redrawn on every change; what a person is typing and where the focus is survive it.
import { avatar, h } from "./ui.js";

// view: {model, filters, users (Map id -> user), readonly}
export function renderBoard(root, view) {
  const kept = keepInputs(root);
  const taskStates = view.model.taskStates();
  root.style.setProperty("--task-columns", Math.max(taskStates.length, 1));
  root.replaceChildren(...view.model.featureStates().map((state) => featureColumn(state, view)));
  restoreInputs(root, kept);
  root.removeAttribute("aria-busy");
}

function keepInputs(root) {
  const values = new Map();
  for (const input of root.querySelectorAll("input[data-testid]")) {
    if (input.value) values.set(input.dataset.testid, input.value);
  }
  const scrolls = new Map();
  for (const list of root.querySelectorAll(".cards[data-testid]")) {
    if (list.scrollTop) scrolls.set(list.dataset.testid, list.scrollTop);
  }
  const focused = root.contains(document.activeElement) ? document.activeElement : null;
  return { values, scrolls, focus: focused?.dataset.testid, caret: focused?.selectionStart };
}

function restoreInputs(root, kept) {
  const find = (id) => root.querySelector(`[data-testid="${CSS.escape(id)}"]`);
  for (const [id, value] of kept.values) {
    const input = find(id);
    if (input) input.value = value;
  }
  for (const [id, top] of kept.scrolls) {
    const list = find(id);
    if (list) list.scrollTop = top;
  }
  const focus = kept.focus && find(kept.focus);
  if (focus) {
    focus.focus({ preventScroll: true });
    if (typeof kept.caret === "number" && focus.setSelectionRange) {
      focus.setSelectionRange(kept.caret, kept.caret);
    }
  }
}

const LOCK = "M4 7V5a4 4 0 1 1 8 0v2h1v8H3V7h1zm2 0h4V5a2 2 0 1 0-4 0v2z";

function wipBadge(state, load, testid) {
  if (!state.wip) return null;
  const { limit, unit, hard } = state.wip;
  const label = `${load.used} of at most ${limit} ${unit}${hard ? ", a hard limit" : ""}`;
  return h("span", {
    class: hard ? "wip hard" : "wip", title: `${label}${hard ? ": moves over it are refused" : ""}`,
    "aria-label": `WIP ${label}`,
  },
    hard ? h("svg:svg", { viewBox: "0 0 16 16", "aria-hidden": "true" }, h("svg:path", { d: LOCK })) : null,
    h("span", { "data-testid": testid }, `${load.used}/${limit}${unit === "points" ? " pts" : ""}`));
}

function wipWarning(state, load, testid) {
  if (!load.over) return null;
  return h("p", { class: "wip-warning", role: "status", "data-testid": testid },
    `Over the WIP limit: ${load.used} ${state.wip.unit} for a limit of ${state.wip.limit}`);
}

function stats(cards) {
  const points = cards.reduce((sum, card) => sum + card.size, 0);
  return `${cards.length} card${cards.length === 1 ? "" : "s"} · ${points} pt${points === 1 ? "" : "s"}`;
}

function featureColumn(state, view) {
  const { model, filters, readonly } = view;
  const load = model.wipLoad(state);
  const features = model.column(state.id);
  const shown = features.filter((card) => filters.showsFeature(model, card));
  const classes = ["column", state.explode && "explode", state.working && "working",
    load.over && "over"].filter(Boolean).join(" ");
  const titleId = `column-title-${state.id}`;
  return h("section", { class: classes, "data-testid": `column-${state.id}`, "data-state": state.id,
                        "aria-labelledby": titleId },
    h("header", { class: "column-head" },
      h("div", { class: "column-title" },
        h("h2", { id: titleId }, state.title),
        wipBadge(state, load, `wip-${state.id}`)),
      h("div", { class: "column-stats", "data-testid": `stats-${state.id}` }, stats(features)),
      wipWarning(state, load, `wip-warning-${state.id}`)),
    readonly ? null : quickAddBox(`quick-add-${state.id}`, state.id, null, "+ Add a feature",
      `Add a feature to ${state.title}`),
    h("ol", { class: "cards", "data-testid": `cards-${state.id}`, "data-drop-state": state.id,
              "data-drop-parent": "", "aria-label": `${state.title}: features` },
      shown.map((feature) => featureCard(feature, state, view))));
}

// A box that adds a card on Enter: "Title [3]" makes it 3 points.
function quickAddBox(testid, state, parent, placeholder, label) {
  return h("input", {
    class: "quick-add", "data-testid": testid, "data-state": state, "data-parent": parent,
    placeholder, "aria-label": label, autocomplete: "off", maxlength: 210,
    title: "Type a title and press Enter; end it with [3] for a size of 3 points",
  });
}

function cardClasses(card, state, kind) {
  return ["card", kind, state?.working && "working", state?.complete && "complete",
    card.blocked && "blocked"].filter(Boolean).join(" ");
}

// A card whose move the server has not answered yet is busy.
function busy(card, view) {
  return view.model.pending.has(card.id) ? "true" : null;
}

function describeCard(card, view) {
  const parts = [card.title, `${card.size} point${card.size === 1 ? "" : "s"}`];
  const person = card.assignee && view.users.get(card.assignee);
  if (person) parts.push(`assigned to ${person.display_name}`);
  if (card.blocked) parts.push(`blocked: ${card.blocked}`);
  return parts.join(", ");
}

function cardTop(card, view, dragHandle) {
  return h("div", {
    class: "card-top", "data-drag": dragHandle && !view.readonly ? card.id : null,
    draggable: dragHandle && !view.readonly ? "true" : null,
  },
    h("span", { class: "card-title", "data-testid": `title-${card.id}` }, card.title),
    h("span", { class: "points", "data-testid": `size-${card.id}`, title: "Size in points" },
      String(card.size)));
}

// The assignee (a task, being narrow, shows the first name only) and `extra`.
function cardMeta(card, view, extra = null) {
  const person = card.assignee ? view.users.get(card.assignee) : null;
  const who = person || (card.assignee ? { id: card.assignee, display_name: "Unknown person" } : null);
  const name = who && card.parent ? who.display_name.split(" ")[0] : who?.display_name;
  return h("div", { class: "card-meta" },
    who ? h("span", { class: "assignee", "data-testid": `assignee-${card.id}`, title: who.display_name },
      avatar(who), name) : null,
    extra);
}

function blockedReason(card) {
  return card.blocked
    ? h("div", { class: "blocked-reason", "data-testid": `blocked-${card.id}` }, card.blocked) : null;
}

function progressBar(feature, model) {
  const { complete, total } = model.progress(feature.id);
  if (!total) return null;
  const percent = Math.round((complete / total) * 100);
  return h("div", { class: "progress", "data-testid": `progress-${feature.id}` },
    h("div", {
      class: "progress-track", role: "progressbar", "aria-label": "Progress",
      "aria-valuemin": 0, "aria-valuemax": total, "aria-valuenow": complete,
    }, h("div", { class: "progress-fill", style: `width: ${percent}%` })),
    h("span", {}, `${complete}/${total} pts`));
}

function featureCard(feature, state, view) {
  const { model } = view;
  const exploded = state.explode;
  const tasks = model.tasks(feature.id);
  const summary = !exploded && tasks.length
    ? h("span", { class: "task-summary" }, `${tasks.length} task${tasks.length === 1 ? "" : "s"}`)
    : null;
  return h("li", {
    class: cardClasses(feature, state, exploded ? "feature exploded" : "feature"),
    "data-testid": `card-${feature.id}`, "data-card": feature.id, tabindex: 0,
    "aria-busy": busy(feature, view),
    "data-drag": exploded || view.readonly ? null : feature.id,
    draggable: exploded || view.readonly ? null : "true",
    "aria-label": describeCard(feature, view),
  },
    cardTop(feature, view, exploded),
    blockedReason(feature),
    progressBar(feature, model),
    cardMeta(feature, view, summary),
    exploded ? taskBoard(feature, view) : null);
}

function taskBoard(feature, view) {
  return h("div", { class: "taskboard", role: "group", "aria-label": `Tasks of ${feature.title}`,
                    "data-testid": `taskboard-${feature.id}` },
    view.model.taskStates().map((state) => taskColumn(feature, state, view)));
}

function taskColumn(feature, state, view) {
  const { model, filters, readonly } = view;
  const load = model.wipLoad(state);
  const tasks = model.column(state.id, feature.id);
  const id = `${feature.id}-${state.id}`;
  const classes = ["task-column", state.working && "working", load.over && "over"]
    .filter(Boolean).join(" ");
  return h("section", { class: classes, "data-testid": `task-column-${id}`, "aria-label": state.title },
    h("header", { class: "task-head" },
      h("h3", { title: state.title }, state.title),
      h("span", { class: "column-stats" }, String(tasks.length)),
      wipBadge(state, load, `wip-${id}`)),
    readonly ? null : quickAddBox(`quick-add-${id}`, state.id, feature.id, "+ Add a task",
      `Add a task to ${feature.title}, ${state.title}`),
    h("ol", { class: "cards", "data-testid": `cards-${id}`, "data-drop-state": state.id,
              "data-drop-parent": feature.id },
      tasks.filter((task) => filters.showsTask(model, task))
        .map((task) => taskCard(task, state, view))));
}

function taskCard(task, state, view) {
  return h("li", {
    class: cardClasses(task, state, "task"), "data-testid": `card-${task.id}`, "data-card": task.id,
    tabindex: 0, "aria-busy": busy(task, view), "data-drag": view.readonly ? null : task.id,
    draggable: view.readonly ? null : "true", "aria-label": describeCard(task, view),
  },
    cardTop(task, view, false),
    blockedReason(task),
    task.assignee ? cardMeta(task, view) : null);
}

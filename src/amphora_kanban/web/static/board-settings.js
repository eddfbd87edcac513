// Board settings, for administrators: the board's columns (states) edited as a draft
// (add, rename, reorder, flags, WIP limit, remove) and saved at once as the whole
// ordered list (PUT /api/boards/NAME/states); and the board's export as a JSON file.
//
// Feature columns and task columns are listed apart, but the draft keeps the board's
// one ordered list: moving a column up or down swaps it with its neighbour of the same
// tier, a new column goes last, and a column switched to the other tier keeps its place.
import { api, boardApi } from "./api.js";
import { h, toast } from "./ui.js";

const FLAGS = [
  { name: "explode", label: "Shows tasks", features: true,
    hint: "Features in this column open their task board" },
  { name: "working", label: "Working",
    hint: "Cards here are being worked on: pulling one in assigns the mover" },
  { name: "complete", label: "Complete",
    hint: "Cards here are done: tasks count as progress, cycle time ends" },
];

// saved(board): the board the server answered (its states saved).
export function createBoardSettings(view, { saved }) {
  const dialog = document.getElementById("settings-panel");
  const form = document.getElementById("settings-form");
  const errorBox = document.getElementById("settings-error");
  const lists = { false: document.getElementById("feature-states"),
                  true: document.getElementById("task-states") };
  const base = boardApi(view.model.name);
  let drafts = [];
  let added = 0;

  function showError(message) {
    errorBox.textContent = message || "";
    errorBox.hidden = !message;
    if (message) errorBox.scrollIntoView({ block: "nearest" });
  }

  function draftOf(state) {
    return {
      key: state.id, id: state.id, title: state.title, task: state.task,
      explode: state.explode, working: state.working, complete: state.complete,
      limit: state.wip ? String(state.wip.limit) : "", unit: state.wip?.unit || "cards",
      hard: Boolean(state.wip?.hard),
    };
  }

  function cardsIn(draft) {
    if (!draft.id) return 0;
    return [...view.model.cards.values()].filter((card) => card.state === draft.id).length;
  }

  // Swaps draft i with its nearest neighbour of the same tier in direction `step`.
  function shift(i, step) {
    let j = i + step;
    while (j >= 0 && j < drafts.length && drafts[j].task !== drafts[i].task) j += step;
    if (j < 0 || j >= drafts.length) return;
    [drafts[i], drafts[j]] = [drafts[j], drafts[i]];
  }

  function checkbox(draft, name, label, hint) {
    return h("label", { class: "check", title: hint },
      h("input", { type: "checkbox", name, checked: draft[name] }), label);
  }

  function row(draft, index, tier) {
    const count = cardsIn(draft);
    const at = () => drafts.indexOf(draft);
    return h("li", { class: "state-row", "data-key": draft.key, "data-testid": `state-row-${draft.key}`,
                     role: "group", "aria-label": draft.title.trim() || "New column" },
      h("div", { class: "state-line" },
        h("div", { class: "order-buttons" },
          h("button", { class: "icon-button small", type: "button", name: "up", "aria-label": "Move up",
                        disabled: index === 0, onclick: () => structural(() => shift(at(), -1), draft.key, "up") }, "↑"),
          h("button", { class: "icon-button small", type: "button", name: "down", "aria-label": "Move down",
                        disabled: index === tier.length - 1,
                        onclick: () => structural(() => shift(at(), 1), draft.key, "down") }, "↓")),
        h("input", { class: "state-title", name: "title", value: draft.title, maxlength: 200,
                     "aria-label": "Title", placeholder: "Column title", autocomplete: "off" }),
        h("span", { class: "state-count", title: draft.id ? `Id: ${draft.id}` : "Not saved yet" },
          draft.id ? (count ? `${count} card${count === 1 ? "" : "s"}` : "empty") : "new"),
        h("button", { class: "icon-button small danger", type: "button", name: "remove",
                      "aria-label": "Remove", title: "Remove this column (when it holds no cards)",
                      onclick: () => structural(() => drafts.splice(at(), 1), null) }, "×")),
      h("div", { class: "state-flags" },
        FLAGS.filter((flag) => !flag.features || !draft.task)
          .map((flag) => checkbox(draft, flag.name, flag.label, flag.hint)),
        checkbox(draft, "task", "Task column", "A column of the task board inside features"),
        h("span", { class: "wip-edit" },
          h("label", { class: "inline" }, "WIP limit",
            h("input", { type: "number", name: "limit", min: 1, step: 1, value: draft.limit,
                         placeholder: "none", inputmode: "numeric" })),
          h("label", { class: "visually-hidden", for: `unit-${draft.key}` }, "Unit"),
          h("select", { id: `unit-${draft.key}`, name: "unit", disabled: !draft.limit },
            h("option", { value: "cards", selected: draft.unit === "cards" }, "cards"),
            h("option", { value: "points", selected: draft.unit === "points" }, "points")),
          h("label", { class: "check", title: "Moves over the limit are refused, not only warned" },
            h("input", { type: "checkbox", name: "hard", checked: draft.hard, disabled: !draft.limit }),
            "Hard"))));
  }

  function render() {
    for (const task of [false, true]) {
      const tier = drafts.filter((draft) => draft.task === task);
      lists[task].replaceChildren(...(tier.length
        ? tier.map((draft, index) => row(draft, index, tier))
        : [h("li", { class: "empty small" }, task ? "No task columns." : "No columns.")]));
    }
  }

  // Changes the list's shape, draws it again and puts the focus back on `control` of
  // the row `key` (or on the list's first title when that row is gone).
  function structural(change, key, control = "title") {
    change();
    render();
    const rowElement = key && form.querySelector(`[data-key="${CSS.escape(key)}"]`);
    const target = rowElement?.querySelector(`[name="${control}"]:not(:disabled)`)
      || rowElement?.querySelector('[name="title"]') || form.querySelector('[name="title"]');
    target?.focus();
  }

  form.addEventListener("input", (event) => {
    const rowElement = event.target.closest(".state-row");
    const draft = rowElement && drafts.find((d) => d.key === rowElement.dataset.key);
    if (!draft) return;
    const { name } = event.target;
    if (name === "task") {
      draft.task = event.target.checked;
      structural(() => {}, draft.key, "task");
      return;
    }
    draft[name] = event.target.type === "checkbox" ? event.target.checked : event.target.value;
    if (name === "limit") {
      for (const other of rowElement.querySelectorAll('[name="unit"], [name="hard"]')) {
        other.disabled = !draft.limit.trim();
      }
    }
    if (name === "title") rowElement.setAttribute("aria-label", draft.title.trim() || "New column");
  });

  function addColumn(task) {
    added += 1;
    const key = `new-${added}`;
    drafts.push({ key, id: null, title: "", task, explode: false, working: false, complete: false,
                  limit: "", unit: "cards", hard: false });
    structural(() => {}, key);
  }

  // The drafts as the API's states, or an error message naming the faulty column.
  function states() {
    const result = [];
    for (const [i, draft] of drafts.entries()) {
      const title = draft.title.trim();
      const where = title ? `“${title}”` : `Column ${i + 1}`;
      if (!title) return { error: `${where} needs a title.`, key: draft.key, control: "title" };
      let wip = null;
      if (draft.limit.trim()) {
        const limit = Number(draft.limit);
        if (!Number.isInteger(limit) || limit < 1) {
          return { error: `The WIP limit of ${where} must be a whole number of at least 1.`,
                   key: draft.key, control: "limit" };
        }
        wip = { limit, unit: draft.unit, hard: draft.hard };
      }
      result.push({ ...(draft.id ? { id: draft.id } : {}), title, task: draft.task,
                    explode: draft.explode, working: draft.working, complete: draft.complete, wip });
    }
    return { states: result };
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    showError("");
    const checked = states();
    if (checked.error) {
      showError(checked.error);
      form.querySelector(`[data-key="${CSS.escape(checked.key)}"] [name="${checked.control}"]`)?.focus();
      return;
    }
    const button = document.getElementById("settings-save");
    button.disabled = true;
    try {
      saved(await api(`${base}/states`, { method: "PUT", body: checked.states }));
      dialog.close();
      toast("Columns saved.");
    } catch (error) {
      showError(error.message);
    } finally {
      button.disabled = false;
    }
  });

  document.getElementById("add-feature-state").addEventListener("click", () => addColumn(false));
  document.getElementById("add-task-state").addEventListener("click", () => addColumn(true));
  for (const id of ["settings-close", "settings-cancel"]) {
    document.getElementById(id).addEventListener("click", () => dialog.close());
  }

  return {
    open() {
      drafts = view.model.states.map(draftOf);
      showError("");
      render();
      const day = new Date().toISOString().slice(0, 10);
      const link = document.getElementById("export-link");
      link.href = `${base}/export`;
      link.download = `${view.model.name}-${day}.json`;
      dialog.showModal();
      form.querySelector('[name="title"]')?.focus();
    },
  };
}

// The bag: archived features (with their tasks), searched by a word of the feature or
// of one of its tasks, each with a button that puts it back on the board.
import { api, boardApi } from "./api.js";
import { h, htmlToText, toast } from "./ui.js";

// restored(feature, tasks): puts a restored feature and its tasks on the page's board.
export function createBag(view, { restored }) {
  const dialog = document.getElementById("bag-panel");
  const search = document.getElementById("bag-search");
  const results = document.getElementById("bag-results");
  const base = boardApi(view.model.name);
  let timer = null;
  let asked = 0;

  function highlight(text, word) {
    const at = word ? text.toLowerCase().indexOf(word.toLowerCase()) : -1;
    if (at < 0) return text;
    return [text.slice(0, at), h("mark", {}, text.slice(at, at + word.length)),
      text.slice(at + word.length)];
  }

  function matchedIds(matched) {
    return new Set(Array.isArray(matched) ? matched.map((m) => (typeof m === "string" ? m : m?.id)) : []);
  }

  function item(entry, word) {
    const { feature, tasks = [] } = entry;
    const matched = matchedIds(entry.matched);
    const shownTasks = word
      ? tasks.filter((task) => matched.has(task.id)
        || `${task.title} ${htmlToText(task.description)}`.toLowerCase().includes(word.toLowerCase()))
      : tasks.slice(0, 4);
    return h("li", { class: "bag-item", "data-testid": `bag-item-${feature.id}` },
      h("div", { class: "bag-item-head" },
        h("strong", {}, highlight(feature.title, word)),
        view.readonly ? null : h("button", {
          class: "button small", type: "button", "data-testid": `restore-${feature.id}`,
          onclick: (event) => restore(entry, event.currentTarget),
        }, "Restore")),
      h("div", { class: "muted" },
        `${tasks.length} task${tasks.length === 1 ? "" : "s"} · ${feature.size} pts`),
      shownTasks.length ? h("ul", { class: "bag-tasks" },
        shownTasks.map((task) => h("li", {}, highlight(task.title, word)))) : null);
  }

  async function find() {
    const word = search.value.trim();
    const ticket = ++asked;
    results.setAttribute("aria-busy", "true");
    try {
      const found = await api(`${base}/archive?text=${encodeURIComponent(word)}`);
      if (ticket !== asked) return; // a newer search is under way
      results.replaceChildren(...(found.length ? found.map((entry) => item(entry, word))
        : [h("li", { class: "empty" }, word ? `Nothing in the bag matches “${word}”.` : "The bag is empty.")]));
    } catch (error) {
      results.replaceChildren(h("li", { class: "error-message", role: "alert" }, error.message));
    } finally {
      if (ticket === asked) results.removeAttribute("aria-busy");
    }
  }

  async function restore(entry, button) {
    button.disabled = true;
    try {
      const feature = await api(`${base}/cards/${entry.feature.id}/restore`, { method: "POST" });
      restored(feature, entry.tasks || []);
      button.closest("li").remove();
      search.focus(); // the focus was on the button just removed
      toast(`“${entry.feature.title}” is back on the board.`);
    } catch (error) {
      button.disabled = false;
      toast(error.message, "error");
    }
  }

  search.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(find, 200);
  });
  search.addEventListener("keydown", (event) => {
    if (event.key === "Enter") {
      clearTimeout(timer);
      find();
    } else if (event.key === "Escape" && !search.value) {
      // The first Escape empties the box (the browser's own), the next closes the bag.
      event.preventDefault();
      dialog.close();
    }
  });
  document.getElementById("bag-close").addEventListener("click", () => dialog.close());

  return {
    open() {
      dialog.showModal();
      search.focus();
      find();
    },
  };
}

// The card panel: a side dialog to edit a card (title, description, size, assignee,
// state, blocked reason), read and add comments, see its history, and archive a feature.
import { api, boardApi } from "./api.js";
import { formatTime, h, htmlToText, toast } from "./ui.js";

const EVENTS = { created: "Created in", moved: "Moved to", archived: "Archived from",
                 restored: "Restored to" };

// view: the board's {model, users, readonly}; changed(answer) applies a card the server
// answered; archived(ids) removes the cards the server archived.
export function createCardPanel(view, { changed, archived }) {
  const dialog = document.getElementById("card-panel");
  const form = document.getElementById("card-form");
  const errorBox = document.getElementById("card-error");
  const commentForm = document.getElementById("comment-form");
  const base = boardApi(view.model.name);
  let card = null;

  function field(name) {
    return form.elements.namedItem(name);
  }

  function showError(message) {
    errorBox.textContent = message || "";
    errorBox.hidden = !message;
  }

  function fillForm() {
    const tier = view.model.states.filter((state) => state.task === Boolean(card.parent));
    document.getElementById("panel-kind").textContent = card.parent ? "Task" : "Feature";
    document.getElementById("panel-title").textContent = card.title;
    field("title").value = card.title;
    field("description").value = htmlToText(card.description);
    field("size").value = card.size;
    field("blocked").value = card.blocked || "";
    field("assignee").replaceChildren(h("option", { value: "" }, "Nobody"),
      ...[...view.users.values()].map((user) => h("option", { value: user.id }, user.display_name)));
    field("assignee").value = card.assignee || "";
    field("state").replaceChildren(...tier.map((state) => h("option", { value: state.id }, state.title)));
    field("state").value = card.state;
    for (const element of [...form.elements, ...commentForm.elements]) {
      if (element.id !== "card-cancel") element.disabled = view.readonly;
    }
    document.getElementById("card-archive").hidden = Boolean(card.parent) || view.readonly;
    showError("");
  }

  function person(id) {
    if (!id) return "someone";
    return view.users.get(id)?.display_name || "a former member";
  }

  function renderDetails(details) {
    const comments = details.comments || [];
    document.getElementById("card-comments").replaceChildren(...(comments.length
      ? comments.map((comment) => h("li", { class: "comment" },
        h("div", { class: "comment-head" }, h("strong", {}, person(comment.by)),
          h("time", { datetime: comment.at }, formatTime(comment.at))),
        h("div", { class: "comment-body" }, htmlToText(comment.body))))
      : [h("li", { class: "muted" }, "No comments yet.")]));
    document.getElementById("card-history").replaceChildren(...[...(details.history || [])]
      .reverse().map((event) => {
        const state = view.model.state(event.state);
        return h("li", { class: event.working ? "working" : null },
          `${EVENTS[event.event] || event.event} ${state ? state.title : event.state}`,
          event.by ? ` by ${person(event.by)}` : "",
          h("time", { datetime: event.at }, formatTime(event.at)));
      }));
  }

  async function loadDetails() {
    try {
      renderDetails(await api(`${base}/cards/${card.id}`));
    } catch (error) {
      document.getElementById("card-history").replaceChildren(
        h("li", { class: "muted" }, `The history cannot be loaded: ${error.message}`));
    }
  }

  function changes() {
    const size = Number(field("size").value);
    const wanted = {
      title: field("title").value.trim(),
      description: field("description").value.trim() || null,
      size: Number.isInteger(size) ? size : field("size").value,
      blocked: field("blocked").value.trim() || null,
      assignee: field("assignee").value || null,
    };
    const current = { ...card, description: htmlToText(card.description).trim() || null };
    return Object.fromEntries(Object.entries(wanted).filter(([key, value]) => value !== (current[key] ?? null)));
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    showError("");
    const patch = changes();
    const state = field("state").value;
    try {
      if (Object.keys(patch).length) {
        changed(await api(`${base}/cards/${card.id}`, { method: "PATCH", body: patch }));
      }
      if (state !== card.state) {
        const answer = await api(`${base}/cards/${card.id}/move`, {
          method: "POST", body: { state, parent: card.parent || null, before: null },
        });
        changed(answer);
        for (const warning of answer.warnings || []) toast(warning.message, "warning");
      }
      dialog.close();
    } catch (error) {
      showError(error.message);
    }
  });

  commentForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = commentForm.elements.namedItem("body");
    if (!body.value.trim()) return;
    try {
      await api(`${base}/cards/${card.id}/comments`, { method: "POST", body: { body: body.value } });
      body.value = "";
      await loadDetails();
    } catch (error) {
      toast(error.message, "error");
    }
  });

  document.getElementById("card-archive").addEventListener("click", async () => {
    try {
      const answer = await api(`${base}/cards/${card.id}/archive`, { method: "POST" });
      archived(answer.archived || [card.id]);
      toast(`“${card.title}” is in the bag.`);
      dialog.close();
    } catch (error) {
      showError(error.message);
    }
  });

  for (const id of ["panel-close", "card-cancel"]) {
    document.getElementById(id).addEventListener("click", () => dialog.close());
  }
  dialog.addEventListener("close", () => { card = null; });

  return {
    open(id) {
      card = view.model.card(id);
      if (!card) return;
      fillForm();
      renderDetails({ history: [], comments: [] });
      dialog.showModal();
      field("title").focus();
      loadDetails();
    },
    // The open card changed elsewhere: show its new history (the form keeps its edits).
    refresh(ids) {
      if (card && ids.has(card.id)) {
        card = view.model.card(card.id) || card;
        loadDetails();
      }
    },
  };
}

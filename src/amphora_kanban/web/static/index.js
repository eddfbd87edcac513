// The boards list; for administrators, forms to create a board and invite a person.
import { api, signedIn } from "./api.js";
import { formatTime, h, renderTopbar, showFatal, toast } from "./ui.js";

const list = document.getElementById("board-list");

function slug(title) {
  return title.toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-+|-+$/g, "");
}

function renderBoards(boards) {
  list.removeAttribute("aria-busy");
  if (!boards.length) {
    list.replaceChildren(h("li", { class: "empty" }, "No boards yet."));
    return;
  }
  list.replaceChildren(...boards.map((board) => h("li", {},
    h("a", { class: "board-tile", href: `/boards/${encodeURIComponent(board.name)}`,
             "data-testid": `board-${board.name}` },
      h("strong", {}, board.title), h("span", {}, board.name)))));
}

function formError(id, message) {
  const box = document.getElementById(id);
  box.textContent = message || "";
  box.hidden = !message;
}

function setUpBoardForm(boards) {
  const form = document.getElementById("board-form");
  let nameEdited = false;
  form.name.addEventListener("input", () => { nameEdited = true; });
  form.title.addEventListener("input", () => {
    if (!nameEdited) form.name.value = slug(form.title.value);
  });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    formError("board-error", "");
    try {
      const board = await api("/api/boards", {
        method: "POST", body: { name: form.name.value.trim(), title: form.title.value.trim() },
      });
      boards.push({ name: board.name, title: board.title });
      renderBoards(boards);
      toast(`Board “${board.title}” created.`);
      form.reset();
      nameEdited = false;
    } catch (error) {
      formError("board-error", error.message);
    }
  });
}

function setUpInviteForm() {
  const form = document.getElementById("invite-form");
  const link = document.getElementById("invite-link");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    formError("invite-error", "");
    const email = form.email.value.trim();
    try {
      const invitation = await api("/api/invitations", {
        method: "POST", body: { email, role: form.role.value },
      });
      link.value = new URL(invitation.link, location.origin).href;
      document.getElementById("invite-to").textContent = email;
      document.getElementById("invite-expires").textContent =
        invitation.expires ? `Valid once, until ${formatTime(invitation.expires)}.` : "Valid once.";
      document.getElementById("invite-result").hidden = false;
      link.select();
    } catch (error) {
      formError("invite-error", error.message);
    }
  });
  document.getElementById("invite-copy").addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(link.value);
      toast("Link copied.");
    } catch {
      link.select();
      toast("Select the link and copy it.", "warning");
    }
  });
}

// An export file is read here and sent as the import's `data`.
function setUpImportForm(boards) {
  const form = document.getElementById("import-form");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    formError("import-error", "");
    const file = form.file.files[0];
    if (!file) {
      formError("import-error", "Choose an export file to import.");
      return;
    }
    let data;
    try {
      data = JSON.parse(await file.text());
    } catch {
      formError("import-error", `${file.name} is not an export: it does not hold JSON.`);
      return;
    }
    const name = form.name.value.trim();
    const button = form.querySelector('[type="submit"]');
    button.disabled = true;
    try {
      const board = await api("/api/boards/import", {
        method: "POST", body: name ? { name, data } : { data },
      });
      boards.push({ name: board.name, title: board.title });
      boards.sort((a, b) => (a.name < b.name ? -1 : 1));
      renderBoards(boards);
      const cards = board.cards.length;
      toast(`Board “${board.title}” imported as ${board.name}, ${cards} card${cards === 1 ? "" : "s"}.`);
      form.reset();
    } catch (error) {
      formError("import-error", error.message);
    } finally {
      button.disabled = false;
    }
  });
}

async function main() {
  const user = await signedIn();
  renderTopbar(user, [{ label: "Boards" }]);
  const boards = await api("/api/boards");
  renderBoards(boards);
  if (user.role === "admin") {
    document.getElementById("admin").hidden = false;
    setUpBoardForm(boards);
    setUpInviteForm();
    setUpImportForm(boards);
  }
}

main().catch((error) => showFatal(document.getElementById("main"), error.message));

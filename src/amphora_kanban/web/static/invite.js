// The invitation page /invite/TOKEN: choose a name and password, which signs in.
import { api } from "./api.js";

const form = document.getElementById("invite-form");
const errorBox = document.getElementById("invite-error");
const token = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop() || "");

function showError(message, field) {
  errorBox.textContent = message;
  errorBox.hidden = false;
  if (field) field.focus();
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const displayName = form.display_name.value.trim();
  const password = form.password.value;
  if (!displayName) return showError("Enter your name.", form.display_name);
  if (password.length < 8) return showError("The password needs at least 8 characters.", form.password);
  if (password !== form.confirm.value) return showError("The two passwords differ.", form.confirm);
  const button = form.querySelector("button[type=submit]");
  button.disabled = true;
  try {
    await api(`/api/invitations/${encodeURIComponent(token)}`, {
      method: "POST", body: { password, display_name: displayName },
    });
    location.assign("/");
  } catch (error) {
    showError(error.status === 404
      ? "This invitation is no longer valid: it was used already or has expired. Ask for a new one."
      : error.message);
    button.disabled = false;
  }
});

// The sign-in page: POST /api/login, then on to ?next= (a path on this site only).
import { api, ApiError } from "./api.js";

const form = document.getElementById("login-form");
const errorBox = document.getElementById("login-error");

function nextPath() {
  const next = new URLSearchParams(location.search).get("next") || "/";
  // Only a path of this site: never "//host" or "https://host".
  return next.startsWith("/") && !next.startsWith("//") && !next.startsWith("/\\") ? next : "/";
}

function showError(message) {
  errorBox.textContent = message;
  errorBox.hidden = false;
}

function describe(error) {
  if (error.status === 401) return "Wrong email or password.";
  if (error.status === 429) {
    const wait = error.retryAfter ? ` Try again in ${Math.ceil(error.retryAfter / 60)} min.` : "";
    return `Too many sign-in attempts.${wait}`;
  }
  return error.message;
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const email = form.email.value.trim();
  const password = form.password.value;
  if (!email || !password) {
    showError(!email ? "Enter your email address." : "Enter your password.");
    (!email ? form.email : form.password).focus();
    return;
  }
  const button = form.querySelector("button[type=submit]");
  button.disabled = true;
  try {
    await api("/api/login", { method: "POST", body: { email, password } });
    location.assign(nextPath());
  } catch (error) {
    showError(error instanceof ApiError ? describe(error) : String(error));
    form.password.select();
    button.disabled = false;
  }
});

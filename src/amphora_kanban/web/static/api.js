// The JSON API: every call goes through api(), which sends the session's CSRF token on
// state-changing requests and turns an error answer ({"error": ...}) into an ApiError.

let csrfToken = null;

export class ApiError extends Error {
  // status: the HTTP status (0 when the server could not be reached); rule: the rule a
  // 409 names; retryAfter: seconds from a 429's Retry-After header, or null.
  constructor(status, message, body = null, retryAfter = null) {
    super(message);
    this.status = status;
    this.rule = body && body.rule ? body.rule : null;
    this.retryAfter = retryAfter;
  }
}

export function setCsrfToken(token) {
  csrfToken = token;
}

export async function api(path, { method = "GET", body } = {}) {
  const headers = { Accept: "application/json" };
  const init = { method, headers, credentials: "same-origin" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  if (method !== "GET" && csrfToken) headers["X-CSRF-Token"] = csrfToken;
  let response;
  try {
    response = await fetch(path, init);
  } catch {
    throw new ApiError(0, "The server cannot be reached. Check the connection and try again.");
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    let message = data && typeof data.error === "string"
      ? data.error : `The server answered ${response.status} ${response.statusText}`.trim();
    // A refusal names its rule for programs ("... (rule: wip-limit)"); people get the words.
    if (data && data.rule) message = message.replace(/\s*\(rule: [^)]*\)$/, "");
    message = message.charAt(0).toUpperCase() + message.slice(1);
    const retry = Number.parseInt(response.headers.get("Retry-After") || "", 10);
    throw new ApiError(response.status, message, data, Number.isNaN(retry) ? null : retry);
  }
  return data;
}

export function loginUrl() {
  return `/login?next=${encodeURIComponent(location.pathname + location.search)}`;
}

// The signed-in person ({user, csrf_token} from /api/me); signed out, the page goes to
// the sign-in page and the returned promise never settles.
export async function signedIn() {
  try {
    const me = await api("/api/me");
    setCsrfToken(me.csrf_token);
    return me.user;
  } catch (error) {
    if (error.status === 401) {
      location.assign(loginUrl());
      return new Promise(() => {});
    }
    throw error;
  }
}

export async function signOut() {
  try {
    await api("/api/logout", { method: "POST" });
  } finally {
    location.assign("/login");
  }
}

export function boardApi(name) {
  return `/api/boards/${encodeURIComponent(name)}`;
}

// The board name of a page at /boards/NAME[/...].
export function boardNameFromPath() {
  const parts = location.pathname.split("/");
  return decodeURIComponent(parts[2] || "");
}

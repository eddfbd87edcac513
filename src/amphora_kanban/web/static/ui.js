// What every page shares: element building, toasts, the top bar,
// people's avatars and the formatting of times and durations.
import { signOut } from "./api.js";

// h("li", {class: "card", "data-testid": id, onclick: f}, child, ...): an element.
// Attributes that are null, undefined or false are left out; true sets an empty one;
// on* functions become listeners; children may be strings, nodes, arrays or null.
export function h(tag, attrs = {}, ...children) {
  const svg = tag.startsWith("svg:");
  const node = svg
    ? document.createElementNS("http://www.w3.org/2000/svg", tag.slice(4))
    : document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      node.addEventListener(key.slice(2), value);
    } else if (key === "value" && !svg) {
      node.value = value;
    } else {
      node.setAttribute(key, value === true ? "" : String(value));
    }
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(node, child);
    else node.append(child instanceof Node ? child : String(child));
  }
}

let toastHost = null;

// A short message at the bottom right; kind "error" and "warning" are announced at once.
export function toast(message, kind = "info") {
  if (!toastHost) {
    toastHost = h("div", { class: "toasts", "aria-live": "polite" });
    document.body.append(toastHost);
  }
  const item = h("div", {
    class: `toast ${kind}`, role: kind === "info" ? "status" : "alert",
    "data-testid": "toast", "data-kind": kind,
  }, message.charAt(0).toUpperCase() + message.slice(1));
  toastHost.append(item);
  setTimeout(() => item.remove(), kind === "info" ? 3500 : 7000);
}

// The top bar: brand, breadcrumbs ([{label, href?}]) and the person with a sign-out button.
export function renderTopbar(user, crumbs = []) {
  const bar = document.getElementById("topbar");
  const trail = [];
  crumbs.forEach((crumb, i) => {
    trail.push(h("span", { class: "sep", "aria-hidden": "true" }, "/"));
    trail.push(crumb.href
      ? h("a", { href: crumb.href }, crumb.label)
      : h("span", { class: "current", "aria-current": i === crumbs.length - 1 ? "page" : null },
          crumb.label));
  });
  bar.replaceChildren(
    h("a", { class: "brand", href: "/" }, h("span", { class: "brand-mark", "aria-hidden": "true" }),
      "Kanban"),
    h("nav", { class: "crumbs", "aria-label": "Breadcrumbs" }, trail),
    h("span", { class: "spacer" }),
    user ? h("div", { class: "user-menu" },
      avatar(user),
      h("span", { "data-testid": "signed-in-as" }, user.display_name || user.email),
      h("button", { class: "button ghost small", type: "button", onclick: () => signOut() },
        "Sign out")) : null,
  );
}

function hue(text) {
  let n = 0;
  for (const ch of text) n = (n * 31 + ch.codePointAt(0)) % 360;
  return n;
}

export function initials(name) {
  const words = String(name || "?").replace(/@.*/, "").split(/[\s._-]+/).filter(Boolean);
  return (words.length > 1 ? words[0][0] + words[1][0] : (words[0] || "?").slice(0, 2))
    .toUpperCase();
}

// A round badge with a person's initials, coloured from their id.
export function avatar(user, large = false) {
  const name = user.display_name || user.email || "?";
  return h("span", {
    class: large ? "avatar large" : "avatar", "aria-hidden": "true", title: name,
    style: `background: hsl(${hue(user.id || name)} 55% 45%)`,
  }, initials(name));
}

const dateTime = new Intl.DateTimeFormat(undefined, {
  year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit",
});

export function formatTime(value) {
  const date = value instanceof Date ? value : new Date(value);
  return Number.isNaN(date.getTime()) ? "" : dateTime.format(date);
}

// Seconds as "3.5 d", "5 h" or "12 min".
export function formatDuration(seconds) {
  if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return "–";
  if (seconds >= 86400) return `${(seconds / 86400).toFixed(seconds >= 864000 ? 0 : 1)} d`;
  if (seconds >= 3600) return `${(seconds / 3600).toFixed(1)} h`;
  return `${Math.max(1, Math.round(seconds / 60))} min`;
}

// Stored descriptions and comments are sanitised HTML; people edit and read them as text.
export function htmlToText(html) {
  if (!html) return "";
  const doc = new DOMParser().parseFromString(`<body>${html}</body>`, "text/html");
  for (const br of doc.querySelectorAll("br")) br.replaceWith("\n");
  for (const p of doc.querySelectorAll("p, div, li")) p.append("\n");
  return doc.body.textContent.replace(/\n+$/, "");
}

// Shows why a page could not load, in place of its main content.
export function showFatal(container, message) {
  container.replaceChildren(h("div", { class: "page fatal" },
    h("p", { class: "error-message", role: "alert", "data-testid": "fatal" }, message),
    h("a", { href: "/" }, "← All boards")));
}

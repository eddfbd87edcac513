// Native HTML5 drag and drop on the board, by delegation on its root element.
//
// Draggable elements carry data-drag="<card id>"; drop zones (card lists) carry
// data-drop-state and data-drop-parent ("" for the feature tier). Zones nest (a task
// column inside a feature card inside a feature column): the innermost zone that
// accepts the card is the target. The dragged id is kept here because dataTransfer
// cannot be read during dragover.
import { h } from "./ui.js";

// options: accepts(cardId, state, parent) -> bool; drop(cardId, state, parent, beforeId);
// dragging(active) is told when a card is pressed or dragged and when that ends: the
// board must not be redrawn meanwhile, or the card under the pointer is replaced and the
// browser never starts (or loses) the drag.
export function enableDragAndDrop(root, options) {
  let dragged = null;
  let pressed = false;
  let holding = false;
  const marker = h("li", { class: "drop-marker", "aria-hidden": "true" });

  function hold() {
    const now = pressed || dragged !== null;
    if (now !== holding) {
      holding = now;
      options.dragging(now);
    }
  }

  function clear() {
    marker.remove();
    for (const zone of root.querySelectorAll(".drop-target")) zone.classList.remove("drop-target");
  }

  function end() {
    clear();
    for (const card of root.querySelectorAll(".dragging")) card.classList.remove("dragging");
    dragged = null;
    hold();
  }

  function target(event) {
    let zone = event.target.closest?.("[data-drop-state]");
    while (zone && root.contains(zone)) {
      const parent = zone.dataset.dropParent || null;
      if (options.accepts(dragged, zone.dataset.dropState, parent)) return { zone, parent };
      zone = zone.parentElement.closest("[data-drop-state]");
    }
    return null;
  }

  // The card the drop goes in front of: the first whose middle is below the pointer.
  function beforeCard(zone, y) {
    for (const card of zone.querySelectorAll(":scope > [data-card]")) {
      if (card.dataset.card === dragged) continue;
      const box = card.getBoundingClientRect();
      if (y < box.top + box.height / 2) return card;
    }
    return null;
  }

  root.addEventListener("dragstart", (event) => {
    const handle = event.target.closest?.("[data-drag]");
    if (!handle) return;
    dragged = handle.dataset.drag;
    event.dataTransfer.effectAllowed = "move";
    event.dataTransfer.setData("text/plain", dragged);
    const card = handle.closest("[data-card]");
    if (card) {
      event.dataTransfer.setDragImage(card, 16, 16);
      requestAnimationFrame(() => card.classList.add("dragging"));
    }
    hold();
  });

  // A press on a card holds redraws until the button is released, after the click it
  // makes has been handled (a click opens the card's panel on the card it pressed).
  root.addEventListener("pointerdown", (event) => {
    if (event.button !== 0 || !event.target.closest?.("[data-drag]")) return;
    pressed = true;
    hold();
  });
  for (const type of ["pointerup", "pointercancel"]) {
    window.addEventListener(type, () => {
      if (!pressed) return;
      pressed = false;
      setTimeout(hold);
    });
  }

  root.addEventListener("dragover", (event) => {
    if (dragged === null) return;
    const found = target(event);
    if (!found) {
      clear();
      return;
    }
    event.preventDefault();
    event.dataTransfer.dropEffect = "move";
    const before = beforeCard(found.zone, event.clientY);
    if (marker.parentElement !== found.zone || marker.nextElementSibling !== before) {
      clear();
      found.zone.classList.add("drop-target");
      found.zone.insertBefore(marker, before);
    }
  });

  root.addEventListener("dragleave", (event) => {
    if (!event.relatedTarget || !root.contains(event.relatedTarget)) clear();
  });

  root.addEventListener("drop", (event) => {
    if (dragged === null) return;
    const found = target(event);
    if (!found) return;
    event.preventDefault();
    const before = beforeCard(found.zone, event.clientY);
    const id = dragged;
    end();
    options.drop(id, found.zone.dataset.dropState, found.parent, before ? before.dataset.card : null);
  });

  root.addEventListener("dragend", end);
}

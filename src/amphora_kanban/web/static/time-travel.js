// The history slider: from the board's creation to now, in seconds since the epoch.
// Letting go of it anywhere but at its right end shows the board as it was then; at the
// right end (or with "Back to now") the live board comes back. The page's ?at= follows.
import { formatTime } from "./ui.js";

const DAY = 86400;

// created: ISO time of the board's creation (or null); go(date or null) shows the board
// at that time (null: now).
export function timeSlider({ created, go }) {
  const slider = document.getElementById("time-slider");
  const label = document.getElementById("time-label");
  const banner = document.getElementById("time-banner");
  const bannerText = document.getElementById("time-banner-text");
  const now = () => Math.ceil(Date.now() / 1000);
  const start = created ? Math.floor(new Date(created).getTime() / 1000) : now() - 30 * DAY;

  function atEnd() {
    return Number(slider.value) >= Number(slider.max);
  }

  function showLabel() {
    label.textContent = atEnd() ? "Now" : formatTime(Number(slider.value) * 1000);
  }

  function stretch() {
    // The right end is "now": it moves on while the page stays open.
    const wasAtEnd = atEnd();
    slider.min = String(Math.min(start, now() - 60));
    slider.max = String(now());
    if (wasAtEnd) slider.value = slider.max;
  }

  slider.addEventListener("pointerdown", stretch);
  slider.addEventListener("focus", stretch);
  slider.addEventListener("input", showLabel);
  slider.addEventListener("change", () => {
    showLabel();
    go(atEnd() ? null : new Date(Number(slider.value) * 1000));
  });
  document.getElementById("back-to-now").addEventListener("click", () => go(null));

  return {
    // Reflects the page's mode: `at` an ISO time (a past board, read-only) or null (now).
    show(at) {
      stretch();
      if (at) {
        slider.value = String(Math.floor(new Date(at).getTime() / 1000));
        bannerText.textContent = `As of ${formatTime(at)}: a read-only view of the board's past.`;
      } else {
        slider.value = slider.max;
      }
      banner.hidden = !at;
      document.body.classList.toggle("readonly", Boolean(at));
      showLabel();
      const url = new URL(location.href);
      if (at) url.searchParams.set("at", at);
      else url.searchParams.delete("at");
      history.replaceState(null, "", url);
    },
  };
}

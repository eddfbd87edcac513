// Two SVG charts for the metrics page, drawn from plain numbers: a stacked area chart
// (the cumulative flow diagram) and a bar chart (throughput). Colours come from the
// stylesheet's --series-N properties, so both themes apply.
import { h } from "./ui.js";

const WIDTH = 880;
const HEIGHT = 260;
const PAD = { left: 40, right: 28, top: 12, bottom: 26 };
const SERIES = 12;

export function seriesColour(index) {
  return `var(--series-${index % SERIES})`;
}

// A round step for about five grid lines up to `max`.
function step(max) {
  const raw = Math.max(max, 1) / 5;
  const power = 10 ** Math.floor(Math.log10(raw));
  const unit = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw);
  return Math.max(1, unit);
}

// The axes and grid around `plot(x, y, inner)`; `bands`: each day is a band with its
// point in the middle (bars), else the days run from edge to edge (areas).
function frame(label, testid, days, max, plot, bands = false) {
  const inner = { w: WIDTH - PAD.left - PAD.right, h: HEIGHT - PAD.top - PAD.bottom };
  const x = bands || days.length < 2
    ? (i) => PAD.left + ((i + 0.5) / Math.max(days.length, 1)) * inner.w
    : (i) => PAD.left + (i / (days.length - 1)) * inner.w;
  const top = Math.max(1, Math.ceil(max / step(max)) * step(max));
  const y = (v) => PAD.top + inner.h - (v / top) * inner.h;
  const grid = [];
  for (let v = 0; v <= top; v += step(max)) {
    grid.push(h("svg:line", { class: v ? "grid" : "axis", x1: PAD.left, x2: WIDTH - PAD.right, y1: y(v), y2: y(v) }),
      h("svg:text", { x: PAD.left - 8, y: y(v) + 4, "text-anchor": "end" }, String(v)));
  }
  const every = Math.max(1, Math.ceil(days.length / 8));
  const ticks = days.map((day, i) => {
    const last = i === days.length - 1;
    const shown = last || (i % every === 0 && days.length - 1 - i >= every / 2);
    return shown ? h("svg:text", { x: x(i), y: HEIGHT - 8, "text-anchor": "middle" }, shortDay(day)) : null;
  });
  return h("svg:svg", {
    class: "chart", viewBox: `0 0 ${WIDTH} ${HEIGHT}`, role: "img", "aria-label": label,
    "data-testid": testid, preserveAspectRatio: "xMidYMid meet",
  }, h("svg:title", {}, label), grid, plot(x, y, inner), ticks);
}

function shortDay(day) {
  const date = new Date(`${day}T00:00:00Z`);
  return date.toLocaleDateString(undefined, { month: "short", day: "numeric", timeZone: "UTC" });
}

// series: [{label, values: [number per day]}], first on top: each band is drawn above
// the sum of the series after it (so the last series, e.g. "Done", lies at the bottom).
export function stackedArea(label, testid, days, series) {
  const totals = days.map((_, i) => series.reduce((sum, s) => sum + s.values[i], 0));
  return frame(label, testid, days, Math.max(0, ...totals), (x, y) => {
    const below = days.map(() => 0);
    const bands = [];
    for (let k = series.length - 1; k >= 0; k -= 1) {
      const lower = below.slice();
      const upper = below.map((v, i) => v + series[k].values[i]);
      upper.forEach((v, i) => { below[i] = v; });
      if (!series[k].values.some(Boolean)) continue;
      const points = [
        ...upper.map((v, i) => `${x(i)},${y(v)}`),
        ...lower.map((v, i) => `${x(i)},${y(v)}`).reverse(),
      ].join(" ");
      bands.push(h("svg:polygon", {
        points, style: `fill: ${seriesColour(series[k].colour ?? k)}; fill-opacity: .82; stroke: ${seriesColour(series[k].colour ?? k)}; stroke-width: 1`,
        "data-series": series[k].label,
      }, h("svg:title", {}, series[k].label)));
    }
    return bands;
  });
}

export function bars(label, testid, days, values) {
  return frame(label, testid, days, Math.max(0, ...values), (x, y, inner) => {
    const width = Math.max(2, Math.min(28, (inner.w / Math.max(days.length, 1)) * 0.7));
    return values.map((v, i) => (v ? h("svg:rect", {
      class: "bar", x: x(i) - width / 2, y: y(v), width, height: y(0) - y(v), rx: 2,
    }, h("svg:title", {}, `${days[i]}: ${v}`)) : null));
  }, true);
}

export function legend(series) {
  return h("ul", { class: "legend" }, series.map((s, k) => h("li", {},
    h("span", { class: "swatch", style: `background: ${seriesColour(s.colour ?? k)}` }), s.label)));
}

// The days from `first` to `last` (YYYY-MM-DD), inclusive.
export function dayRange(first, last) {
  const days = [];
  const end = new Date(`${last}T00:00:00Z`).getTime();
  for (let t = new Date(`${first}T00:00:00Z`).getTime(); t <= end; t += 86400000) {
    days.push(new Date(t).toISOString().slice(0, 10));
  }
  return days;
}

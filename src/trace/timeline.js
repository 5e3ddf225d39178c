// ntd's timeline: draws the layout the driver computed (TIMELINE, below) as an SVG as wide as
// the window. Wheel or +/- zoom around the pointer, drag pans, 0 or "fit" shows everything.
"use strict";
(function () {
  const D = TIMELINE;
  const LEFT = 150, RIGHT = 12, AXIS = 22, ROW = 16, GAP = 10;
  const el = document.getElementById("timeline");
  let view = [0, Math.max(D.end, 1)];
  const NS = "http://www.w3.org/2000/svg";

  function node(tag, attrs, parent, text) {
    const n = document.createElementNS(NS, tag);
    for (const k in attrs) n.setAttribute(k, attrs[k]);
    if (text !== undefined) n.textContent = text;
    if (parent) parent.appendChild(n);
    return n;
  }

  function niceStep(span) {
    const raw = span / 10;
    const p = Math.pow(10, Math.floor(Math.log10(raw)));
    for (const m of [1, 2, 5, 10]) if (m * p >= raw) return m * p;
    return 10 * p;
  }

  function fmt(us, step) {
    const s = us / 1e6;
    const digits = step >= 1e6 ? 0 : step >= 1e5 ? 1 : step >= 1e4 ? 2 : 3;
    return s.toFixed(digits) + " s";
  }

  function render() {
    const width = Math.max(el.clientWidth, LEFT + RIGHT + 100);
    const w = width - LEFT - RIGHT;
    const span = view[1] - view[0];
    const x = (t) => LEFT + ((t - view[0]) / span) * w;
    let height = AXIS;
    for (const t of D.tracks) height += Math.max(t.rows.length, 1) * ROW + GAP;
    el.textContent = "";
    const svg = node("svg", { width: width, height: height + 4, class: "tl" }, el);
    const clip = node("clipPath", { id: "plot" }, node("defs", {}, svg));
    node("rect", { x: LEFT, y: 0, width: w, height: height + 4 }, clip);
    const bands = node("g", {}, svg);
    // Time axis.
    const step = niceStep(span);
    for (let t = Math.ceil(view[0] / step) * step; t <= view[1]; t += step) {
      node("line", { x1: x(t), y1: AXIS - 6, x2: x(t), y2: height, class: "grid" }, svg);
      node("text", { x: x(t) + 2, y: 12, class: "tick" }, svg, fmt(t, step));
    }
    const plot = node("g", { "clip-path": "url(#plot)" }, svg);
    let y = AXIS;
    for (const t of D.tracks) {
      const rows = Math.max(t.rows.length, 1);
      node("rect", { x: 0, y: y - 2, width: width, height: rows * ROW + 4, class: "band" }, bands);
      node("text", { x: 4, y: y + 12, class: "track" }, svg, t.name);
      t.rows.forEach((r, i) => {
        const ry = y + i * ROW;
        if (i === 0 || r.kind !== t.rows[i - 1].kind)
          node("text", { x: LEFT - 6, y: ry + 11, class: "rowkind" }, svg, r.kind);
        for (const [s, e, label, cls, title] of r.items) {
          if (e < view[0] || s > view[1]) continue;
          const x0 = x(s), x1 = Math.max(x(e), x0 + 1);
          const g = node("g", {}, plot);
          node("title", {}, node("rect", { x: x0, y: ry + 1, width: x1 - x0, height: ROW - 3, class: "it " + cls }, g), title);
          const vis0 = Math.max(x0, LEFT), room = Math.min(x1, LEFT + w) - vis0 - 4;
          if (room > 24) {
            const chars = Math.floor(room / 6.1);
            const text = label.length > chars ? label.slice(0, Math.max(chars - 1, 1)) + "\u2026" : label;
            node("text", { x: vis0 + 2, y: ry + 11, class: "label" }, g, text);
          }
        }
      });
      for (const [ts, name] of t.marks) {
        if (ts < view[0] || ts > view[1]) continue;
        const g = node("g", {}, plot);
        node("title", {}, node("line", { x1: x(ts), y1: y - 1, x2: x(ts), y2: y + ROW - 1, class: "mark" + (name.startsWith("!!!") ? " err" : "") }, g), name + " at " + (ts / 1e6).toFixed(3) + " s");
      }
      y += rows * ROW + GAP;
    }
    document.body.dataset.rendered = "1";
    document.body.dataset.fits = document.documentElement.scrollWidth <= window.innerWidth ? "yes" : "no";
  }

  function zoom(factor, at) {
    const span = view[1] - view[0];
    const next = Math.min(Math.max(span * factor, 1000), D.end * 1.02 + 1000);
    const c = at === undefined ? view[0] + span / 2 : at;
    let a = c - ((c - view[0]) / span) * next;
    a = Math.min(Math.max(a, 0), Math.max(D.end - next, 0));
    view = [a, a + next];
    render();
  }

  function timeAt(clientX) {
    const r = el.getBoundingClientRect();
    const w = r.width - LEFT - RIGHT;
    return view[0] + ((clientX - r.left - LEFT) / w) * (view[1] - view[0]);
  }

  el.addEventListener("wheel", (ev) => {
    ev.preventDefault();
    zoom(ev.deltaY > 0 ? 1.25 : 0.8, timeAt(ev.clientX));
  }, { passive: false });
  let drag = null;
  el.addEventListener("mousedown", (ev) => { drag = { x: ev.clientX, view: view.slice() }; });
  window.addEventListener("mouseup", () => { drag = null; });
  window.addEventListener("mousemove", (ev) => {
    if (!drag) return;
    const w = el.clientWidth - LEFT - RIGHT;
    const dt = ((ev.clientX - drag.x) / w) * (drag.view[1] - drag.view[0]);
    const span = drag.view[1] - drag.view[0];
    const a = Math.min(Math.max(drag.view[0] - dt, 0), Math.max(D.end - span, 0));
    view = [a, a + span];
    render();
  });
  window.addEventListener("keydown", (ev) => {
    if (ev.key === "+" || ev.key === "=") zoom(0.8);
    else if (ev.key === "-") zoom(1.25);
    else if (ev.key === "0") { view = [0, Math.max(D.end, 1)]; render(); }
  });
  document.getElementById("zin").onclick = () => zoom(0.5);
  document.getElementById("zout").onclick = () => zoom(2);
  document.getElementById("zfit").onclick = () => { view = [0, Math.max(D.end, 1)]; render(); };
  window.addEventListener("resize", render);
  render();
})();

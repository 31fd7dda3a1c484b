// Shared by the dashboard's scripts: the page state and small helpers that build DOM nodes from data.
// Every string from the swarm goes into the page as a text node, never as HTML.
"use strict";
window.swarm = (() => {
  const GREY = "rgba(110,110,110,0.7)", GREEN = "#2e9b4f", RED = "#d9534f";
  const COLOURS = ["#1f77b4", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f",
    "#2ca02c", "#d62728"];
  const S = { run: "", rows: new Map(), overview: null, notes: [], agents: null, compare: null, progress: {},
    error: null, skew: 0, connected: false, appeared: 0 };

  // ------------------------------------------------------------------------------------------------
  // small helpers

  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v == null || v === false) continue;
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = v;
      else if (k === "style") Object.assign(e.style, v);
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else if (k.startsWith("data_")) e.dataset[k.slice(5)] = v;
      else e.setAttribute(k, v);
    }
    for (const kid of kids.flat()) if (kid != null && kid !== false) e.append(kid instanceof Node ? kid : String(kid));
    return e;
  }
  const $ = (id) => document.getElementById(id);
  const bpb = (v) => (v == null ? "—" : Number(v).toFixed(4));
  const now = () => Date.now() / 1000 - S.skew;
  function dur(s) {
    if (s == null || !isFinite(s)) return "—";
    s = Math.max(0, Math.round(s));
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
    return h ? `${h}h ${String(m).padStart(2, "0")}m` : m ? `${m}m ${String(sec).padStart(2, "0")}s` : `${sec}s`;
  }
  const clock = (ts) => (ts ? new Date(ts * 1000).toLocaleTimeString([], { hour12: false }) : "—");
  const short = (t, n) => { t = (t || "").split(/\s+/).join(" "); return t.length <= n ? t : t.slice(0, n - 1) + "…"; };
  const hlink = (hid, text) => el("a", { href: "/h/" + encodeURIComponent(hid), data_hid: hid }, text || hid);
  const failed = (r) => r.status != null && !(r.status === "ok" && r.val_bpb != null);
  const isBaseline = (r) => r.agent === "baseline" || (r.tags || []).includes("baseline");
  function statusCell(r) {
    if (r.status == null) return el("span", { class: "st-pending" }, "pending");
    return el("span", { class: r.status === "ok" ? "st-ok" : "st-bad" }, r.status);
  }
  function table(headers, rows, opts) {
    const head = el("tr", {}, headers.map((h) => el("th", { class: h.num ? "num" : null, title: h.title || null }, h.label || h)));
    const body = rows.map((cells) => el("tr", {}, cells.map((c, i) =>
      el("td", { class: headers[i].num ? "num" : null }, c instanceof Node ? c : String(c ?? "—")))));
    const t = el("table", opts || {}, el("thead", {}, head), el("tbody", {}, body));
    return t;
  }
  function section(id, title, ...kids) {
    return el("section", { id }, el("h2", {}, title), el("div", { id: id + "-body" }, ...kids));
  }
  function fill(id, ...kids) {
    const box = $(id);
    if (box) box.replaceChildren(...kids.flat().filter((k) => k != null));
  }
  function baselineMean(cls) {
    const s = (S.overview?.stats || []).find((x) => x.hw_class === cls);
    return s ? s.baseline_mean : null;
  }
  function banner() {
    const b = $("banner");
    const msg = S.error || S.pageError;
    if (S.connected) setConn(S.error ? "down" : "live", S.error ? "live · no ledger" : "live");
    b.hidden = !msg;
    b.textContent = msg || "";
  }
  function setConn(kind, text) {
    const c = $("conn");
    c.className = "conn " + kind;
    c.textContent = text;
  }


  return { GREY, GREEN, RED, COLOURS, S, el, $, bpb, now, dur, clock, short, hlink, failed, isBaseline, statusCell,
    table, section, fill, baselineMean, banner, setConn };
})();

// The swarm dashboard page. Data arrives as server-sent events from /api/events (a whole "state", then
// changes); every string from the swarm (descriptions, notes, diffs, logs: much of it written by models) is
// put in the page as text nodes, never as HTML.
"use strict";
(() => {
  const { GREY, GREEN, RED, COLOURS, S, el, $, bpb, now, dur, clock, short, hlink, failed, isBaseline, statusCell,
    table, section, fill, baselineMean, banner, setConn } = window.swarm;
  const charts = new Map(); // key -> {u, meta, box}

  // ------------------------------------------------------------------------------------------------
  // live data

  let pending = new Set(), timer = null;
  function mark(...parts) {
    for (const p of parts) pending.add(p);
    if (!timer) timer = setTimeout(flush, 150);
  }
  function flush() {
    timer = null;
    const parts = pending;
    pending = new Set();
    try {
      view.render(parts);
      S.pageError = null;
    } catch (e) {
      S.pageError = "The page hit an error while drawing (" + e + "). The data is safe; reload the page. " +
        "If it persists, report it with this message.";
      console.error(e);
    }
    banner();
  }

  function apply(msg) {
    switch (msg.kind) {
      case "state":
        S.run = msg.run;
        S.rows = new Map(msg.timeline.map((r) => [r.hypothesis_id, r]));
        S.overview = msg.overview; S.notes = msg.notes || []; S.agents = msg.agents; S.compare = msg.compare;
        S.progress = msg.progress || {}; S.error = msg.error; S.skew = Date.now() / 1000 - msg.server_time;
        $("run").textContent = "run " + S.run;
        document.title = `swarm · ${S.run}`;
        mark("all");
        break;
      case "timeline":
        for (const r of msg.items) {
          const old = S.rows.get(r.hypothesis_id);
          if (r.status != null && (!old || old.status == null)) S.appeared += 1;
          S.rows.set(r.hypothesis_id, r);
        }
        mark("timeline");
        view.onRows?.(msg.items);
        break;
      case "overview": S.overview = msg.overview; mark("overview"); break;
      case "notes": S.notes = S.notes.concat(msg.items); mark("notes"); break;
      case "agents": S.agents = msg.items; mark("agents"); break;
      case "compare": S.compare = msg.compare; mark("compare"); break;
      case "progress": S.progress = msg.items; mark("progress"); break;
      case "status": S.error = msg.error; banner(); break;
    }
    banner();
  }

  function connect() {
    const es = new EventSource("/api/events");
    es.onopen = () => { S.connected = true; setConn("live", "live"); banner(); };
    es.onmessage = (e) => apply(JSON.parse(e.data));
    es.onerror = () => {
      S.connected = false;
      setConn(es.readyState === EventSource.CLOSED ? "down" : "wait",
        es.readyState === EventSource.CLOSED ? "disconnected: reload the page" : "reconnecting to the dashboard server…");
    };
  }

  // ------------------------------------------------------------------------------------------------
  // charts (uPlot)

  function chartWidth(box) { return Math.max(320, box.clientWidth || 800); }

  function upsertChart(key, box, makeOpts, data, meta) {
    let c = charts.get(key);
    if (c && c.box !== box) { c.u.destroy(); charts.delete(key); c = null; }
    if (c && c.nseries !== data.length) { c.u.destroy(); charts.delete(key); c = null; }
    if (!c) {
      box.replaceChildren();
      const u = new uPlot(makeOpts(chartWidth(box), meta), data, box);
      c = { u, meta, box, nseries: data.length };
      charts.set(key, c);
      u.over.addEventListener("click", () => {
        const id = c.meta.idAt && c.meta.idAt(u);
        if (id) location.href = "/h/" + encodeURIComponent(id);
      });
      u.over.addEventListener("mouseleave", () => { $("tip").hidden = true; });
    } else {
      c.meta = meta;
      c.u.setData(data, true);
    }
    return c;
  }

  window.addEventListener("resize", () => {
    for (const c of charts.values()) c.u.setSize({ width: chartWidth(c.box), height: c.u.height });
  });

  function showTip(u, lines) {
    const tip = $("tip");
    if (!lines) { tip.hidden = true; return; }
    tip.textContent = lines.join("\n");
    const r = u.over.getBoundingClientRect();
    tip.style.left = Math.min(window.innerWidth - 430, r.left + u.cursor.left + 14) + "px";
    tip.style.top = (r.top + u.cursor.top + 14) + "px";
    tip.hidden = false;
  }

  // as many decimals as a tick increment has (0.25 -> 2), at most 6
  const decimalsOf = (incr) => Math.min(6, (String(Number((incr || 1).toPrecision(6))).split(".")[1] || "").length);

  // a y range around the data with a margin (uPlot's default for one value is [0, 2v]: unreadable)
  function padRange(u, min, max) {
    if (min == null || max == null) return [0, 1];
    const pad = max > min ? 0.08 * (max - min) : 0.01 * Math.abs(max) + 1e-3;
    return [min - pad, max + pad];
  }

  // The seed's figure: every finished experiment of a class a grey dot (x: finish order), failures red x
  // marks along the top, the running best a green step line, each kept new best labelled with its change.
  function progressData(cls) {
    const done = [...S.rows.values()].filter((r) => r.ran_on === cls && r.status != null)
      .sort((a, b) => a.finished_seq - b.finished_seq);
    const xs = [], ok = [], best = [], base = [];
    let b = null;
    const bests = [];
    const vals = done.filter((r) => !failed(r)).map((r) => r.val_bpb);
    const bm = baselineMean(cls);
    done.forEach((r, i) => {
      xs.push(i);
      const good = !failed(r);
      ok.push(good ? r.val_bpb : null);
      if (good && (b == null || r.val_bpb < b)) { b = r.val_bpb; bests.push(i); }
      best.push(b);
      base.push(bm);
    });
    let lo = Math.min(...vals), hi = Math.max(...vals);
    if (!vals.length) { lo = 0; hi = 1; }
    if (bm != null) { lo = Math.min(lo, bm); hi = Math.max(hi, bm); }
    const span = (hi - lo) || Math.max(Math.abs(hi) * 0.01, 1e-3);
    const meta = { done, bests: new Set(bests), ylo: lo - 0.12 * span, yhi: hi + 0.22 * span, cls };
    meta.idAt = (u) => (u.cursor.idx != null ? done[u.cursor.idx]?.hypothesis_id : null);
    return { data: [xs, ok, best, base], meta, nFailed: done.filter(failed).length, best: b, done };
  }

  function drawProgress(u) {
    const c = [...charts.values()].find((x) => x.u === u);
    if (!c) return;
    const { done, bests, ylo, yhi } = c.meta;
    const ctx = u.ctx, px = uPlot.pxRatio;
    ctx.save();
    ctx.beginPath();
    ctx.rect(u.bbox.left, u.bbox.top, u.bbox.width, u.bbox.height);
    ctx.clip();
    // failures: red x along the top edge
    const yTop = u.valToPos(yhi - 0.05 * (yhi - ylo), "y", true), s = 3.5 * px;
    ctx.strokeStyle = RED; ctx.lineWidth = 1.6 * px;
    ctx.setLineDash([]); // uPlot leaves the last series' dash (the baseline's) set
    done.forEach((r, i) => {
      if (!failed(r)) return;
      const x = u.valToPos(i, "x", true);
      for (const d of [-1, 1]) {
        ctx.beginPath(); ctx.moveTo(x - s, yTop - d * s); ctx.lineTo(x + s, yTop + d * s); ctx.stroke();
      }
    });
    // new bests: green dots; kept ones labelled (skipping a label that would sit on the previous one)
    ctx.fillStyle = GREEN;
    ctx.font = `${11 * px}px system-ui, "DejaVu Sans", sans-serif`;
    ctx.textAlign = "left"; ctx.textBaseline = "alphabetic"; // uPlot leaves them set for its axes
    for (const i of bests) {
      const r = done[i];
      const x = u.valToPos(i, "x", true), y = u.valToPos(r.val_bpb, "y", true);
      ctx.beginPath(); ctx.arc(x, y, 3.6 * px, 0, 2 * Math.PI); ctx.fill();
    }
    // kept new bests get a label, up and to the right (to the left in the last quarter, so it stays on the
    // chart); the latest ones first, and a label that would overlap one already drawn is left out (hover
    // shows every point's change)
    const drawn = [], ANGLE = Math.PI / 9, cos = Math.cos(ANGLE), sin = Math.sin(ANGLE), th = 12 * px;
    for (const i of [...bests].reverse()) {
      const r = done[i];
      if (r.decision !== "keep") continue;
      const x = u.valToPos(i, "x", true), y = u.valToPos(r.val_bpb, "y", true);
      const text = short(r.description, 40), w = ctx.measureText(text).width;
      const left = x > u.bbox.left + 0.75 * u.bbox.width;
      const x0 = x + (left ? -4 : 4) * px, y0 = y - 6 * px;
      const box = left ? [x0 - w * cos - th * sin, y0 - w * sin - th, x0 + th * sin, y0]
        : [x0, y0 - w * sin - th * cos, x0 + w * cos + th * sin, y0];
      if (drawn.some((b) => box[0] < b[2] && b[0] < box[2] && box[1] < b[3] && b[1] < box[3])) continue;
      drawn.push(box);
      ctx.save();
      ctx.translate(x0, y0);
      ctx.rotate(left ? ANGLE : -ANGLE);
      ctx.textAlign = left ? "right" : "left";
      ctx.lineWidth = 3 * px; ctx.strokeStyle = "rgba(255,255,255,0.9)"; ctx.lineJoin = "round";
      ctx.strokeText(text, 0, 0); // a halo keeps the label readable over the dots
      ctx.fillStyle = "#1b5e20";
      ctx.fillText(text, 0, 0);
      ctx.restore();
    }
    ctx.restore();
  }

  function progressOpts(width, meta) {
    return {
      width, height: 340, legend: { show: false },
      scales: { x: { time: false }, y: { range: () => [charts.get("progress:" + meta.cls)?.meta.ylo ?? meta.ylo,
        charts.get("progress:" + meta.cls)?.meta.yhi ?? meta.yhi] } },
      axes: [{ label: "experiment # (finish order on this class)", incrs: [1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 5000, 10000] },
        { label: "val_bpb (lower is better)", size: 64, values: (u, vals) => vals.map((v) => v.toFixed(3)) }],
      series: [
        {},
        { label: "experiment", stroke: GREY, paths: () => null,
          points: { show: true, size: 6, width: 0, fill: GREY, stroke: GREY } },
        { label: "best so far", stroke: GREEN, width: 2, paths: uPlot.paths.stepped({ align: 1 }), points: { show: false } },
        { label: "baseline mean", stroke: "#555", dash: [6, 4], width: 1, points: { show: false } },
      ],
      cursor: { drag: { x: true, y: false }, points: { size: 7 } },
      hooks: {
        draw: [drawProgress],
        setCursor: [(u) => {
          const c = [...charts.values()].find((x) => x.u === u);
          const r = c && u.cursor.idx != null ? c.meta.done[u.cursor.idx] : null;
          showTip(u, r && [`${r.hypothesis_id} · ${r.agent}`, failed(r) ? `${r.status}: ${r.reason || "no reason given"}` :
            `val_bpb ${bpb(r.val_bpb)}${r.decision ? " · " + r.decision : ""}`, short(r.description, 200), "click: open"]);
        }],
      },
    };
  }

  // Best val_bpb so far per agent on one class, against wall-clock time or the agent's GPU-hours (the sum of
  // total_seconds of every finish of its hypotheses on that class, failed ones included).
  function agentCurves(cls, mode) {
    const rows = [...S.rows.values()].filter((r) => r.ran_on === cls && r.status != null && !isBaseline(r))
      .sort((a, b) => a.finished_seq - b.finished_seq);
    const agents = [...new Set(rows.map((r) => r.agent))].sort();
    const curves = agents.map((a) => {
      let gpu = 0, best = null;
      const pts = [];
      for (const r of rows.filter((x) => x.agent === a)) {
        gpu += r.gpu_seconds || r.total_seconds || 0;
        if (failed(r)) continue;
        if (best == null || r.val_bpb < best) best = r.val_bpb;
        pts.push([mode === "gpu" ? gpu / 3600 : r.finished_ts, best, r.hypothesis_id]);
      }
      return { agent: a, pts };
    }).filter((c) => c.pts.length);
    const xs = [...new Set(curves.flatMap((c) => c.pts.map((p) => p[0])))].sort((a, b) => a - b);
    const series = curves.map((c) => {
      let j = -1;
      const last = c.pts[c.pts.length - 1][0];
      return xs.map((x) => {
        while (j + 1 < c.pts.length && c.pts[j + 1][0] <= x) j += 1;
        if (j < 0) return null;
        return mode === "gpu" && x > last ? null : c.pts[j][1]; // a GPU curve ends at the agent's last hour
      });
    });
    // the wall-clock curves hold their best until the run's latest event (x must stay sorted)
    const end = S.overview?.last_ts;
    if (mode === "wall" && xs.length && end && end > xs[xs.length - 1]) {
      xs.push(end);
      series.forEach((s) => s.push(s[s.length - 1]));
    }
    return { curves, data: [xs, ...series] };
  }

  function agentOpts(mode, curves) {
    return (width) => ({
      width, height: 260, legend: { show: true, live: true },
      scales: { x: { time: mode === "wall" }, y: { range: padRange } },
      axes: [mode === "wall" ? { label: "wall-clock time" } : { label: "GPU-hours used by the agent",
          values: (u, vals, ax, space, incr) => vals.map((v) => v.toFixed(decimalsOf(incr))) },
        { label: "best val_bpb", size: 64, values: (u, vals) => vals.map((v) => v.toFixed(3)) }],
      series: [{ label: mode === "wall" ? "time" : "GPU-h", value: (u, v) => (v == null ? "—" : mode === "wall" ? clock(v) : v.toFixed(3)) },
        ...curves.map((c, i) => ({ label: c.agent, stroke: COLOURS[i % COLOURS.length], width: 2,
          paths: uPlot.paths.stepped({ align: 1 }), spanGaps: false, points: { show: false },
          value: (u, v) => bpb(v) }))],
      cursor: { drag: { x: true, y: false } },
    });
  }

  // ------------------------------------------------------------------------------------------------
  // the dashboard page

  const SECTIONS = [["summary", "Run", ""], ["progress", "Progress per hardware class", "progress"],
    ["agentcharts", "Best so far per agent", "per agent"], ["runners", "Runners", "runners"], ["queue", "Queue", "queue"],
    ["leaderboard", "Leaderboard", "leaderboard"], ["recent", "Recent results", "recent"], ["agents", "Agents", "agents"],
    ["compare", "Head to head", "head to head"], ["notebook", "Notebook", "notebook"]];

  const dashboard = {
    init() {
      fill("nav", SECTIONS.slice(1).map(([id, , nav]) => el("a", { href: "#" + id }, nav)));
      fill("main", SECTIONS.map(([id, t]) => section(id, t, el("p", { class: "empty" }, "waiting for data…"))));
      setInterval(() => mark("progress", "summary"), 5000); // ages, elapsed times and stale progress
    },
    render(parts) {
      const all = parts.has("all"), tl = all || parts.has("timeline"), ov = all || parts.has("overview");
      if (tl || ov || parts.has("summary")) this.summary();
      if (tl || ov) { this.progressCharts(); this.agentCharts(); this.recent(); this.leaderboard(); }
      if (ov || tl || parts.has("progress")) this.runners();
      if (ov || tl) this.queue();
      if (all || parts.has("agents")) this.agents();
      if (all || parts.has("compare")) this.compare();
      if (all || parts.has("notes") || ov) this.notebook();
      document.body.dataset.results = [...S.rows.values()].filter((r) => r.status != null).length;
    },
    summary() {
      const o = S.overview, c = o?.counts || {};
      const rows = [...S.rows.values()];
      const gpu = rows.reduce((s, r) => s + (r.gpu_seconds || 0), 0);
      const online = (o?.runners || []).filter((r) => r.online).length;
      const cards = [["proposed", c.proposed], ["finished", c.finished], ["ok", c.ok], ["failed", c.failed],
        ["kept", c.kept], ["queued", c.queued], ["runners online", online],
        ["wall time", o?.first_ts ? dur(o.last_ts - o.first_ts) : "—"], ["GPU-hours", (gpu / 3600).toFixed(2)]];
      const best = (o?.stats || []).map((s) => {
        const cand = rows.filter((r) => r.ran_on === s.hw_class && !failed(r) && r.status != null);
        const b = cand.reduce((m, r) => (m == null || r.val_bpb < m.val_bpb ? r : m), null);
        return b && el("div", { class: "muted" }, `${s.hw_class}: best `, el("b", {}, bpb(b.val_bpb)),
          s.baseline_mean != null ? ` (${(b.val_bpb - s.baseline_mean >= 0 ? "+" : "")}${(b.val_bpb - s.baseline_mean).toFixed(4)} vs baseline mean ${bpb(s.baseline_mean)} ± ${bpb(s.sigma)}) ` : " ",
          "by ", b.agent, ": ", hlink(b.hypothesis_id, short(b.description, 80)));
      });
      fill("summary-body", el("div", { class: "cards" }, cards.map(([k, v]) => el("div", { class: "card" }, el("b", {}, v ?? "—"), el("span", {}, k)))),
        ...best, o?.program_md ? el("details", {}, el("summary", {}, "research direction (program.md)"), el("pre", {}, o.program_md)) : null);
    },
    progressCharts() {
      const body = $("progress-body");
      const classes = [...new Set([...S.rows.values()].filter((r) => r.status != null && r.ran_on).map((r) => r.ran_on))].sort();
      if (!classes.length) { fill("progress-body", el("p", { class: "empty" }, "No finished experiments yet.")); return; }
      if (!body.querySelector(".legend")) {
        body.replaceChildren(el("div", { class: "legend" },
          el("span", {}, el("i", { style: { background: GREY } }), "experiment (x: finish order on the class)"),
          el("span", {}, el("i", { style: { background: GREEN } }), "new best; the step line is the best so far, labelled when kept"),
          el("span", { style: { color: RED } }, "× failed (crash, timeout, oom, nan, …), along the top"),
          el("span", {}, "- - baseline mean"), el("span", {}, "hover: details · click: open · drag: zoom, double-click: reset")));
      }
      for (const cls of classes) {
        let wrap = body.querySelector(`[data-cls="${CSS.escape(cls)}"]`);
        if (!wrap) {
          wrap = el("div", { data_cls: cls }, el("div", { class: "chart-title" }), el("div", { class: "chart", data_chart: "progress" }));
          body.append(wrap);
        }
        const p = progressData(cls);
        const bm = baselineMean(cls);
        wrap.querySelector(".chart-title").replaceChildren(el("b", {}, cls), `: ${p.done.length} experiments, ${p.nFailed} failed, best ${bpb(p.best)}`,
          bm != null ? ` · baseline mean ${bpb(bm)}` : "");
        const c = upsertChart("progress:" + cls, wrap.querySelector(".chart"), progressOpts, p.data, p.meta);
        c.u.redraw(false, false);
      }
    },
    agentCharts() {
      const classes = [...new Set([...S.rows.values()].filter((r) => r.status != null && r.ran_on && !isBaseline(r)).map((r) => r.ran_on))].sort();
      const body = $("agentcharts-body");
      if (!classes.length) { fill("agentcharts-body", el("p", { class: "empty" }, "No finished agent experiments yet.")); return; }
      if (!body.querySelector("[data-cls]")) body.replaceChildren();
      for (const cls of classes) {
        let wrap = body.querySelector(`[data-cls="${CSS.escape(cls)}"]`);
        if (!wrap) {
          wrap = el("div", { data_cls: cls }, el("div", { class: "chart-title" }, el("b", {}, cls)),
            el("div", { class: "pair" }, el("div", { class: "chart", data_mode: "wall" }), el("div", { class: "chart", data_mode: "gpu" })));
          body.append(wrap);
        }
        for (const mode of ["wall", "gpu"]) {
          const { curves, data } = agentCurves(cls, mode);
          const box = wrap.querySelector(`[data-mode="${mode}"]`);
          if (!curves.length) { box.replaceChildren(el("p", { class: "empty" }, "no successful experiments yet")); charts.get(`agents:${cls}:${mode}`)?.u.destroy(); charts.delete(`agents:${cls}:${mode}`); continue; }
          const key = `agents:${cls}:${mode}`;
          const names = curves.map((c) => c.agent).join(",");
          const old = charts.get(key);
          if (old && old.names !== names) { old.u.destroy(); charts.delete(key); }
          const c = upsertChart(key, box, agentOpts(mode, curves), data, { idAt: () => null });
          c.names = names;
        }
      }
    },
    runners() {
      const rs = S.overview?.runners || [];
      if (!rs.length) { fill("runners-body", el("p", { class: "empty" }, "No runner has joined yet.")); return; }
      const t = now();
      const rows = rs.map((r) => {
        let p = S.progress[r.runner];
        if (p && S.rows.get(p.hypothesis_id)?.status != null) p = null; // its result is in: not running any more
        const hid = (p && p.hypothesis_id) || r.current_hypothesis;
        const h = hid ? S.rows.get(hid) : null;
        const end = r.online ? t : (r.last_finish_ts || t);
        const duty = r.joined_ts ? r.training_seconds / Math.max(1, end - r.joined_ts) : null;
        const what = hid ? el("span", {}, hlink(hid, short(h?.description || hid, 60)), h ? el("span", { class: "muted" }, " · " + h.agent) : null) : el("span", { class: "muted" }, r.online ? "idle" : "");
        const prog = p ? el("span", {}, el("span", { class: "bar" }, el("i", { style: { width: Math.round(100 * Math.min(1, p.progress || 0)) + "%" } })),
          ` ${p.phase} ${Math.round(100 * (p.progress || 0))}%`) : (hid && r.current_since ? el("span", { class: "muted" }, "claimed " + dur(t - r.current_since) + " ago") : "");
        return [el("span", {}, r.runner, r.online ? "" : el("span", { class: "badge" }, "left" + (r.left_reason ? ": " + r.left_reason : ""))),
          r.hw_class + (r.gpu_name ? " · " + r.gpu_name : ""), what, prog, p ? String(p.step) : "—",
          p && p.loss != null ? p.loss.toFixed(3) : "—", p ? dur(p.elapsed) : "—", String(r.results), dur(r.training_seconds),
          // simulated runners report simulated training seconds in compressed wall time: no duty cycle then
          duty == null || duty > 1.05 ? "—" : Math.round(100 * duty) + "%"];
      });
      fill("runners-body", table(["runner", "class", "running now", "progress", { label: "step", num: 1 }, { label: "loss", num: 1 },
        { label: "elapsed", num: 1 }, { label: "results", num: 1 }, { label: "training", num: 1 },
        { label: "duty cycle", num: 1, title: "training seconds / wall time since it joined (until it left)" }], rows));
    },
    queue() {
      const q = S.overview?.queue || [], n = S.overview?.counts?.queued || 0;
      if (!q.length) { fill("queue-body", el("p", { class: "empty" }, "The queue is empty.")); return; }
      const t = now();
      fill("queue-body", el("p", { class: "muted" }, `${n} hypotheses without a result${n > q.length ? `, the oldest ${q.length} shown` : ""}.`),
        el("div", { class: "scroll" }, table(["hypothesis", "agent", "class", "tier", { label: "waiting", num: 1 }, "claimed by", "description"],
          q.map((r) => [hlink(r.hypothesis_id), r.agent, r.hw_class, r.tier, dur(t - r.proposed_ts),
            r.runner ? `${r.runner} (attempt ${r.attempts})` : "—", short(r.description, 90)]))));
    },
    leaderboard() {
      const b = (S.overview?.leaderboard || []).filter((r) => r.agent !== "baseline");
      if (!b.length) { fill("leaderboard-body", el("p", { class: "empty" }, "Nothing finished yet.")); return; }
      fill("leaderboard-body", table(["class", { label: "rank", num: 1 }, "agent", { label: "best val_bpb", num: 1 },
        { label: "vs baseline", num: 1 }, "best hypothesis", { label: "experiments", num: 1 }, { label: "ok", num: 1 },
        { label: "kept", num: 1 }, { label: "failed", num: 1 }], b.map((r) => {
        const bm = baselineMean(r.hw_class);
        return [r.hw_class, r.rank, r.agent, bpb(r.best_val_bpb), bm != null && r.best_val_bpb != null ? (r.best_val_bpb - bm).toFixed(4) : "—",
          r.best_hypothesis ? hlink(r.best_hypothesis, short(S.rows.get(r.best_hypothesis)?.description || r.best_hypothesis, 50)) : "—",
          r.experiments, r.ok, r.keeps, r.crashes];
      })));
    },
    recent() {
      const done = [...S.rows.values()].filter((r) => r.status != null).sort((a, b) => b.finished_seq - a.finished_seq).slice(0, 30);
      if (!done.length) { fill("recent-body", el("p", { class: "empty" }, "No results yet.")); return; }
      fill("recent-body", el("div", { class: "scroll" }, table(["finished", "hypothesis", "agent", "status", { label: "val_bpb", num: 1 },
        { label: "vs baseline", num: 1 }, "decision", "on", "change / why it failed"], done.map((r) => {
        const bm = baselineMean(r.ran_on);
        return [clock(r.finished_ts), hlink(r.hypothesis_id), r.agent, statusCell(r), bpb(r.val_bpb),
          bm != null && r.val_bpb != null ? (r.val_bpb - bm >= 0 ? "+" : "") + (r.val_bpb - bm).toFixed(4) : "—",
          r.decision ? el("span", { class: r.decision === "keep" ? "keep" : "" }, r.decision) : "—", `${r.ran_on || "—"} · ${r.runner || ""}`,
          failed(r) ? el("span", {}, short(r.description, 60), el("br"), el("span", { class: "st-bad" }, short(r.reason || r.status, 140))) : short(r.description, 100)];
      }), { id: "recent-table" })));
    },
    agents() {
      if (S.agents == null) {
        fill("agents-body", el("p", { class: "empty" }, S.overview ? "This ledger does not answer the agents request (an older version)." : "waiting for the ledger…"));
        return;
      }
      if (!S.agents.length) { fill("agents-body", el("p", { class: "empty" }, "No agent has joined yet.")); return; }
      fill("agents-body", table(["agent", "provider · model", "state", { label: "proposed", num: 1 }, { label: "rejected", num: 1 },
        { label: "LLM calls", num: 1 }, { label: "LLM errors", num: 1 }, { label: "cost", num: 1 }, "latest problems"], S.agents.map((a) => [
        a.agent, [a.provider, a.model].filter(Boolean).join(" · ") || "—", a.state + (a.reason ? `: ${a.reason}` : ""), a.proposed,
        a.rejected, a.llm_calls, a.llm_errors, "$" + Number(a.cost_usd || 0).toFixed(4),
        (a.problems || []).length ? el("div", {}, a.problems.slice(0, 3).map((p) => el("div", { class: "muted" }, `${clock(p.ts)} ${p.kind}: ${short(p.text, 140)}`))) : "—"])));
    },
    compare() {
      const c = S.compare;
      if (!c || !(c.groups || []).length) { fill("compare-body", el("p", { class: "empty" }, "No agent results to compare yet.")); return; }
      const headers = [c.by, { label: "experiments", num: 1 }, { label: "crash rate", num: 1 }, { label: "GPU-s (share)", num: 1 },
        { label: "LLM $", num: 1 }, { label: "$ / improvement", num: 1 }];
      for (const cls of c.classes) headers.push(`best val_bpb (${cls})`, { label: `Δ/GPU-h (${cls})`, num: 1 });
      const rows = c.groups.map((g) => {
        const cells = [g.name, g.experiments, g.crash_rate == null ? "—" : `${Math.round(100 * g.crash_rate)}% (${g.crashes}/${g.finished})`,
          `${Math.round(g.gpu_seconds).toLocaleString()} (${g.gpu_share == null ? "—" : Math.round(100 * g.gpu_share) + "%"})`,
          Number(g.cost_usd).toFixed(2), g.usd_per_improvement == null ? "—" : `${g.usd_per_improvement.toFixed(3)} (${g.improvements})`];
        for (const cls of c.classes) {
          const x = g.classes[cls];
          if (!x || x.best == null) { cells.push("—", "—"); continue; }
          cells.push(x.ci_low == null ? `${bpb(x.best)} (n=1)` : `${bpb(x.best)} (mean ${bpb(x.mean)}, 95% CI ${bpb(x.ci_low)}–${bpb(x.ci_high)}, n=${x.n} ${x.ci_source})`,
            x.improvement_per_gpu_hour == null ? "—" : x.improvement_per_gpu_hour.toFixed(4));
        }
        return cells;
      });
      fill("compare-body", el("p", { class: "muted" }, "As `swarm compare` computes it: best with a 95% t-interval over repeats, improvement over the baseline mean per GPU-hour, API dollars per kept improvement, and the GPU-seconds each got."),
        table(headers, rows));
    },
    notebook() {
      if (!S.notes.length) { fill("notebook-body", el("p", { class: "empty" }, "No notes yet.")); return; }
      fill("notebook-body", el("div", { class: "scroll" }, [...S.notes].reverse().slice(0, 100).map((n) => el("div", { class: "note" },
        el("h4", {}, n.title), el("div", { class: "muted" }, `${n.agent} · ${clock(n.ts)}`, (n.refs || []).length ? " · refs: " : "",
          (n.refs || []).flatMap((r, i) => [i ? ", " : "", hlink(r)])), el("div", { class: "body" }, n.body)))));
    },
  };

  const m = location.pathname.match(/^\/h\/(.+)$/);
  const view = m ? window.swarm.hypothesisView(decodeURIComponent(m[1])) : dashboard;
  view.init();
  connect();
})();

// The page of one hypothesis (/h/<id>): description, rationale, the diff against its parent, attempts,
// decisions, why it failed, and its log.
"use strict";
(() => {
  const { S, el, $, bpb, dur, clock, short, hlink, table, statusCell, fill, baselineMean } = window.swarm;

  // ------------------------------------------------------------------------------------------------
  // the hypothesis page

  // the last line of a log tail that names an error (a traceback's last line, FAIL:, out of memory)
  function errorLine(finish) {
    const lines = (finish?.log_tail || "").split("\n").map((l) => l.trim()).filter(Boolean);
    for (let i = lines.length - 1; i >= 0; i--) {
      if (/(Error|Exception|FAIL|out of memory|Killed)\b/.test(lines[i])) return short(lines[i], 300);
    }
    return "";
  }

  function hypothesisView(hid) {
    let last = null, logKey = null, logText = "", logSource = "";
    const load = async () => {
      const res = await fetch("/api/hypothesis/" + encodeURIComponent(hid));
      const body = await res.json();
      if (!res.ok) { fill("main", el("section", {}, el("h2", {}, hid), el("p", { class: "reason" }, body.error || res.statusText))); return; }
      last = body;
      const result = draw();
      if (result) loadLog(logKey ?? result.attempt); // (again: a running attempt's log grows, then finishes)
    };
    const showLog = () => {
      const pre = $("log"), src = $("log-source");
      if (!pre || (!logText && !logSource)) return;
      pre.textContent = logText;
      src.textContent = logSource;
      pre.scrollTop = pre.scrollHeight;
    };
    const loadLog = async (attempt) => {
      logKey = attempt;
      if ($("log")) $("log").textContent = "loading…";
      const res = await fetch(`/api/log/${encodeURIComponent(hid)}/${attempt}`);
      logText = await res.text();
      logSource = res.ok ? `attempt ${attempt} · from ${res.headers.get("X-Log-Source") || "?"}` : "";
      showLog();
    };
    const draw = () => {
      const { item: it, attempts, decisions } = last;
      const finishes = attempts.filter((a) => a.kind === "finish");
      const result = finishes.find((a) => a.disposition === "result") || finishes[finishes.length - 1];
      const bm = it.ran_on ? baselineMean(it.ran_on) : null;
      const bad = it.status != null && it.status !== "ok";
      fill("nav", el("a", { href: "/" }, "← dashboard"), it.parent && it.parent !== "baseline" ? el("a", { href: "/h/" + encodeURIComponent(it.parent) }, "parent") : null);
      const diffLines = (last.diff || "(no diff: identical to its parent, or none recorded)").split("\n").map((l) =>
        el("span", { class: l.startsWith("+++") || l.startsWith("---") ? "file" : l.startsWith("+") ? "add" : l.startsWith("-") ? "del" : l.startsWith("@@") ? "hunk" : null }, l + "\n"));
      fill("main",
        el("section", { id: "hyp" }, el("h2", {}, it.hypothesis_id,
          el("span", { class: "badge " + (it.status == null ? "" : bad ? "bad" : "ok"), id: "hyp-status" }, it.status || "pending"),
          it.decision ? el("span", { class: "badge " + (it.decision === "keep" ? "keep" : "") }, it.decision) : null),
        el("div", { class: "desc", id: "hyp-desc" }, it.description || "(no description)"),
        bad ? el("div", { class: "reason", id: "hyp-reason" }, el("b", {}, `${it.status}: `), it.reason || "the runner gave no reason",
          errorLine(result) ? el("div", {}, el("code", {}, errorLine(result))) : null,
          el("div", { class: "muted" }, "The log below shows the output; the attempts table shows every claim and finish.")) : null,
        el("dl", { class: "kv" },
          el("dt", {}, "agent"), el("dd", {}, it.agent + (it.model ? ` (${it.model})` : "")),
          el("dt", {}, "parent"), el("dd", {}, it.parent && it.parent !== "baseline" ? hlink(it.parent) : "baseline"),
          el("dt", {}, "val_bpb"), el("dd", {}, bpb(it.val_bpb), bm != null && it.val_bpb != null ? ` (${(it.val_bpb - bm >= 0 ? "+" : "")}${(it.val_bpb - bm).toFixed(4)} vs the ${it.ran_on} baseline mean ${bpb(bm)})` : ""),
          el("dt", {}, "class"), el("dd", {}, `${it.hw_class || "any"} requested · ran on ${it.ran_on || "—"}${it.runner ? " · " + it.runner : ""}`),
          el("dt", {}, "tier"), el("dd", {}, it.tier + ((it.tags || []).length ? " · tags: " + it.tags.join(", ") : "")),
          el("dt", {}, "time"), el("dd", {}, `proposed ${clock(it.proposed_ts)}${it.finished_ts ? " · finished " + clock(it.finished_ts) : ""} · training ${dur(it.training_seconds)} · total ${dur(it.total_seconds)}`),
          el("dt", {}, "attempts"), el("dd", {}, String(it.attempts)),
          last.children.length ? el("dt", {}, "built on by") : null, last.children.length ? el("dd", {}, last.children.slice(0, 30).flatMap((c, i) => [i ? ", " : "", hlink(c)]),
            last.children.length > 30 ? ` and ${last.children.length - 30} more` : "") : null)),
        el("section", {}, el("h2", {}, "Rationale"), last.rationale ? el("pre", {}, last.rationale) : el("p", { class: "empty" }, "none given")),
        el("section", {}, el("h2", {}, `Diff against ${last.diff_base === "as proposed" ? "its parent (as proposed; the parent's train.py is not in the ledger)" : last.diff_base}`),
          el("pre", { class: "diff", id: "hyp-diff" }, diffLines)),
        el("section", {}, el("h2", {}, "Attempts"), attempts.length ? table(["", "attempt", "runner", "time", "status", "disposition", "val_bpb", "reason", "log"],
          attempts.map((a) => [a.kind, a.attempt, a.runner, clock(a.ts), a.kind === "finish" ? statusCell(a) : "—", a.disposition || "—", bpb(a.val_bpb),
            a.reason || "—", a.kind === "finish" ? el("button", { class: "link", onclick: () => loadLog(a.attempt) }, "show log") : ""])) : el("p", { class: "empty" }, "not claimed yet")),
        decisions.length ? el("section", {}, el("h2", {}, "Decisions"), table(["time", "decision", "by", "reason", { label: "val_bpb", num: 1 }, { label: "reference", num: 1 }, { label: "σ", num: 1 }],
          decisions.map((d) => [clock(d.ts), d.decision, d.by, d.reason || "—", bpb(d.val_bpb), bpb(d.reference_val_bpb), bpb(d.sigma)]))) : null,
        el("section", {}, el("h2", {}, "Log"), el("div", { class: "muted", id: "log-source" }), el("pre", { class: "log", id: "log" }, result ? "" : "no log yet: it has not finished")),
        el("section", {}, el("details", {}, el("summary", {}, "train.py"), el("pre", {}, last.train_py || "(not recorded)"))));
      showLog();
      return result;
    };
    return {
      init() { fill("main", el("p", { class: "empty" }, "loading " + hid + "…")); load(); },
      render(parts) { if (last && (parts.has("all") || parts.has("overview"))) draw(); },
      onRows(items) { if (items.some((r) => r.hypothesis_id === hid)) load(); },
    };
  }


  window.swarm.hypothesisView = hypothesisView;
})();

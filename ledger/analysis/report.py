"""The report (`swarm report`): one self-contained HTML page about a run, from the ledger.

The page opens offline: CSS is inline and every plot is an inline SVG drawn by matplotlib (a bare
``Figure``, which renders with the Agg/SVG canvases and never touches pyplot's global state). Everything
that comes from the ledger (descriptions, rationales, diffs, notes, agent names: much of it written by LLMs)
is HTML-escaped; plot labels are drawn as glyph paths with mathtext off.
"""

from __future__ import annotations

import html
import io
import re
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import duckdb
import matplotlib
from matplotlib.figure import Figure

GREY, GREEN, RED = "#9e9e9e", "#2e9b4f", "#d9534f"
AGENT_COLOURS = ["#1f77b4", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"]
BASELINE_AGENT = "baseline"


# --------------------------------------------------------------------------------------------------
# helpers


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _rows(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
    cur = con.execute(sql, params or [])
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def _f(v: float | None, spec: str = ".4f") -> str:
    return "—" if v is None else format(v, spec)


def _dur(seconds: float) -> str:
    seconds = max(0.0, seconds)
    h, rem = divmod(round(seconds), 3600)
    m, s = divmod(rem, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else f"{m}m {s:02d}s"


def _short(text: str | None, n: int = 36) -> str:
    t = " ".join((text or "").split())
    return t if len(t) <= n else t[: n - 1] + "…"


def _svg(fig: Figure) -> str:
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": "swarm-report", "svg.fonttype": "path"}):
        fig.savefig(buf, format="svg", metadata={"Date": None}, bbox_inches="tight")
    svg = buf.getvalue()
    svg = svg[svg.index("<svg") :]
    svg = re.sub(r"<metadata>.*?</metadata>", "", svg, flags=re.S)
    svg = re.sub(r"<!--.*?-->", "", svg, flags=re.S)
    svg = re.sub(r'\s+xmlns(:\w+)?="[^"]*"', "", svg)  # inline SVG in HTML needs no namespaces
    return f'<div class="fig">{svg}</div>'


def _table(
    headers: Iterable[str], rows: Iterable[Iterable[str]], *, raw_cols: frozenset[int] = frozenset()
) -> str:
    """An HTML table; cells are escaped unless their column index is in ``raw_cols`` (pre-built HTML)."""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{c if i in raw_cols else _e(c)}</td>" for i, c in enumerate(r)) + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_markdown(text: str) -> str:
    """Minimal, safe markdown: the text is escaped first, then headings, bullets, code spans, bold and
    fenced code blocks are recognised. No links, no images, no raw HTML."""
    out: list[str] = []
    in_list = in_code = False
    para: list[str] = []

    def inline(s: str) -> str:
        s = _e(s)
        s = re.sub(r"`([^`]+)`", r"<code>\1</code>", s)
        return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", s)

    def flush() -> None:
        nonlocal in_list
        if para:
            out.append("<p>" + " ".join(inline(x) for x in para) + "</p>")
            para.clear()
        if in_list:
            out.append("</ul>")
            in_list = False

    for line in (text or "").splitlines():
        if line.strip().startswith("```"):
            flush()
            out.append("</pre>" if in_code else "<pre>")
            in_code = not in_code
            continue
        if in_code:
            out.append(_e(line) + "\n")
            continue
        m = re.match(r"^(#{1,6})\s+(.*)$", line)
        if m:
            flush()
            out.append(f"<h5>{inline(m.group(2))}</h5>")
        elif re.match(r"^\s*[-*]\s+", line):
            if para:
                out.append("<p>" + " ".join(inline(x) for x in para) + "</p>")
                para.clear()
            if not in_list:
                out.append("<ul>")
                in_list = True
            item = re.sub(r"^\s*[-*]\s+", "", line)
            out.append(f"<li>{inline(item)}</li>")
        elif not line.strip():
            flush()
        else:
            para.append(line)
    flush()
    if in_code:
        out.append("</pre>")
    return "".join(out)


# --------------------------------------------------------------------------------------------------
# data


def latest_run(con: duckdb.DuckDBPyConnection) -> str | None:
    row = con.execute("SELECT run FROM events GROUP BY run ORDER BY max(seq) DESC LIMIT 1").fetchone()
    return None if row is None else str(row[0])


def _load(con: duckdb.DuckDBPyConnection, run: str) -> dict[str, Any]:
    d: dict[str, Any] = {}
    d["span"] = con.execute("SELECT min(ts), max(ts), count(*) FROM events WHERE run = $1", [run]).fetchone()
    d["exps"] = _rows(con, """
        SELECT e.*, h.diff, h.rationale FROM experiments e
        LEFT JOIN (SELECT hypothesis_id, diff, rationale FROM hypotheses WHERE run = $1
                   QUALIFY row_number() OVER (PARTITION BY hypothesis_id ORDER BY seq) = 1) h USING (hypothesis_id)
        WHERE e.run = $1 ORDER BY e.proposed_seq""", [run])  # fmt: skip
    d["results"] = _rows(con, """
        SELECT r.hypothesis_id, r.runner, r.status, r.training_seconds, r.total_seconds, r.ts, r.seq,
            r.disposition, h.agent
        FROM results r LEFT JOIN (SELECT hypothesis_id, any_value(agent) AS agent FROM hypotheses
                                  WHERE run = $1 GROUP BY hypothesis_id) h USING (hypothesis_id)
        WHERE r.run = $1 AND r.disposition <> 'unclaimed' ORDER BY r.seq""", [run])  # fmt: skip
    d["runners"] = _rows(con, "SELECT * FROM runners WHERE run = $1 ORDER BY seq", [run])
    d["claims"] = _rows(
        con, "SELECT runner, min(ts) AS first FROM claims WHERE run = $1 GROUP BY runner", [run]
    )
    d["stats"] = _rows(con, "SELECT * FROM class_stats WHERE run = $1 ORDER BY hw_class", [run])
    d["board"] = _rows(con, "SELECT * FROM leaderboard WHERE run = $1 ORDER BY hw_class, rank, agent", [run])
    d["notes"] = _rows(con, "SELECT * FROM notes WHERE run = $1 ORDER BY seq", [run])
    d["usage"] = _rows(con, """
        SELECT coalesce(agent, '?') AS agent, coalesce(model, '') AS model, count(*) AS calls,
            count(*) FILTER (WHERE NOT ok) AS failed, sum(input_tokens) AS input_tokens,
            sum(output_tokens) AS output_tokens, sum(cost_usd) AS cost_usd
        FROM llm_usage WHERE run = $1 GROUP BY ALL ORDER BY cost_usd DESC, agent""", [run])  # fmt: skip
    d["agents"] = _rows(con, """
        SELECT agent, any_value(provider) AS provider, any_value(model) AS model FROM agents
        WHERE run = $1 AND action = 'joined' GROUP BY agent ORDER BY agent""", [run])  # fmt: skip
    return d


# --------------------------------------------------------------------------------------------------
# figures


def _progress_figure(cls: str, exps: list[dict[str, Any]], base_mean: float | None) -> str:
    """The seed's figure for one hardware class: every finished experiment a grey dot in finish order,
    failed ones as red x marks along the top, the running best a green step line, kept new bests labelled."""
    done = sorted(
        (e for e in exps if e["ran_on"] == cls and e["status"] is not None), key=lambda e: e["finished_seq"]
    )
    fig = Figure(figsize=(11, 4.2))
    ax = fig.add_subplot()
    ok = [(i, e) for i, e in enumerate(done) if e["status"] == "ok" and e["val_bpb"] is not None]
    bad = [i for i, e in enumerate(done) if not (e["status"] == "ok" and e["val_bpb"] is not None)]
    vals = [e["val_bpb"] for _, e in ok]
    if vals:
        lo, hi = min(vals), max(vals)
        if base_mean is not None:
            hi = max(hi, base_mean)
        span = (hi - lo) or max(abs(hi) * 0.01, 1e-3)
        ylo, yhi = lo - 0.12 * span, hi + 0.18 * span
    else:
        ylo, yhi = 0.0, 1.0
        ax.text(0.5, 0.5, "no successful experiments on this class", ha="center", va="center",
                transform=ax.transAxes, color=RED, parse_math=False)  # fmt: skip
    ax.scatter([i for i, _ in ok], vals, s=14, color=GREY, alpha=0.8, label="experiment", zorder=2)
    if bad:
        ax.scatter(bad, [yhi - 0.04 * (yhi - ylo)] * len(bad), marker="x", s=22, color=RED, zorder=3,
                   label="failed (crash/timeout/oom/…), drawn at the top")  # fmt: skip
    best_x: list[float] = []
    best_y: list[float] = []
    best = float("inf")
    for i, e in ok:
        if e["val_bpb"] < best:
            best = e["val_bpb"]
            best_x.append(i)
            best_y.append(best)
            if e["decision"] == "keep":
                ax.annotate(_short(e["description"]), (i, best), xytext=(4, 6), textcoords="offset points",
                            fontsize=7, rotation=25, color="#1b5e20", parse_math=False)  # fmt: skip
    if best_x:
        xs = [*best_x, max(len(done) - 1, best_x[-1])]
        ys = [*best_y, best_y[-1]]
        ax.step(xs, ys, where="post", color=GREEN, linewidth=2, zorder=4, label="best so far")
        ax.scatter(best_x, best_y, s=30, color=GREEN, zorder=5, label="new best")
    if base_mean is not None:
        ax.axhline(
            base_mean, color="#555", linestyle="--", linewidth=1, label=f"baseline mean {base_mean:.4f}"
        )
    ax.set_ylim(ylo, yhi)
    ax.set_xlabel("experiment # (finish order on this class)")
    ax.set_ylabel("val_bpb (lower is better)")
    ax.set_title(f"{cls}: {len(done)} experiments, {len(bad)} failed", loc="left", fontsize=10)
    ax.grid(alpha=0.25)
    ax.legend(fontsize=7, loc="lower left", framealpha=0.9)
    return _svg(fig)


def _best_so_far_figure(classes: list[str], exps: list[dict[str, Any]], results: list[dict[str, Any]],
                        agents: list[str], t0: float, mode: str) -> str:  # fmt: skip
    """Best val_bpb so far per agent, one panel per class; x = wall hours since the run began, or the
    agent's cumulative GPU-hours (sum of total_seconds of its results on that class)."""
    fig = Figure(figsize=(11, 3.4 * max(1, len(classes))))
    by_id = {e["hypothesis_id"]: e for e in exps}
    for k, cls in enumerate(classes):
        ax = fig.add_subplot(len(classes), 1, k + 1)
        drawn = False
        for j, agent in enumerate(agents):
            gpu = 0.0
            best = float("inf")
            xs: list[float] = []
            ys: list[float] = []
            for r in results:
                e = by_id.get(r["hypothesis_id"])
                if e is None or e["agent"] != agent or e["ran_on"] != cls:
                    continue
                gpu += float(r["total_seconds"] or 0.0)
                if r["disposition"] != "result" or r["status"] != "ok" or e["val_bpb"] is None:
                    continue
                best = min(best, e["val_bpb"])
                xs.append(gpu / 3600 if mode == "gpu" else (r["ts"] - t0) / 3600)
                ys.append(best)
            if xs:
                ax.step(xs, ys, where="post", color=AGENT_COLOURS[j % len(AGENT_COLOURS)], linewidth=1.8,
                        marker="o", markersize=3, label=agent)  # fmt: skip
                drawn = True
        ax.set_title(cls, loc="left", fontsize=10)
        ax.set_ylabel("best val_bpb")
        ax.grid(alpha=0.25)
        if drawn:
            ax.legend(fontsize=7, loc="upper right")
        ax.set_xlabel(
            "GPU-hours used by the agent" if mode == "gpu" else "wall time since the run began (hours)"
        )
    fig.tight_layout()
    return _svg(fig)


def _rates_figure(rates: list[tuple[str, int, int, int]]) -> str:
    fig = Figure(figsize=(11, 0.6 * len(rates) + 1.2))
    ax = fig.add_subplot()
    names = [r[0] for r in rates]
    totals = [max(1, r[1] + r[2] + r[3]) for r in rates]
    left = [0.0] * len(rates)
    for idx, (label, colour) in enumerate([("keep", GREEN), ("discard", GREY), ("crash/failed", RED)]):
        part = [float(r[idx + 1]) / t for r, t in zip(rates, totals, strict=True)]
        ax.barh(names, part, left=left, color=colour, label=label)
        left = [a + b for a, b in zip(left, part, strict=True)]
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of finished experiments")
    ax.invert_yaxis()
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=3, frameon=False)
    fig.tight_layout()
    return _svg(fig)


def _duty_figure(duty: list[tuple[str, float | None]]) -> str:
    fig = Figure(figsize=(11, 0.55 * len(duty) + 1.2))
    ax = fig.add_subplot()
    ax.barh([d[0] for d in duty], [d[1] or 0.0 for d in duty], color="#1f77b4")
    ax.set_xlim(0, 1)
    ax.set_xlabel("duty cycle = training seconds / wall time between join and last finish")
    ax.invert_yaxis()
    fig.tight_layout()
    return _svg(fig)


# --------------------------------------------------------------------------------------------------
# the page

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1200px;padding:16px 24px;color:#222}
h1{margin-bottom:4px}h2{border-bottom:2px solid #eee;padding-bottom:4px;margin-top:32px}
.sub{color:#666;margin-top:0}.cards{display:flex;flex-wrap:wrap;gap:10px;margin:12px 0}
.card{background:#f5f7f9;border-radius:6px;padding:8px 14px;min-width:110px}
.card b{display:block;font-size:1.35em}.card span{color:#666;font-size:.85em}
table{border-collapse:collapse;margin:8px 0 16px;font-size:.9em}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}th{background:#f0f2f4}
td.num{text-align:right}pre{background:#f7f7f7;padding:8px;overflow-x:auto;font-size:.85em;white-space:pre-wrap}
details summary{cursor:pointer;color:#1f5fa8}.fig svg{max-width:100%;height:auto}
.note{border-left:4px solid #cfe3d4;padding:4px 12px;margin:10px 0;background:#fbfdfb}
.note h4{margin:4px 0}.muted{color:#777;font-size:.85em}.empty{color:#999;font-style:italic}
"""


def write_report(con: duckdb.DuckDBPyConnection, out: Path, *, run: str | None = None) -> Path:
    """Write the HTML report of ``run`` (default: the run with the latest event) to ``out``; returns it.

    ``out`` may be a directory (the page is written as ``<run>.html`` inside it) or a file path."""
    out = Path(out)
    run = run or latest_run(con)
    if out.is_dir():
        out = out / f"{run or 'empty'}.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    page = render_report(con, run)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    return out


def render_report(con: duckdb.DuckDBPyConnection, run: str | None) -> str:
    """The report page as a string."""
    if run is None:
        body = "<h1>Research swarm report</h1><p class='empty'>The ledger holds no events yet: no run to report.</p>"
        return _page("empty ledger", body)
    d = _load(con, run)
    t0, t1, n_events = d["span"]
    if not n_events:
        return _page(run, f"<h1>Run {_e(run)}</h1><p class='empty'>No events for this run in the ledger.</p>")
    exps: list[dict[str, Any]] = d["exps"]
    results: list[dict[str, Any]] = d["results"]
    finished = [e for e in exps if e["status"] is not None]
    ok = [e for e in finished if e["status"] == "ok"]
    keeps = [e for e in exps if e["decision"] == "keep"]
    gpu_s = sum(float(r["total_seconds"] or 0.0) for r in results)
    cost = sum(float(u["cost_usd"] or 0.0) for u in d["usage"])
    stats = {s["hw_class"]: s for s in d["stats"]}
    classes = sorted(
        {e["ran_on"] for e in finished if e["ran_on"]} | {s for s in stats if stats[s]["baseline_runs"]}
    )
    competitors = sorted({e["agent"] for e in exps if e["agent"] != BASELINE_AGENT})
    runner_names = sorted({r["runner"] for r in d["runners"]} | {r["runner"] for r in results})

    parts: list[str] = []
    parts.append(f"<h1>Run {_e(run)}</h1>")
    parts.append(f"<p class='sub'>{_e(time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(t0)))} → "
                 f"{_e(time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(t1)))} · {n_events} events</p>")  # fmt: skip
    cards = [
        ("hypotheses", len(exps)), ("finished", len(finished)), ("ok", len(ok)),
        ("failed", len(finished) - len(ok)), ("kept", len(keeps)), ("agents", len(competitors)),
        ("runners", len(runner_names)), ("notes", len(d["notes"])), ("wall time", _dur(t1 - t0)),
        ("GPU-hours", f"{gpu_s / 3600:.2f}"), ("LLM cost", f"${cost:.2f}"),
    ]  # fmt: skip
    parts.append("<div class='cards'>" + "".join(f"<div class='card'><b>{_e(v)}</b><span>{_e(k)}</span></div>"
                                                 for k, v in cards) + "</div>")  # fmt: skip
    best_rows = []
    for cls in classes:
        cand = [e for e in ok if e["ran_on"] == cls and e["val_bpb"] is not None]
        if cand:
            b = min(cand, key=lambda e: e["val_bpb"])
            bm = stats.get(cls, {}).get("baseline_mean")
            delta = "—" if bm is None else f"{b['val_bpb'] - bm:+.4f} ({(b['val_bpb'] - bm) / bm:+.2%})"
            best_rows.append(
                [cls, f"{b['val_bpb']:.4f}", delta, b["agent"], b["description"], b["hypothesis_id"]]
            )
    if best_rows:
        parts.append(_table(["class", "best val_bpb", "vs baseline mean", "agent", "description", "hypothesis"],
                            best_rows))  # fmt: skip

    parts.append("<h2 id='progress'>Progress per hardware class</h2>")
    parts.append("<p class='muted'>Every finished experiment is a grey dot (x = finish order on the class); failed "
                 "ones (crash, timeout, oom, nan, rejected, lost) are red x marks along the top edge; each new best "
                 "is a green step, labelled with its description when it was kept. Dashed: baseline mean.</p>")  # fmt: skip
    if not classes:
        parts.append("<p class='empty'>No finished experiments yet.</p>")
    for cls in classes:
        parts.append(_progress_figure(cls, exps, stats.get(cls, {}).get("baseline_mean")))

    parts.append("<h2 id='agents'>Best so far per agent</h2>")
    if competitors and classes and ok:
        parts.append("<h3>against wall time</h3>")
        parts.append(_best_so_far_figure(classes, exps, results, competitors, t0, "wall"))
        parts.append("<h3>against GPU-hours</h3><p class='muted'>GPU-hours of an agent: the sum of total_seconds "
                     "of the results of its hypotheses on that class.</p>")  # fmt: skip
        parts.append(_best_so_far_figure(classes, exps, results, competitors, t0, "gpu"))
    else:
        parts.append("<p class='empty'>No successful agent experiments yet.</p>")

    parts.append("<h2 id='rates'>Keep / discard / crash rates per agent</h2>")
    rates: list[tuple[str, int, int, int]] = []
    for agent in competitors:
        mine = [e for e in finished if e["agent"] == agent]
        k = sum(1 for e in mine if e["status"] == "ok" and e["decision"] == "keep")
        c = sum(1 for e in mine if e["status"] != "ok")
        rates.append((agent, k, len(mine) - k - c, c))
    rates = [r for r in rates if sum(r[1:])]
    if rates:
        parts.append(_rates_figure(rates))
        parts.append(
            _table(
                ["agent", "finished", "keep", "discard", "crash/failed", "crash rate"],
                [
                    [a, str(k + di + c), str(k), str(di), str(c), f"{c / (k + di + c):.0%}"]
                    for a, k, di, c in rates
                ],
            )
        )
    else:
        parts.append("<p class='empty'>No finished agent experiments yet.</p>")

    parts.append("<h2 id='runners'>Runner duty cycle</h2>")
    parts.append(_runners_section(d, results, runner_names))

    parts.append("<h2 id='baselines'>Baselines per class</h2>")
    if d["stats"]:
        parts.append(_table(["class", "baseline runs", "mean val_bpb ± σ", "runners online"], [
            [s["hw_class"], str(s["baseline_runs"]),
             "—" if s["baseline_mean"] is None else f"{s['baseline_mean']:.4f} ± {_f(s['sigma'])}",
             str(s["runners_online"])] for s in d["stats"]]))  # fmt: skip
    else:
        parts.append("<p class='empty'>No baseline runs yet.</p>")

    parts.append("<h2 id='leaderboard'>Leaderboard</h2>")
    parts.append(_leaderboard_section(d, stats))

    parts.append("<h2 id='llm'>LLM cost per agent</h2>")
    if d["usage"]:
        kept_by = {a: sum(1 for e in keeps if e["agent"] == a) for a in competitors}
        parts.append(_table(["agent", "model", "calls", "failed", "input tokens", "output tokens", "cost", "$ / keep"], [
            [u["agent"], u["model"], str(u["calls"]), str(u["failed"]), f"{u['input_tokens'] or 0:,}",
             f"{u['output_tokens'] or 0:,}", f"${u['cost_usd'] or 0:.4f}",
             f"${(u['cost_usd'] or 0) / kept_by[u['agent']]:.4f}" if kept_by.get(u["agent"]) else "—"]
            for u in d["usage"]]))  # fmt: skip
    else:
        parts.append("<p class='empty'>No LLM calls recorded (optuna/random agents only).</p>")

    parts.append("<h2 id='notebook'>Notebook</h2>")
    if d["notes"]:
        for n in d["notes"]:
            when = time.strftime("%H:%M:%S", time.gmtime(n["ts"]))
            refs = ", ".join(n["refs"] or [])
            parts.append(f"<div class='note'><h4>{_e(n['title'])}</h4><div class='muted'>{_e(n['agent'])} · "
                         f"{_e(when)} UTC{' · refs: ' + _e(refs) if refs else ''}</div>"
                         f"{render_markdown(n['body'] or '')}</div>")  # fmt: skip
    else:
        parts.append("<p class='empty'>No notes yet.</p>")
    return _page(run, "\n".join(parts))


def _runners_section(d: dict[str, Any], results: list[dict[str, Any]], names: list[str]) -> str:
    joined: dict[str, float] = {}
    hw: dict[str, str] = {}
    for r in d["runners"]:
        if r["action"] == "joined":
            joined.setdefault(r["runner"], r["ts"])
            hw.setdefault(r["runner"], r["hw_class"] or "")
    first_claim = {c["runner"]: c["first"] for c in d["claims"]}
    rows: list[list[str]] = []
    duty: list[tuple[str, float | None]] = []
    for name in names:
        mine = [r for r in results if r["runner"] == name]
        start = joined.get(name, first_claim.get(name))
        train = sum(float(r["training_seconds"] or 0.0) for r in mine)
        busy = sum(float(r["total_seconds"] or 0.0) for r in mine)
        end = max((r["ts"] for r in mine), default=None)
        wall = (end - start) if start is not None and end is not None else None
        cycle = train / wall if wall else None
        duty.append((name, cycle))
        rows.append([name, hw.get(name, ""), str(len(mine)), _dur(train), _dur(busy),
                     "—" if wall is None else _dur(wall), _f(cycle, ".0%") if cycle is not None else "—",
                     _f(busy / wall, ".0%") if wall else "—"])  # fmt: skip
    if not rows:
        return "<p class='empty'>No runners joined yet.</p>"
    head = ["runner", "class", "results", "training", "busy (total)", "wall (join → last finish)", "duty cycle",
            "busy share"]  # fmt: skip
    return _duty_figure(duty) + _table(head, rows)


def _leaderboard_section(d: dict[str, Any], stats: dict[str, dict[str, Any]]) -> str:
    parts: list[str] = []
    board = [b for b in d["board"] if b["agent"] != BASELINE_AGENT]
    if board:
        parts.append(_table(["class", "rank", "agent", "best val_bpb", "best hypothesis", "experiments", "ok",
                             "keeps", "failed"], [
            [b["hw_class"] or "", str(b["rank"]), b["agent"], _f(b["best_val_bpb"]), b["best_hypothesis"] or "",
             str(b["experiments"]), str(b["ok"]), str(b["keeps"]), str(b["crashes"])] for b in board]))  # fmt: skip
    kept = sorted((e for e in d["exps"] if e["decision"] == "keep"),
                  key=lambda e: (e["ran_on"] or "", e["val_bpb"] if e["val_bpb"] is not None else 9e9))  # fmt: skip
    if not kept and not board:
        return "<p class='empty'>Nothing finished yet.</p>"
    parts.append("<h3>Kept changes</h3>")
    if not kept:
        parts.append("<p class='empty'>No kept hypotheses yet.</p>")
        return "".join(parts)
    rows = []
    for e in kept:
        bm = stats.get(e["ran_on"] or "", {}).get("baseline_mean")
        delta = "—" if bm is None or e["val_bpb"] is None else f"{e['val_bpb'] - bm:+.4f}"
        diff = (f"<details><summary>diff</summary><pre>{_e(e['diff'] or '(no diff recorded)')}</pre>"
                f"{'<p>' + _e(e['rationale']) + '</p>' if e['rationale'] else ''}</details>")  # fmt: skip
        rows.append([e["ran_on"] or "", _f(e["val_bpb"]), delta, e["agent"], _e(e["description"]) + diff,
                     e["hypothesis_id"], e["parent"] or ""])  # fmt: skip
    parts.append(_table(["class", "val_bpb", "vs baseline", "agent", "change", "hypothesis", "parent"], rows,
                        raw_cols=frozenset({4})))  # fmt: skip
    return "".join(parts)


def _page(title: str, body: str) -> str:
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; style-src 'unsafe-inline'; "
        'img-src data:">'
        f"<title>swarm report — {_e(title)}</title><style>{CSS}</style></head>"
        f"<body>{body}<p class='muted'>Generated by swarm report at "
        f"{_e(time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime()))}.</p></body></html>\n"
    )

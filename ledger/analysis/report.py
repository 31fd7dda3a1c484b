"""The report (`swarm report`): one self-contained HTML page about a run, from the ledger.

The page opens offline: CSS is inline and every plot is an inline SVG drawn by matplotlib (a bare
``Figure``, which renders with the Agg/SVG canvases and never touches pyplot's global state). Everything
that comes from the ledger (descriptions, rationales, diffs, notes, agent names: much of it written by LLMs)
is HTML-escaped; plot labels are drawn as glyph paths with mathtext off.
"""

from __future__ import annotations

import html
import re
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import duckdb

from bus.events import PROMOTION_TAG
from ledger.analysis.figures import best_so_far_figure, duty_figure, progress_figure, rates_figure, svg
from ledger.analysis.rundata import BASELINE_AGENT, RunData, latest_run, load_run

# --------------------------------------------------------------------------------------------------
# helpers


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _f(v: float | None, spec: str = ".4f") -> str:
    return "—" if v is None else format(v, spec)


def _dur(seconds: float) -> str:
    seconds = max(0.0, seconds)
    h, rem = divmod(round(seconds), 3600)
    m, s = divmod(rem, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else f"{m}m {s:02d}s"


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
    d = load_run(con, run)
    if not d.n_events:
        return _page(run, f"<h1>Run {_e(run)}</h1><p class='empty'>No events for this run in the ledger.</p>")
    finished, ok, keeps, classes, competitors = d.finished, d.ok, d.keeps, d.classes, d.competitors

    parts: list[str] = []
    parts.append(f"<h1>Run {_e(run)}</h1>")
    parts.append(f"<p class='sub'>{_e(time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(d.t0)))} → "
                 f"{_e(time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(d.t1)))} · {d.n_events} events</p>")  # fmt: skip
    cards = [
        ("hypotheses", len(d.exps)), ("finished", len(finished)), ("ok", len(ok)),
        ("failed", len(finished) - len(ok)), ("kept", len(keeps)), ("agents", len(competitors)),
        ("runners", len(d.runner_names)), ("notes", len(d.notes)), ("wall time", _dur(d.t1 - d.t0)),
        ("GPU-hours", f"{d.gpu_seconds / 3600:.2f}"), ("LLM cost", f"${d.cost_usd:.2f}"),
    ]  # fmt: skip
    parts.append("<div class='cards'>" + "".join(f"<div class='card'><b>{_e(v)}</b><span>{_e(k)}</span></div>"
                                                 for k, v in cards) + "</div>")  # fmt: skip
    best_rows = []
    for cls in classes:
        b, bm = d.best(cls), d.baseline_mean(cls)
        if b is not None:
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
        parts.append(svg(progress_figure(cls, d.exps, d.baseline_mean(cls))))

    parts.append("<h2 id='agents'>Best so far per agent</h2>")
    if competitors and classes and ok:
        parts.append("<h3>against wall time</h3>")
        parts.append(svg(best_so_far_figure(d, "wall")))
        parts.append("<h3>against GPU-hours</h3><p class='muted'>GPU-hours of an agent: the sum of total_seconds "
                     "of the results of its hypotheses on that class.</p>")  # fmt: skip
        parts.append(svg(best_so_far_figure(d, "gpu")))
    else:
        parts.append("<p class='empty'>No successful agent experiments yet.</p>")

    parts.append("<h2 id='rates'>Keep / discard / crash rates per agent</h2>")
    rates = d.rates()
    if rates:
        parts.append(svg(rates_figure(rates)))
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

    promotions = _promotions_section(d)
    if promotions:
        parts.append("<h2 id='promotions'>Screen → validate promotions</h2>")
        parts.append(promotions)

    parts.append("<h2 id='runners'>Runner duty cycle</h2>")
    parts.append(_runners_section(d))

    parts.append("<h2 id='baselines'>Baselines per class</h2>")
    if d.stats:
        parts.append(_table(["class", "baseline runs", "mean val_bpb ± σ", "runners online"], [
            [s["hw_class"], str(s["baseline_runs"]),
             "—" if s["baseline_mean"] is None else f"{s['baseline_mean']:.4f} ± {_f(s['sigma'])}",
             str(s["runners_online"])] for s in d.stats.values()]))  # fmt: skip
    else:
        parts.append("<p class='empty'>No baseline runs yet.</p>")

    parts.append("<h2 id='leaderboard'>Leaderboard</h2>")
    parts.append(_leaderboard_section(d))

    parts.append("<h2 id='llm'>LLM cost per agent</h2>")
    if d.usage:
        kept_by = {a: sum(1 for e in keeps if e["agent"] == a) for a in competitors}
        parts.append(_table(["agent", "model", "calls", "failed", "input tokens", "output tokens", "cost", "$ / keep"], [
            [u["agent"], u["model"], str(u["calls"]), str(u["failed"]), f"{u['input_tokens'] or 0:,}",
             f"{u['output_tokens'] or 0:,}", f"${u['cost_usd'] or 0:.4f}",
             f"${(u['cost_usd'] or 0) / kept_by[u['agent']]:.4f}" if kept_by.get(u["agent"]) else "—"]
            for u in d.usage]))  # fmt: skip
    else:
        parts.append("<p class='empty'>No LLM calls recorded (optuna/random agents only).</p>")

    parts.append("<h2 id='notebook'>Notebook</h2>")
    if d.notes:
        for n in d.notes:
            when = time.strftime("%H:%M:%S", time.gmtime(n["ts"]))
            refs = ", ".join(n["refs"] or [])
            parts.append(f"<div class='note'><h4>{_e(n['title'])}</h4><div class='muted'>{_e(n['agent'])} · "
                         f"{_e(when)} UTC{' · refs: ' + _e(refs) if refs else ''}</div>"
                         f"{render_markdown(n['body'] or '')}</div>")  # fmt: skip
    else:
        parts.append("<p class='empty'>No notes yet.</p>")
    return _page(run, "\n".join(parts))


def _promotions_section(d: RunData) -> str:
    """Each screen-class win re-run on the validate class: whether its ranking transferred."""
    by_id = {e["hypothesis_id"]: e for e in d.exps}
    out = []
    for e in d.exps:
        if PROMOTION_TAG not in (e.get("tags") or []):
            continue
        screen = by_id.get(e["parent"] or "") or {}
        if e["decision"] == "keep":
            verdict = "transferred: kept on the validate class"
        elif e["decision"] is not None:
            verdict = "did not transfer"
        else:
            verdict = "pending" if e["status"] is None else f"no decision ({e['status']})"
        out.append([
            e["agent"] or "", screen.get("description") or e["description"] or "",
            f"{screen.get('ran_on') or '?'} {_f(screen.get('val_bpb'))}",
            f"{e['ran_on'] or e['hw_class'] or '?'} {_f(e['val_bpb'])}", verdict, e["hypothesis_id"],
        ])  # fmt: skip
    if not out:
        return ""
    return _table(["agent", "edit", "screen class, val_bpb", "validate class, val_bpb", "ranking", "hypothesis"], out)


def _runners_section(d: RunData) -> str:
    figures = d.runner_figures()
    if not figures:
        return "<p class='empty'>No runners joined yet.</p>"
    rows = [[r.runner, r.hw_class, str(r.results), _dur(r.training_seconds), _dur(r.busy_seconds),
             "—" if r.wall_seconds is None else _dur(r.wall_seconds),
             _f(r.duty_cycle, ".0%") if r.duty_cycle is not None else "—",
             _f(r.busy_seconds / r.wall_seconds, ".0%") if r.wall_seconds else "—"] for r in figures]  # fmt: skip
    head = ["runner", "class", "results", "training", "busy (total)", "wall (join → last finish)", "duty cycle",
            "busy share"]  # fmt: skip
    return svg(duty_figure([(r.runner, r.duty_cycle) for r in figures])) + _table(head, rows)


def _leaderboard_section(d: RunData) -> str:
    parts: list[str] = []
    board = [b for b in d.board if b["agent"] != BASELINE_AGENT]
    if board:
        parts.append(_table(["class", "rank", "agent", "best val_bpb", "best hypothesis", "experiments", "ok",
                             "keeps", "failed"], [
            [b["hw_class"] or "", str(b["rank"]), b["agent"], _f(b["best_val_bpb"]), b["best_hypothesis"] or "",
             str(b["experiments"]), str(b["ok"]), str(b["keeps"]), str(b["crashes"])] for b in board]))  # fmt: skip
    kept = sorted(
        d.keeps, key=lambda e: (e["ran_on"] or "", e["val_bpb"] if e["val_bpb"] is not None else 9e9)
    )
    if not kept and not board:
        return "<p class='empty'>Nothing finished yet.</p>"
    parts.append("<h3>Kept changes</h3>")
    if not kept:
        parts.append("<p class='empty'>No kept hypotheses yet.</p>")
        return "".join(parts)
    rows = []
    for e in kept:
        bm = d.baseline_mean(e["ran_on"] or "")
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

"""The report's figures, drawn by matplotlib on bare ``Figure`` objects (Agg/SVG canvases; pyplot's global
state is never touched): inline SVG for the HTML page, PNG files for papers, issues and chat
(``swarm report --png DIR``). Labels are drawn with mathtext off: descriptions come from models."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import matplotlib
from matplotlib.figure import Figure

from ledger.analysis.rundata import RunData

GREY, GREEN, RED = "#9e9e9e", "#2e9b4f", "#d9534f"
AGENT_COLOURS = ["#1f77b4", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"]


def short(text: str | None, n: int = 36) -> str:
    t = " ".join((text or "").split())
    return t if len(t) <= n else t[: n - 1] + "…"


def svg(fig: Figure) -> str:
    """The figure as an inline ``<svg>`` (deterministic: no date, fixed hash salt, text as paths)."""
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": "swarm-report", "svg.fonttype": "path"}):
        fig.savefig(buf, format="svg", metadata={"Date": None}, bbox_inches="tight")
    out = buf.getvalue()
    out = out[out.index("<svg") :]
    out = re.sub(r"<metadata>.*?</metadata>", "", out, flags=re.S)
    out = re.sub(r"<!--.*?-->", "", out, flags=re.S)
    out = re.sub(r'\s+xmlns(:\w+)?="[^"]*"', "", out)  # inline SVG in HTML needs no namespaces
    return f'<div class="fig">{out}</div>'


def progress_figure(cls: str, exps: list[dict[str, Any]], base_mean: float | None) -> Figure:
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
                ax.annotate(short(e["description"]), (i, best), xytext=(4, 6), textcoords="offset points",
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
    return fig


def best_so_far_figure(d: RunData, mode: str) -> Figure:
    """Best val_bpb so far per agent, one panel per class; x = wall hours since the run began, or the
    agent's cumulative GPU-hours (sum of total_seconds of its results on that class)."""
    classes, agents = d.classes, d.competitors
    fig = Figure(figsize=(11, 3.4 * max(1, len(classes))))
    by_id = {e["hypothesis_id"]: e for e in d.exps}
    for k, cls in enumerate(classes):
        ax = fig.add_subplot(len(classes), 1, k + 1)
        drawn = False
        for j, agent in enumerate(agents):
            gpu = 0.0
            best = float("inf")
            xs: list[float] = []
            ys: list[float] = []
            for r in d.results:
                e = by_id.get(r["hypothesis_id"])
                if e is None or e["agent"] != agent or e["ran_on"] != cls:
                    continue
                gpu += float(r["total_seconds"] or 0.0)
                if r["disposition"] != "result" or r["status"] != "ok" or e["val_bpb"] is None:
                    continue
                best = min(best, e["val_bpb"])
                xs.append(gpu / 3600 if mode == "gpu" else (r["ts"] - d.t0) / 3600)
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
    return fig


def rates_figure(rates: list[tuple[str, int, int, int]]) -> Figure:
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
    return fig


def duty_figure(duty: list[tuple[str, float | None]]) -> Figure:
    fig = Figure(figsize=(11, 0.55 * len(duty) + 1.2))
    ax = fig.add_subplot()
    ax.barh([x[0] for x in duty], [x[1] or 0.0 for x in duty], color="#1f77b4")
    ax.set_xlim(0, 1)
    ax.set_xlabel("duty cycle = training seconds / wall time between join and last finish")
    ax.invert_yaxis()
    fig.tight_layout()
    return fig


def report_figures(d: RunData) -> dict[str, Figure]:
    """Every figure of the report, by file stem: ``progress-<class>``, ``best-so-far-wall``,
    ``best-so-far-gpu``, ``rates``, ``duty-cycle`` (those with data)."""
    figs: dict[str, Figure] = {}
    for cls in d.classes:
        figs[f"progress-{_stem(cls)}"] = progress_figure(cls, d.exps, d.baseline_mean(cls))
    if d.competitors and d.classes and d.ok:
        figs["best-so-far-wall"] = best_so_far_figure(d, "wall")
        figs["best-so-far-gpu"] = best_so_far_figure(d, "gpu")
    rates = d.rates()
    if rates:
        figs["rates"] = rates_figure(rates)
    runners = d.runner_figures()
    if runners:
        figs["duty-cycle"] = duty_figure([(r.runner, r.duty_cycle) for r in runners])
    return figs


def write_pngs(d: RunData, out_dir: Path, *, dpi: int = 150) -> list[Path]:
    """Write the report's figures as PNG files into ``out_dir`` (created); returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for stem, fig in report_figures(d).items():
        path = out_dir / f"{_stem(d.run)}-{stem}.png"
        tmp = path.with_name(f".{path.name}.tmp")
        fig.savefig(
            tmp, format="png", dpi=dpi, bbox_inches="tight", facecolor="white", metadata={"Software": None}
        )
        tmp.replace(path)
        paths.append(path)
    return paths


def _stem(text: str) -> str:
    """A string safe as part of a file name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "x"

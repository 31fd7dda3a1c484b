"""`swarm compare`: agents (or models) head to head, on one run or across runs, from the ledger.

Definitions (every figure comes from the ledger's tables and views; baselines are not competitors):

* **best val_bpb per hardware class** with a 95 % t-interval over repeats. Repeats are the per-run bests
  of the same agent/model when it appears in several runs; on a single run, the ok validate-tier repeats
  (hypotheses tagged ``repeat`` whose parent is the best hypothesis) together with the best itself. With
  one sample the interval is absent (``n=1``).
* **improvement per GPU-hour**: per class, the sum over runs of (class baseline mean − the group's best)
  divided by the group's measured GPU-hours on that class.
* **API dollars per improvement**: ``llm_usage.cost_usd`` of the group / the number of kept hypotheses that
  improved the agent's best on their class (rows of the ``frontier`` view whose decision is keep).
* **crash rate**: finished experiments whose status is not ok / finished experiments.
* **GPU-seconds** (the fairness figure): the sum of ``total_seconds`` of every result a runner published for
  the group's hypotheses (duplicates and late finishes included: they used the GPU too; ``unclaimed``
  finishes excluded), and its share of all competitors' GPU-seconds.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import duckdb
from rich.table import Table
from rich.text import Text

from bus.events import BASELINE, BASELINE_TAG, REPEAT_TAG

BASELINE_AGENT = BASELINE  # the agent name baselines are proposed under

# two-sided 95 % Student t critical values, df = 1..30
_T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042]  # fmt: skip


def t_critical(df: int) -> float:
    """Two-sided 95 % critical value of Student's t with ``df`` degrees of freedom."""
    if df < 1:
        raise ValueError("t-interval needs at least 2 samples")
    if df <= len(_T95):
        return _T95[df - 1]
    z = 1.959964  # Cornish-Fisher expansion around the normal quantile, accurate to ~1e-3 above df 30
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def t_interval(values: list[float]) -> tuple[float, float, float] | None:
    """(mean, low, high) of a 95 % t-interval of the mean, or None for fewer than 2 values."""
    n = len(values)
    if n < 2:
        return None
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_critical(n - 1) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


@dataclass
class ClassResult:
    hw_class: str
    best: float | None  # lowest ok val_bpb over the runs
    best_hypothesis: str | None
    best_run: str | None
    n: int  # samples behind the interval
    mean: float | None
    ci_low: float | None
    ci_high: float | None
    ci_source: str | None  # "runs", "repeats", or None (n=1)
    samples: list[float]
    baseline_mean: float | None  # mean over the runs that have a baseline on this class
    improvement: float | None  # sum over runs of (baseline mean - best)
    gpu_seconds: float
    improvement_per_gpu_hour: float | None
    experiments: int


@dataclass
class GroupResult:
    name: str  # agent id, or model
    agents: list[str]
    runs: list[str]
    experiments: int  # proposed hypotheses (baselines excluded)
    finished: int
    ok: int
    crashes: int  # finished with any status but ok
    crash_rate: float | None
    keeps: int
    improvements: int  # keeps that improved the agent's best on their class
    gpu_seconds: float
    gpu_share: float | None
    cost_usd: float
    usd_per_improvement: float | None
    classes: dict[str, ClassResult] = field(default_factory=dict)


@dataclass
class CompareResult:
    by: str
    runs: list[str]
    classes: list[str]
    groups: list[GroupResult]
    total_gpu_seconds: float

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values, for ``swarm compare --json``."""
        return asdict(self)


def _rows(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
    cur = con.execute(sql, params or [])
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def _runs(con: duckdb.DuckDBPyConnection, runs: list[str] | None) -> list[str]:
    if runs:
        return list(runs)
    got = con.execute("SELECT run FROM events GROUP BY run ORDER BY min(seq)").fetchall()
    return [r[0] for r in got]


def compare(
    con: duckdb.DuckDBPyConnection, *, runs: list[str] | None = None, by: str = "agent"
) -> CompareResult:
    """Compare agents (``by="agent"``) or models (``by="model"``: agents grouped by their model; agents
    without a model, like optuna, stand for themselves) on ``runs`` (default: every run in the ledger)."""
    if by not in ("agent", "model"):
        raise ValueError(f"by must be 'agent' or 'model', not {by!r}")
    run_list = _runs(con, runs)
    if not run_list:
        return CompareResult(by, [], [], [], 0.0)
    key = "agent" if by == "agent" else "coalesce(nullif(model, ''), agent)"
    hkey = "h.agent" if by == "agent" else "coalesce(nullif(h.model, ''), h.agent)"
    exps = _rows(con, f"""
        SELECT run, hypothesis_id, agent, {key} AS grp, parent, tier, coalesce(tags, []) AS tags, ran_on,
            status, val_bpb, decision, finished_seq
        FROM experiments
        WHERE list_contains($1, run) AND agent <> '{BASELINE_AGENT}' AND NOT list_contains(coalesce(tags, []), '{BASELINE_TAG}')
        ORDER BY run, proposed_seq""", [run_list])  # fmt: skip
    gpu = _rows(con, f"""
        WITH h AS (SELECT * FROM hypotheses
                   QUALIFY row_number() OVER (PARTITION BY run, hypothesis_id ORDER BY seq) = 1)
        SELECT {hkey} AS grp,
            h.run, coalesce(nullif(r.hw_class, ''), h.hw_class) AS hw_class, fsum(r.total_seconds) AS secs
        FROM results r JOIN h ON h.run = r.run AND h.hypothesis_id = r.hypothesis_id
        WHERE list_contains($1, r.run) AND r.disposition <> 'unclaimed' AND h.agent <> '{BASELINE_AGENT}'
            AND NOT list_contains(coalesce(h.tags, []), '{BASELINE_TAG}')
        GROUP BY ALL""", [run_list])  # fmt: skip
    cost = _rows(con, f"""
        SELECT {key} AS grp, sum(cost_usd) AS usd FROM llm_usage
        WHERE list_contains($1, run) AND agent IS NOT NULL GROUP BY ALL""", [run_list])  # fmt: skip
    frontier = _rows(con, """
        SELECT f.run, f.hypothesis_id FROM frontier f JOIN experiments e
            ON e.run = f.run AND e.hypothesis_id = f.hypothesis_id
        WHERE list_contains($1, f.run) AND e.decision = 'keep'""", [run_list])  # fmt: skip
    base = {
        (r["run"], r["hw_class"]): r["baseline_mean"]
        for r in _rows(
            con,
            "SELECT run, hw_class, baseline_mean FROM class_stats WHERE list_contains($1, run)",
            [run_list],
        )
    }
    improving = {(r["run"], r["hypothesis_id"]) for r in frontier}

    groups: dict[str, list[dict[str, Any]]] = {}
    for e in exps:
        groups.setdefault(e["grp"], []).append(e)
    for g in gpu:
        groups.setdefault(g["grp"], [])
    for c in cost:
        groups.setdefault(c["grp"], [])
    gpu_by: dict[tuple[str, str, str], float] = {}
    for g in gpu:
        k = (g["grp"], g["run"], g["hw_class"] or "")
        gpu_by[k] = gpu_by.get(k, 0.0) + float(g["secs"] or 0.0)
    # seconds are recorded to the millisecond; summed exactly and rounded, the figures do not depend on the
    # order rows come back in (the ledger's answer over the bus equals a fresh projection's)
    total_gpu = round(math.fsum(gpu_by.values()), 3)
    cost_by = {c["grp"]: float(c["usd"] or 0.0) for c in cost}
    classes = sorted({e["ran_on"] for e in exps if e["ran_on"]} | {k[2] for k in gpu_by if k[2]})

    out: list[GroupResult] = []
    for name in sorted(groups):
        rows = groups[name]
        finished = [e for e in rows if e["status"] is not None]
        ok = [e for e in finished if e["status"] == "ok"]
        crashes = len(finished) - len(ok)
        keeps = sum(1 for e in rows if e["decision"] == "keep")
        improvements = sum(1 for e in rows if (e["run"], e["hypothesis_id"]) in improving)
        secs = round(math.fsum(v for k, v in gpu_by.items() if k[0] == name), 3)
        usd = cost_by.get(name, 0.0)
        gr = GroupResult(
            name=name, agents=sorted({e["agent"] for e in rows}), runs=sorted({e["run"] for e in rows}),
            experiments=len(rows), finished=len(finished), ok=len(ok), crashes=crashes,
            crash_rate=crashes / len(finished) if finished else None, keeps=keeps, improvements=improvements,
            gpu_seconds=secs, gpu_share=secs / total_gpu if total_gpu > 0 else None, cost_usd=usd,
            usd_per_improvement=usd / improvements if improvements else None,
        )  # fmt: skip
        for cls in classes:
            gr.classes[cls] = _class_result(name, cls, rows, gpu_by, base, run_list)
        out.append(gr)
    return CompareResult(by, run_list, classes, out, total_gpu)


def _class_result(name: str, cls: str, rows: list[dict[str, Any]], gpu_by: dict[tuple[str, str, str], float],
                  base: dict[tuple[str, str], float | None], run_list: list[str]) -> ClassResult:  # fmt: skip
    on = [e for e in rows if e["ran_on"] == cls]
    oks = [e for e in on if e["status"] == "ok" and e["val_bpb"] is not None]
    secs = round(math.fsum(v for k, v in gpu_by.items() if k[0] == name and k[2] == cls), 3)
    per_run: dict[str, dict[str, Any]] = {}
    for e in oks:
        if REPEAT_TAG in e["tags"]:
            continue
        cur = per_run.get(e["run"])
        if cur is None or e["val_bpb"] < cur["val_bpb"]:
            per_run[e["run"]] = e
    if not per_run:
        return ClassResult(
            cls, None, None, None, 0, None, None, None, None, [], None, None, secs, None, len(on)
        )
    best_e = min(per_run.values(), key=lambda e: e["val_bpb"])
    samples: list[float]
    source: str | None
    if len(per_run) >= 2:
        samples, source = [float(per_run[r]["val_bpb"]) for r in run_list if r in per_run], "runs"
    else:
        reps = [float(e["val_bpb"]) for e in oks if REPEAT_TAG in e["tags"] and e["run"] == best_e["run"]
                and e["parent"] == best_e["hypothesis_id"]]  # fmt: skip
        samples, source = [float(best_e["val_bpb"]), *reps], "repeats"
    ci = t_interval(samples)
    bases = [(r, base.get((r, cls))) for r in per_run]
    improvement = None
    if any(b is not None for _, b in bases):
        improvement = sum(float(b) - float(per_run[r]["val_bpb"]) for r, b in bases if b is not None)
    per_hour = improvement / (secs / 3600.0) if improvement is not None and secs > 0 else None
    return ClassResult(
        hw_class=cls, best=float(best_e["val_bpb"]), best_hypothesis=best_e["hypothesis_id"],
        best_run=best_e["run"], n=len(samples), mean=ci[0] if ci else float(samples[0]),
        ci_low=ci[1] if ci else None, ci_high=ci[2] if ci else None, ci_source=source if ci else None,
        samples=samples, baseline_mean=_mean([b for _, b in bases if b is not None]), improvement=improvement,
        gpu_seconds=secs, improvement_per_gpu_hour=per_hour, experiments=len(on),
    )  # fmt: skip


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _fmt(v: float | None, spec: str = ".4f") -> str:
    return "—" if v is None else format(v, spec)


def format_best(c: ClassResult) -> str:
    """``0.9750 (0.9731–0.9769, n=3 runs)`` or ``0.9750 (n=1)``."""
    if c.best is None:
        return "—"
    if c.ci_low is None or c.ci_high is None:
        return f"{c.best:.4f} (n=1)"
    return f"{c.best:.4f} (mean {c.mean:.4f}, 95% CI {c.ci_low:.4f}–{c.ci_high:.4f}, n={c.n} {c.ci_source})"


def render_table(result: CompareResult) -> Table:
    """A rich table: one row per agent/model, the shared figures then best and improvement/GPU-h per class."""
    runs = ", ".join(result.runs) or "no runs"
    table = Table(title=Text(f"compare by {result.by} — {runs}"), show_lines=True)
    table.add_column(result.by, style="bold")
    table.add_column("experiments", justify="right")
    table.add_column("crash rate", justify="right")
    table.add_column("GPU-s (share)", justify="right")
    table.add_column("LLM $", justify="right")
    table.add_column("$ / improvement", justify="right")
    for cls in result.classes:
        table.add_column(Text(f"best val_bpb ({cls})"))
        table.add_column(Text(f"Δ/GPU-h ({cls})"), justify="right")
    for g in result.groups:
        cells = [
            g.name, str(g.experiments),
            "—" if g.crash_rate is None else f"{g.crash_rate:.0%} ({g.crashes}/{g.finished})",
            f"{g.gpu_seconds:,.0f} ({_fmt(g.gpu_share, '.0%')})", f"{g.cost_usd:.2f}",
            "—" if g.usd_per_improvement is None else f"{g.usd_per_improvement:.3f} ({g.improvements})",
        ]  # fmt: skip
        for cls in result.classes:
            c = g.classes.get(cls)
            cells += ["—", "—"] if c is None else [format_best(c), _fmt(c.improvement_per_gpu_hour, ".4f")]
        table.add_row(*[Text(c) for c in cells])  # Text: names are data, never rich markup
    return table

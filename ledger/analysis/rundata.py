"""One run's numbers, read from a ledger file once: what the report's page, its PNG figures and its JSON
summary (``swarm report --json``) are all made of, so the three never disagree."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import duckdb

from bus.events import BASELINE

BASELINE_AGENT = BASELINE  # the agent name baselines are proposed under
SUMMARY_SCHEMA = "swarm.report/1"


def rows(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
    """A query's rows as dicts."""
    cur = con.execute(sql, params or [])
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def latest_run(con: duckdb.DuckDBPyConnection) -> str | None:
    """The run with the latest event (None for an empty ledger)."""
    row = con.execute("SELECT run FROM events GROUP BY run ORDER BY max(seq) DESC LIMIT 1").fetchone()
    return None if row is None else str(row[0])


@dataclass
class RunnerFigures:
    """A runner's busy figures: duty cycle = training seconds / wall time from join to its last finish."""

    runner: str
    hw_class: str
    results: int
    training_seconds: float
    busy_seconds: float
    wall_seconds: float | None
    duty_cycle: float | None


@dataclass
class RunData:
    run: str
    t0: float
    t1: float
    n_events: int
    exps: list[dict[str, Any]]  # one row per hypothesis (experiments view + diff, rationale)
    results: list[dict[str, Any]]  # every claimed finish (results, duplicates, late), with its agent
    runners: list[dict[str, Any]]
    notes: list[dict[str, Any]]
    usage: list[dict[str, Any]]  # LLM calls per agent and model
    stats: dict[str, dict[str, Any]]  # class_stats by class
    board: list[dict[str, Any]]
    claims_first: dict[str, float] = field(default_factory=dict)

    @property
    def finished(self) -> list[dict[str, Any]]:
        return [e for e in self.exps if e["status"] is not None]

    @property
    def ok(self) -> list[dict[str, Any]]:
        return [e for e in self.finished if e["status"] == "ok"]

    @property
    def keeps(self) -> list[dict[str, Any]]:
        return [e for e in self.exps if e["decision"] == "keep"]

    @property
    def classes(self) -> list[str]:
        """Classes with a finished experiment or a baseline."""
        got = {e["ran_on"] for e in self.finished if e["ran_on"]}
        return sorted(got | {c for c, s in self.stats.items() if s["baseline_runs"]})

    @property
    def competitors(self) -> list[str]:
        """Agents, baselines left out."""
        return sorted({e["agent"] for e in self.exps if e["agent"] != BASELINE_AGENT})

    @property
    def runner_names(self) -> list[str]:
        return sorted({r["runner"] for r in self.runners} | {r["runner"] for r in self.results})

    @property
    def gpu_seconds(self) -> float:
        return sum(float(r["total_seconds"] or 0.0) for r in self.results)

    @property
    def cost_usd(self) -> float:
        return sum(float(u["cost_usd"] or 0.0) for u in self.usage)

    def baseline_mean(self, cls: str) -> float | None:
        mean = self.stats.get(cls, {}).get("baseline_mean")
        return None if mean is None else float(mean)

    def best(self, cls: str) -> dict[str, Any] | None:
        """The best ok experiment of a class."""
        cand = [e for e in self.ok if e["ran_on"] == cls and e["val_bpb"] is not None]
        return min(cand, key=lambda e: e["val_bpb"]) if cand else None

    def rates(self) -> list[tuple[str, int, int, int]]:
        """(agent, keep, discard, crash/failed) over its finished experiments; agents with none left out."""
        out = []
        for agent in self.competitors:
            mine = [e for e in self.finished if e["agent"] == agent]
            k = sum(1 for e in mine if e["status"] == "ok" and e["decision"] == "keep")
            c = sum(1 for e in mine if e["status"] != "ok")
            out.append((agent, k, len(mine) - k - c, c))
        return [r for r in out if sum(r[1:])]

    def runner_figures(self) -> list[RunnerFigures]:
        joined: dict[str, float] = {}
        hw: dict[str, str] = {}
        for r in self.runners:
            if r["action"] == "joined":
                joined.setdefault(r["runner"], r["ts"])
                hw.setdefault(r["runner"], r["hw_class"] or "")
        out = []
        for name in self.runner_names:
            mine = [r for r in self.results if r["runner"] == name]
            start = joined.get(name, self.claims_first.get(name))
            train = sum(float(r["training_seconds"] or 0.0) for r in mine)
            busy = sum(float(r["total_seconds"] or 0.0) for r in mine)
            end = max((r["ts"] for r in mine), default=None)
            wall = (end - start) if start is not None and end is not None else None
            out.append(
                RunnerFigures(
                    name, hw.get(name, ""), len(mine), train, busy, wall, train / wall if wall else None
                )
            )
        return out


def load_run(con: duckdb.DuckDBPyConnection, run: str) -> RunData:
    """Everything the report needs about ``run``, in a handful of queries."""
    span = con.execute("SELECT min(ts), max(ts), count(*) FROM events WHERE run = $1", [run]).fetchone()
    assert span is not None
    exps = rows(con, """
        SELECT e.*, h.diff, h.rationale FROM experiments e
        LEFT JOIN (SELECT hypothesis_id, diff, rationale FROM hypotheses WHERE run = $1
                   QUALIFY row_number() OVER (PARTITION BY hypothesis_id ORDER BY seq) = 1) h USING (hypothesis_id)
        WHERE e.run = $1 ORDER BY e.proposed_seq""", [run])  # fmt: skip
    results = rows(con, """
        SELECT r.hypothesis_id, r.runner, r.status, r.training_seconds, r.total_seconds, r.ts, r.seq,
            r.disposition, h.agent
        FROM results r LEFT JOIN (SELECT hypothesis_id, any_value(agent) AS agent FROM hypotheses
                                  WHERE run = $1 GROUP BY hypothesis_id) h USING (hypothesis_id)
        WHERE r.run = $1 AND r.disposition <> 'unclaimed' ORDER BY r.seq""", [run])  # fmt: skip
    claims = rows(con, "SELECT runner, min(ts) AS first FROM claims WHERE run = $1 GROUP BY runner", [run])
    usage = rows(con, """
        SELECT coalesce(agent, '?') AS agent, coalesce(model, '') AS model, count(*) AS calls,
            count(*) FILTER (WHERE NOT ok) AS failed, sum(input_tokens) AS input_tokens,
            sum(output_tokens) AS output_tokens, sum(cost_usd) AS cost_usd
        FROM llm_usage WHERE run = $1 GROUP BY ALL ORDER BY cost_usd DESC, agent""", [run])  # fmt: skip
    return RunData(
        run=run, t0=span[0] or 0.0, t1=span[1] or 0.0, n_events=int(span[2]), exps=exps, results=results,
        runners=rows(con, "SELECT * FROM runners WHERE run = $1 ORDER BY seq", [run]),
        notes=rows(con, "SELECT * FROM notes WHERE run = $1 ORDER BY seq", [run]), usage=usage,
        stats={s["hw_class"]: s for s in rows(con, "SELECT * FROM class_stats WHERE run = $1 ORDER BY hw_class", [run])},
        board=rows(con, "SELECT * FROM leaderboard WHERE run = $1 ORDER BY hw_class, rank, agent", [run]),
        claims_first={c["runner"]: c["first"] for c in claims},
    )  # fmt: skip


def summary(d: RunData) -> dict[str, Any]:
    """The report's figures as plain JSON values (``swarm report --json``; shape ``swarm.report/1``, see
    docs/json.md)."""
    finished, ok = d.finished, d.ok
    best = {}
    for cls in d.classes:
        b, bm = d.best(cls), d.baseline_mean(cls)
        s = d.stats.get(cls, {})
        best[cls] = {
            "baseline_runs": int(s.get("baseline_runs") or 0), "baseline_mean": bm, "sigma": s.get("sigma"),
            "best_val_bpb": b["val_bpb"] if b else None, "best_hypothesis": b["hypothesis_id"] if b else None,
            "best_agent": b["agent"] if b else None, "best_description": b["description"] if b else None,
            "delta_vs_baseline": (b["val_bpb"] - bm) if b and bm is not None else None,
        }  # fmt: skip
    kept_by = {a: sum(1 for e in d.keeps if e["agent"] == a) for a in d.competitors}
    cost_by: dict[str, float] = {}
    for u in d.usage:
        cost_by[u["agent"]] = cost_by.get(u["agent"], 0.0) + float(u["cost_usd"] or 0.0)
    return {
        "schema": SUMMARY_SCHEMA, "run": d.run, "first_ts": d.t0, "last_ts": d.t1, "events": d.n_events,
        "generated_ts": time.time(),
        "counts": {"hypotheses": len(d.exps), "finished": len(finished), "ok": len(ok),
                   "failed": len(finished) - len(ok), "kept": len(d.keeps), "notes": len(d.notes)},
        "wall_seconds": d.t1 - d.t0, "gpu_seconds": d.gpu_seconds, "llm_cost_usd": d.cost_usd,
        "classes": best,
        "agents": [{"agent": a, "finished": k + di + c, "keep": k, "discard": di, "failed": c,
                    "crash_rate": c / (k + di + c), "cost_usd": cost_by.get(a, 0.0),
                    "usd_per_keep": cost_by.get(a, 0.0) / kept_by[a] if kept_by.get(a) else None}
                   for a, k, di, c in d.rates()],
        "runners": [vars(r) for r in d.runner_figures()],
        "kept": [{"hypothesis_id": e["hypothesis_id"], "agent": e["agent"], "hw_class": e["ran_on"],
                  "val_bpb": e["val_bpb"], "description": e["description"], "parent": e["parent"]}
                 for e in d.keeps],
    }  # fmt: skip

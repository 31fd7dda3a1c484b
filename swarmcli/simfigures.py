"""The figures of a ``swarm simulate`` run, computed from what a real run leaves (the ledger file, the
stream) and from samples the simulator took while it ran (ledger position, context-query latency, peak
memory of each process).

* **throughput**: results per runner-hour inside the measured window (simulated hours), and the share of
  the budget-limited maximum — the runner-seconds the landscape says those experiments need (startup,
  the training budget, the evaluation; less for a run that fails) over the runner-seconds the fleet had.
  An experiment that straddles the window counts for the part of its [claim, finish] inside it.
* **dispatch**: from the moment a hypothesis is ready to run — published (its event's ``ts``) and the runner
  that claims it free (its previous result published) — to its first claim; ``publish_to_claim`` also
  counts the time it queued behind busy runners.
* **ledger lag**: an event's ``ts`` to the first sample at which the ledger's durable consumer had acked
  it (the projector acks after the commit), so its resolution is the sampling interval.
* **exactly once**: every hypothesis has exactly one ``result`` finish in the ledger; duplicates, late and
  unclaimed finishes are counted apart (never as results); the ledger equals a fresh replay of the stream.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from runner.executors.landscape import Landscape

EXACT_LIMIT = 3000  # experiments whose ideal duration is computed one by one; above, a seeded sample


def percentile(xs: list[float], q: float) -> float | None:
    """The ``q`` quantile (0..1, nearest rank) of ``xs``; None when empty."""
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


@dataclass
class Samples:
    """What the simulator measured while the swarm ran (wall clock, unix seconds)."""

    ledger_position: list[tuple[float, int]] = field(default_factory=list)  # (time, ledger ack floor)
    context_ms: list[float] = field(default_factory=list)
    context_errors: int = 0
    peak_rss_mb: dict[str, float] = field(default_factory=dict)  # process -> VmHWM


def ledger_lags(con: duckdb.DuckDBPyConnection, position: list[tuple[float, int]]) -> list[float]:
    """Seconds from each event's ``ts`` to the first sample whose ack floor covers its sequence."""
    samples = sorted(position)
    rows = con.execute("SELECT seq, ts FROM events ORDER BY seq").fetchall()
    out: list[float] = []
    i = 0
    floor_max = 0
    prefix: list[tuple[float, int]] = []  # samples with a running max of the floor (acks only grow)
    for t, floor in samples:
        floor_max = max(floor_max, floor)
        prefix.append((t, floor_max))
    for seq, ts in rows:
        while i < len(prefix) and prefix[i][1] < seq:
            i += 1
        if i == len(prefix):
            break  # never seen projected while sampling (projected after the last sample)
        out.append(max(0.0, prefix[i][0] - ts))
    return out


def dispatch_seconds(con: duckdb.DuckDBPyConnection, run: str) -> tuple[list[float], list[float]]:
    """Per claimed hypothesis: (work ready to first claim, publication to first claim). Ready = published
    and its claiming runner free (its previous result published), so the first excludes queueing behind
    busy runners and the second includes it."""
    rows = con.execute(
        """WITH h AS (SELECT hypothesis_id, min(ts) AS ts FROM hypotheses WHERE run = $1 GROUP BY hypothesis_id),
                c AS (SELECT hypothesis_id, arg_min(runner, ts) AS runner, min(ts) AS ts FROM claims
                      WHERE run = $1 GROUP BY hypothesis_id),
                r AS (SELECT runner, ts FROM results WHERE run = $1)
           SELECT c.ts - greatest(h.ts, coalesce(r.ts, 0)), c.ts - h.ts
           FROM c JOIN h USING (hypothesis_id) ASOF LEFT JOIN r ON c.runner = r.runner AND c.ts >= r.ts""",
        [run],
    ).fetchall()
    return [max(0.0, a) for a, _ in rows], [max(0.0, b) for _, b in rows]


def exactly_once(con: duckdb.DuckDBPyConnection, run: str) -> dict[str, Any]:
    """Every hypothesis's result count and the finishes kept apart."""
    (hyps, one, none, many) = con.execute(
        """WITH h AS (SELECT DISTINCT hypothesis_id FROM hypotheses WHERE run = $1),
                r AS (SELECT hypothesis_id, count(*) AS n FROM results WHERE run = $1 AND disposition = 'result'
                      GROUP BY hypothesis_id)
           SELECT count(*), count(*) FILTER (WHERE r.n = 1), count(*) FILTER (WHERE r.n IS NULL),
                  count(*) FILTER (WHERE r.n > 1)
           FROM h LEFT JOIN r USING (hypothesis_id)""",
        [run],
    ).fetchone() or (0, 0, 0, 0)
    kinds = dict(
        con.execute(
            "SELECT disposition, count(*) FROM results WHERE run = $1 GROUP BY disposition", [run]
        ).fetchall()
    )
    (orphans,) = con.execute(
        """SELECT count(*) FROM results r WHERE r.run = $1 AND r.disposition = 'result'
           AND r.hypothesis_id NOT IN (SELECT hypothesis_id FROM hypotheses WHERE run = $1)""",
        [run],
    ).fetchone() or (0,)
    return {
        "hypotheses": hyps, "with_one_result": one, "without_result": none, "with_several_results": many,
        "results_without_hypothesis": orphans, "duplicates": kinds.get("duplicate", 0),
        "late": kinds.get("late", 0), "unclaimed": kinds.get("unclaimed", 0),
        "ok": hyps > 0 and one == hyps and orphans == 0,
    }  # fmt: skip


def throughput(
    con: duckdb.DuckDBPyConnection,
    run: str,
    landscape: Landscape,
    *,
    window: tuple[float, float],
    runners: int,
    time_scale: float,
    budget: float,
    seed: int = 0,
) -> dict[str, Any]:
    """Results per runner-hour in ``window`` (wall) and the share of the budget-limited maximum."""
    t0, t1 = window
    rows = con.execute(
        """SELECT r.hypothesis_id, r.hw_class, r.status, c.ts AS start, r.ts AS finish
           FROM results r JOIN claims c USING (run, hypothesis_id, attempt, runner)
           WHERE r.run = $1 AND r.disposition = 'result' AND r.ts > $2 AND c.ts < $3""",
        [run, t0, t1],
    ).fetchall()
    part = [(h, cls, (min(f, t1) - max(s, t0)) / (f - s) if f > s else 1.0) for h, cls, _, s, f in rows]
    sample = part if len(part) <= EXACT_LIMIT else random.Random(seed).sample(part, EXACT_LIMIT)
    ids = [h for h, _, _ in sample]
    sources = dict(
        con.execute(
            "SELECT hypothesis_id, any_value(train_py) FROM hypotheses WHERE run = $1 AND list_contains($2, hypothesis_id) "
            "GROUP BY hypothesis_id",
            [run, ids],
        ).fetchall()
    )
    ideal = 0.0
    for h, cls, frac in sample:
        src = sources.get(h)
        if src is not None:
            ideal += frac * landscape.run(src, cls or "h100", budget).seconds
    ideal *= len(part) / max(1, len(sample))
    hours = (t1 - t0) / time_scale / 3600.0
    capacity = runners * hours * 3600.0
    done = sum(f for _, _, f in part)
    return {
        "window_sim_hours": round(hours, 4), "results_in_window": round(done, 1),
        "per_runner_hour": round(done / (runners * hours), 3) if hours else None,
        "budget_limited_max_per_runner_hour": round(done / ideal * 3600.0, 3) if ideal else None,
        "share_of_max": round(ideal / capacity, 4) if capacity else None,
        "ideal_seconds_exact": len(sample) == len(part),
    }  # fmt: skip


def runner_time(
    con: duckdb.DuckDBPyConnection, run: str, *, window: tuple[float, float], runners: int
) -> dict[str, Any]:
    """Where the fleet's time went inside ``window``: holding work (claim to finish, every attempt), idle
    while work waited in the queue (dispatch-bound), idle with nothing queued (waiting for the agents)."""
    t0, t1 = window
    deltas: list[tuple[float, int, int]] = []  # (time, Δbusy, Δqueued)
    for (ts,) in con.execute("SELECT min(ts) FROM hypotheses WHERE run = $1 GROUP BY hypothesis_id", [run]).fetchall():
        deltas.append((ts, 0, 1))
    for (ts,) in con.execute(
        "SELECT min(ts) FROM claims WHERE run = $1 GROUP BY hypothesis_id", [run]
    ).fetchall():
        deltas.append((ts, 0, -1))
    for start, end in con.execute(
        """SELECT c.ts, r.ts FROM claims c JOIN results r USING (run, hypothesis_id, attempt, runner)
           WHERE c.run = $1""",
        [run],
    ).fetchall():
        deltas += [(start, 1, 0), (end, -1, 0)]
    deltas.sort()
    busy = queued = 0
    acc = {"busy": 0.0, "idle_queued": 0.0, "idle_empty": 0.0}
    prev = t0
    for t, db, dq in [*deltas, (t1, 0, 0)]:
        lo, hi = max(prev, t0), min(t, t1)
        if hi > lo:
            b = min(busy, runners)
            idle = runners - b
            waiting = min(idle, max(0, queued))
            acc["busy"] += b * (hi - lo)
            acc["idle_queued"] += waiting * (hi - lo)
            acc["idle_empty"] += (idle - waiting) * (hi - lo)
        prev = max(prev, t)
        busy += db
        queued += dq
    total = runners * (t1 - t0)
    return {k: round(v / total, 4) if total > 0 else None for k, v in acc.items()}


def sizes(stream_bytes: int, db_bytes: int, experiments: int) -> dict[str, Any]:
    per = 1000.0 / experiments if experiments else 0.0
    return {
        "stream_mb": round(stream_bytes / 2**20, 2), "duckdb_mb": round(db_bytes / 2**20, 2),
        "stream_mb_per_1k": round(stream_bytes / 2**20 * per, 2), "duckdb_mb_per_1k": round(db_bytes / 2**20 * per, 2),
    }  # fmt: skip


def ms(x: float | None) -> float | None:
    return None if x is None else round(1000 * x, 1)


def summarize(
    con: duckdb.DuckDBPyConnection,
    run: str,
    samples: Samples,
    landscape: Landscape,
    *,
    window: tuple[float, float],
    runners: int,
    time_scale: float,
    budget: float,
    stream_bytes: int,
    db_bytes: int,
    seed: int = 0,
) -> dict[str, Any]:
    """Every figure of the run, JSON-ready."""
    ready, queued = dispatch_seconds(con, run)
    lags = ledger_lags(con, samples.ledger_position)
    once = exactly_once(con, run)
    status = dict(con.execute("SELECT status, count(*) FROM experiments WHERE run = $1 GROUP BY status", [run]).fetchall())
    best = con.execute(
        "SELECT ran_on, min(val_bpb), count(*) FROM experiments WHERE run = $1 AND status = 'ok' GROUP BY ran_on ORDER BY 1",
        [run],
    ).fetchall()
    return {
        "throughput": throughput(con, run, landscape, window=window, runners=runners, time_scale=time_scale,
                                 budget=budget, seed=seed),
        "runner_time": runner_time(con, run, window=window, runners=runners),
        "dispatch_ms": {"p50": ms(percentile(ready, 0.5)), "p99": ms(percentile(ready, 0.99)), "n": len(ready)},
        "publish_to_claim_ms": {"p50": ms(percentile(queued, 0.5)), "p99": ms(percentile(queued, 0.99))},
        "ledger_lag_ms": {"p50": ms(percentile(lags, 0.5)), "p99": ms(percentile(lags, 0.99)), "n": len(lags)},
        "context_query_ms": {
            "p50": percentile(samples.context_ms, 0.5), "p99": percentile(samples.context_ms, 0.99),
            "n": len(samples.context_ms), "errors": samples.context_errors,
        },
        "peak_rss_mb": {k: round(v, 1) for k, v in sorted(samples.peak_rss_mb.items())},
        "sizes": sizes(stream_bytes, db_bytes, once["hypotheses"]),
        "exactly_once": once,
        "statuses": status,
        "best_per_class": {cls: {"val_bpb": round(v, 5), "ok_results": n} for cls, v, n in best},
    }  # fmt: skip


def table_fingerprints(con: duckdb.DuckDBPyConnection) -> dict[str, tuple[int, int]]:
    """(rows, sum of row hashes) of every projected table: equal tables, equal fingerprints."""
    from ledger.schema import DATA_TABLES, DERIVED_TABLES

    out: dict[str, tuple[int, int]] = {}
    for table in [*DATA_TABLES, *DERIVED_TABLES]:
        n, h = con.execute(f"SELECT count(*), coalesce(sum(hash(t)::HUGEINT), 0) FROM {table} t").fetchone() or (0, 0)
        out[table] = (int(n), int(h))
    return out


async def replay_equal(js: Any, ledger_db: Path, scratch: Path) -> bool:
    """Whether the ledger file (closed) equals a fresh replay of the whole stream, table by table."""
    from ledger.replay import replay_stream
    from ledger.schema import connect_db

    for p in (scratch, scratch.with_name(scratch.name + ".wal")):
        p.unlink(missing_ok=True)
    con = connect_db(str(scratch))
    try:
        await replay_stream(js, con)
        fresh = table_fingerprints(con)
    finally:
        con.close()
        for p in (scratch, scratch.with_name(scratch.name + ".wal")):
            p.unlink(missing_ok=True)
    live = connect_db(str(ledger_db), read_only=True)
    try:
        return table_fingerprints(live) == fresh
    finally:
        live.close()

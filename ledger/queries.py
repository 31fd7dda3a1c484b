"""The read API's queries, as plain functions over a DuckDB cursor (run in a worker thread).

Each takes a cursor of the projector's connection, so it reads the last committed snapshot while the
projector keeps writing.
"""

from __future__ import annotations

import datetime
import decimal
import threading
import uuid
from typing import Any

import duckdb
import msgspec

from bus import events as ev
from ledger.errors import QueryError

MAX_SQL_ROWS = 10_000
MAX_SQL_SECONDS = 30.0

_EXP_COLS = [f.name for f in msgspec.structs.fields(ev.ExperimentRow)]
_EXP_SELECT = ", ".join(_EXP_COLS)
_json_dict = msgspec.json.Decoder(dict[str, Any])


def _exp_rows(
    cur: duckdb.DuckDBPyConnection, where: str, params: list[Any], tail: str = ""
) -> list[ev.ExperimentRow]:
    rows = cur.execute(f"SELECT {_EXP_SELECT} FROM experiments WHERE {where} {tail}", params).fetchall()
    out = []
    for r in rows:
        d = dict(zip(_EXP_COLS, r, strict=True))
        d["knobs"] = _json_dict.decode(d["knobs"]) if d["knobs"] else {}
        d["tags"] = d["tags"] or []
        for k in ("model", "parent", "description", "tier", "hw_class", "train_py_sha256"):
            d[k] = d[k] if d[k] is not None else ""
        out.append(ev.ExperimentRow(**d))
    return out


def best(cur: duckdb.DuckDBPyConnection, run: str, hw_class: str | None = None) -> list[ev.BestRow]:
    """Best ok val_bpb per class; among equal values the earliest finished. The minimum is found on
    the narrow columns first, then its one row is looked up (by finished_seq, a stream sequence)."""
    params: list[Any] = [run]
    cls = ""
    if hw_class is not None:
        cls = " AND ran_on = $2"
        params.append(hw_class)
    rows = cur.execute(
        f"""WITH b AS (
                SELECT ran_on, min(val_bpb) AS val_bpb, arg_min(finished_seq, (val_bpb, finished_seq)) AS seq
                FROM experiments WHERE run = $1 AND status = 'ok' AND val_bpb IS NOT NULL{cls} GROUP BY ran_on
            )
            SELECT b.ran_on, b.val_bpb, x.hypothesis_id, x.agent, x.description, x.finished_ts
            FROM b JOIN experiments x ON x.run = $1 AND x.finished_seq = b.seq ORDER BY b.ran_on""",
        params,
    ).fetchall()
    return [
        ev.BestRow(hw_class=r[0], val_bpb=r[1], hypothesis_id=r[2], agent=r[3], description=r[4] or "",
                   finished_ts=r[5] or 0.0)
        for r in rows
    ]  # fmt: skip


def recent(
    cur: duckdb.DuckDBPyConnection, run: str, limit: int = 20, agent: str | None = None,
    since_ts: float | None = None,
) -> list[ev.ExperimentRow]:  # fmt: skip
    where = "run = $1 AND status IS NOT NULL"
    params: list[Any] = [run]
    if agent is not None:
        params.append(agent)
        where += f" AND agent = ${len(params)}"
    if since_ts is not None:
        params.append(since_ts)
        where += f" AND finished_ts > ${len(params)}"
    return _exp_rows(cur, where, params, f"ORDER BY finished_seq DESC LIMIT {max(0, min(int(limit), 1000))}")


def notes(
    cur: duckdb.DuckDBPyConnection, run: str, since_ts: float = 0.0, limit: int = 50
) -> list[ev.NoteRow]:
    rows = cur.execute(
        f"""SELECT note_id, agent, title, body, refs, ts FROM notes WHERE run = $1 AND ts > $2
            ORDER BY seq LIMIT {max(0, min(int(limit), 1000))}""",
        [run, since_ts],
    ).fetchall()
    return [ev.NoteRow(note_id=r[0], agent=r[1], title=r[2] or "", body=r[3] or "", refs=r[4] or [], ts=r[5])
            for r in rows]  # fmt: skip


def experiment(
    cur: duckdb.DuckDBPyConnection, run: str, hypothesis_id: str
) -> tuple[ev.ExperimentRow | None, list[dict[str, Any]]]:
    items = _exp_rows(cur, "run = $1 AND hypothesis_id = $2", [run, hypothesis_id])
    attempts = cur.execute(
        """SELECT 'claim' AS kind, seq, ts, attempt, runner, hw_class, NULL AS status, NULL AS val_bpb,
                NULL AS disposition, NULL AS reason
           FROM claims WHERE run = $1 AND hypothesis_id = $2
           UNION ALL
           SELECT 'finish', seq, ts, attempt, runner, hw_class, status, val_bpb, disposition, reason
           FROM results WHERE run = $1 AND hypothesis_id = $2
           ORDER BY seq""",
        [run, hypothesis_id],
    )
    names = [d[0] for d in attempts.description or []]
    return (items[0] if items else None), [dict(zip(names, r, strict=True)) for r in attempts.fetchall()]


def class_stats(cur: duckdb.DuckDBPyConnection, run: str) -> list[ev.ClassStats]:
    rows = cur.execute(
        """SELECT hw_class, baseline_runs, baseline_mean, sigma, runners_online FROM class_stats
           WHERE run = $1 ORDER BY hw_class""",
        [run],
    ).fetchall()
    return [ev.ClassStats(hw_class=r[0], baseline_runs=r[1], baseline_mean=r[2], sigma=r[3], runners_online=r[4])
            for r in rows]  # fmt: skip


def context(cur: duckdb.DuckDBPyConnection, req: ev.ContextRequest) -> ev.ContextReply:
    program = cur.execute(
        "SELECT program_md FROM programs WHERE run = $1 ORDER BY seq DESC LIMIT 1", [req.run]
    ).fetchone()
    counts = cur.execute(
        # pending: proposals (every HypothesisProposed row) of hypotheses with no result yet
        """SELECT (SELECT coalesce(sum(proposals) FILTER (WHERE status IS NULL), 0)::BIGINT
                   FROM experiment_state WHERE run = $1),
                  (SELECT count(*) FROM runners_online WHERE run = $1)""",
        [req.run],
    ).fetchone()
    assert counts is not None
    return ev.ContextReply(
        best=best(cur, req.run),
        recent=recent(cur, req.run, req.recent_limit),
        lineage=_exp_rows(cur, "run = $1 AND agent = $2 AND decision = 'keep'", [req.run, req.agent],
                          "ORDER BY finished_seq"),
        notes=notes(cur, req.run, req.notes_since_ts),
        stats=class_stats(cur, req.run),
        program_md=program[0] if program else None,
        pending=counts[0],
        runners_online=counts[1],
    )  # fmt: skip


def seen(cur: duckdb.DuckDBPyConnection, run: str, sha256s: list[str]) -> list[str]:
    if not sha256s:
        return []
    rows = cur.execute(
        """SELECT DISTINCT s FROM (SELECT unnest($2::VARCHAR[]) AS s) q
           WHERE s IN (SELECT train_py_sha256 FROM hypotheses WHERE run = $1)
              OR s IN (SELECT ast_sha256 FROM hypotheses WHERE run = $1 AND ast_sha256 <> '')""",
        [run, sha256s],
    ).fetchall()
    got = {r[0] for r in rows}
    return [s for s in dict.fromkeys(sha256s) if s in got]


def _plain(value: Any) -> Any:
    """A value msgpack can carry (DuckDB returns dates, decimals, UUIDs, nested lists/dicts)."""
    if value is None or isinstance(value, bool | int | float | str | bytes):
        return value
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, uuid.UUID | datetime.timedelta):
        return str(value)
    return str(value)


def check_select(sql: str) -> None:
    """Refuse anything but a single SELECT (WITH ... SELECT included), using DuckDB's own parser."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as e:
        raise QueryError(f"SQL does not parse: {e}") from e
    if len(statements) != 1:
        raise QueryError(f"send exactly one statement, got {len(statements)}")
    kind = statements[0].type
    if kind != duckdb.StatementType.SELECT:
        raise QueryError(f"only SELECT queries are allowed over the read API, got {kind.name}")


def sql(cur: duckdb.DuckDBPyConnection, query: str, limit: int = 1000, timeout: float = 5.0) -> ev.SqlReply:
    """Run one read-only SELECT with a row cap and a timeout (an interrupt from a timer thread)."""
    check_select(query)
    limit = max(0, min(int(limit), MAX_SQL_ROWS))
    timeout = max(0.01, min(float(timeout), MAX_SQL_SECONDS))
    timer = threading.Timer(timeout, cur.interrupt)
    timer.start()
    try:
        res = cur.execute(query)
        names = [d[0] for d in res.description or []]
        rows = res.fetchmany(limit + 1)
    except duckdb.InterruptException as e:
        raise QueryError(f"query interrupted after its {timeout:g}s timeout; add filters or a LIMIT") from e
    except duckdb.Error as e:
        raise QueryError(f"{type(e).__name__}: {e}") from e
    finally:
        timer.cancel()
    return ev.SqlReply(
        columns=names, rows=[[_plain(v) for v in r] for r in rows[:limit]], truncated=len(rows) > limit
    )


def agents(cur: duckdb.DuckDBPyConnection, run: str, problems: int = 5) -> list[ev.AgentRow]:
    """Every agent of the run (joined or left) with its counts, cost and ``problems`` latest problems
    (rejected proposals and failed LLM calls, newest first)."""
    rows = cur.execute(
        """WITH a AS (
                SELECT agent, arg_max(action, seq) AS action, arg_max(reason, seq) AS reason,
                       arg_max(provider, seq) FILTER (WHERE action = 'joined') AS provider,
                       arg_max(model, seq) FILTER (WHERE action = 'joined') AS model, min(ts) AS joined_ts
                FROM agents WHERE run = $1 GROUP BY agent
            ), h AS (SELECT agent, count(*) AS n FROM hypotheses WHERE run = $1 GROUP BY agent),
            r AS (SELECT agent, count(*) AS n FROM proposal_rejects WHERE run = $1 GROUP BY agent),
            u AS (SELECT agent, count(*) AS calls, count(*) FILTER (WHERE NOT ok) AS errors, sum(cost_usd) AS cost
                  FROM llm_usage WHERE run = $1 GROUP BY agent)
            SELECT a.agent, a.provider, a.model, a.action, a.reason, a.joined_ts, coalesce(h.n, 0),
                   coalesce(r.n, 0), coalesce(u.calls, 0), coalesce(u.errors, 0), coalesce(u.cost, 0)
            FROM a LEFT JOIN h USING (agent) LEFT JOIN r USING (agent) LEFT JOIN u USING (agent)
            ORDER BY a.agent""",
        [run],
    ).fetchall()
    found: dict[str, list[ev.ProblemRow]] = {}
    if problems > 0:
        for agent, ts, kind, text, desc in cur.execute(
            f"""SELECT agent, ts, kind, text, description FROM (
                    SELECT agent, seq, ts, 'rejected' AS kind, reason AS text, description FROM proposal_rejects
                    WHERE run = $1
                    UNION ALL
                    SELECT agent, seq, ts, 'llm_error', error, '' FROM llm_usage WHERE run = $1 AND NOT ok
                ) QUALIFY row_number() OVER (PARTITION BY agent ORDER BY seq DESC) <= {min(int(problems), 100)}
                ORDER BY agent, seq DESC""",
            [run],
        ).fetchall():
            found.setdefault(agent, []).append(
                ev.ProblemRow(ts=ts, kind=kind, text=text or "", description=desc or "")
            )
    return [
        ev.AgentRow(
            agent=r[0], provider=r[1] or "", model=r[2] or "", state="left" if r[3] == "left" else "active",
            reason=(r[4] or "") if r[3] == "left" else "", joined_ts=r[5] or 0.0, proposed=r[6], rejected=r[7],
            llm_calls=r[8], llm_errors=r[9], cost_usd=float(r[10]), problems=found.get(r[0], []),
        )
        for r in rows
    ]  # fmt: skip


# the most recent finished hypotheses the memory's effect table and dead ends read (bests and lineage
# are exact whatever the run's length; see bus.memory)
MEMORY_WINDOW = 5_000  # ~0.3 s of Python per request at this size (bus.memory), asked once per agent wave


def memory(cur: duckdb.DuckDBPyConnection, req: ev.MemoryRequest) -> ev.MemoryReply:
    """The shared memory of a run (:func:`bus.memory.build_memory`) from ``experiments``: every kept or
    in-flight hypothesis and the baselines, plus the latest ``MEMORY_WINDOW`` finished ones; diffs only for
    code edits (a knob change's content is its knob values) and for the lineage steps shown."""
    from bus.memory import MemRow, build_memory

    rows = cur.execute(
        f"""WITH x AS (
                SELECT * FROM experiment_state WHERE run = $1 AND proposals > 0
            ), w AS (
                SELECT hypothesis_id FROM x WHERE status IS NOT NULL ORDER BY finished_seq DESC
                LIMIT {MEMORY_WINDOW}
            ), b AS (
                SELECT knobs FROM x WHERE list_contains(tags, '{ev.BASELINE_TAG}') LIMIT 1
            ), chosen AS (
                SELECT * FROM x WHERE status IS NULL OR decision IS NOT NULL AND decision <> 'discard'
                    OR list_contains(tags, '{ev.BASELINE_TAG}') OR hypothesis_id IN (SELECT hypothesis_id FROM w)
            )
            SELECT c.hypothesis_id, c.agent, c.parent, c.description, c.tags, c.knobs, c.hw_class, c.tier, c.seed,
                   c.proposed_ts, c.status, c.val_bpb, c.ran_on, c.decision,
                   coalesce(c.runner, c.claims[-1].runner), coalesce(c.finished_seq, c.proposed_seq),
                   CASE WHEN c.knobs IS NOT DISTINCT FROM
                             (CASE WHEN c.parent = '{ev.BASELINE}' THEN (SELECT knobs FROM b) ELSE p.knobs END)
                        THEN (SELECT left(h.diff, 8000) FROM hypotheses h
                              WHERE h.run = $1 AND h.hypothesis_id = c.hypothesis_id LIMIT 1) END
            FROM chosen c LEFT JOIN x p ON p.hypothesis_id = c.parent""",
        [req.run],
    ).fetchall()
    mem = [
        MemRow(hypothesis_id=r[0], agent=r[1] or "", parent=r[2] or ev.BASELINE, description=r[3] or "",
               tags=r[4] or [], knobs=_json_dict.decode(r[5]) if r[5] else {}, hw_class=r[6] or "",
               tier=r[7] or "screen", seed=int(r[8] or 0), proposed_ts=r[9] or 0.0, status=r[10], val_bpb=r[11],
               ran_on=r[12] or "", decision=r[13], runner=r[14] or "", order=float(r[15] or 0), diff=r[16] or "")
        for r in rows
    ]  # fmt: skip
    notes = cur.execute(
        f"""SELECT note_id, agent, title, body, refs, ts FROM notes WHERE run = $1 AND (
                seq IN (SELECT max(seq) FROM notes WHERE run = $1 GROUP BY agent)
                OR seq IN (SELECT seq FROM notes WHERE run = $1 ORDER BY seq DESC LIMIT {max(0, min(int(req.notes), 100))}))
            ORDER BY seq""",
        [req.run],
    ).fetchall()
    note_rows = [ev.NoteRow(note_id=r[0], agent=r[1], title=r[2] or "", body=r[3] or "", refs=r[4] or [], ts=r[5])
                 for r in notes]  # fmt: skip

    def diff_of(hid: str) -> str:
        got = cur.execute("SELECT diff FROM hypotheses WHERE run = $1 AND hypothesis_id = $2 LIMIT 1",
                          [req.run, hid]).fetchone()  # fmt: skip
        return (got[0] or "") if got else ""

    return build_memory(mem, note_rows, req, diff_of)

"""The read API's queries for watching a run live (the dashboard, tools): the timeline of hypotheses since a
stream position, the run at a glance, one hypothesis in full, and agents head to head.

Plain functions over a DuckDB cursor of the projector's connection, like :mod:`ledger.queries`.
"""

from __future__ import annotations

import difflib

import duckdb
import msgspec

from bus import events as ev
from ledger.analysis.compare import compare as compare_groups
from ledger.queries import _exp_rows, class_stats

_TIMELINE_COLS = [
    "hypothesis_id", "agent", "seq", "model", "parent", "description", "tier", "hw_class", "tags", "proposed_ts",
    "status", "val_bpb", "reason", "finished_ts", "finished_seq", "runner", "ran_on", "attempts",
    "training_seconds", "total_seconds", "gpu_seconds", "decision",
]  # fmt: skip


TIMELINE_REPLY_BYTES = 512 * 1024  # items per timeline reply stop here; `more` says to ask again
TEXT_CLIP = 400
_encoder = msgspec.msgpack.Encoder()


def _clip(text: str) -> str:
    return text if len(text) <= TEXT_CLIP else text[: TEXT_CLIP - 1] + "…"


def run_seq(cur: duckdb.DuckDBPyConnection, run: str) -> int:
    """The stream sequence of the run's latest event of any kind (0 for none)."""
    row = cur.execute("SELECT coalesce(max(seq), 0) FROM events WHERE run = $1", [run]).fetchone()
    return int(row[0]) if row else 0


def timeline(cur: duckdb.DuckDBPyConnection, req: ev.TimelineRequest) -> ev.TimelineReply:
    """Hypotheses whose row changed after ``req.after_seq`` (``touched_seq``: the last stream sequence of any
    of its proposals, claims, finishes or decisions), oldest change first."""
    limit = max(1, min(int(req.limit), 10_000))
    rows = cur.execute(
        f"""WITH s AS (
                SELECT * FROM experiment_state WHERE run = $1 AND proposals > 0 AND touched_seq > $2
                ORDER BY touched_seq LIMIT {limit + 1}
            ), g AS (
                SELECT r.hypothesis_id, sum(r.total_seconds) AS secs FROM results r SEMI JOIN s USING (hypothesis_id)
                WHERE r.run = $1 AND r.disposition <> 'unclaimed' GROUP BY ALL
            )
            SELECT s.hypothesis_id, s.agent, s.touched_seq, s.model, s.parent, s.description, s.tier, s.hw_class,
                s.tags, s.proposed_ts, s.status, s.val_bpb, s.reason, s.finished_ts, s.finished_seq, s.runner,
                s.ran_on, s.attempts, s.training_seconds, s.total_seconds, coalesce(g.secs, 0.0), s.decision
            FROM s LEFT JOIN g USING (hypothesis_id) ORDER BY s.touched_seq""",
        [req.run, req.after_seq],
    ).fetchall()  # fmt: skip
    more = len(rows) > limit
    items: list[ev.TimelineRow] = []
    size = 0
    for r in rows[:limit]:
        d = dict(zip(_TIMELINE_COLS, r, strict=True))
        for k in ("model", "parent", "description", "tier", "hw_class", "reason"):
            d[k] = d[k] if d[k] is not None else ""
        # a live view shows the start of long texts; the hypothesis request has them whole
        d["description"], d["reason"] = _clip(d["description"]), _clip(d["reason"])
        d["tags"] = d["tags"] or []
        d["gpu_seconds"] = float(d["gpu_seconds"] or 0.0)
        row = ev.TimelineRow(**d)
        size += len(_encoder.encode(row))
        if items and size > TIMELINE_REPLY_BYTES:  # a reply must fit in one NATS message (1 MiB by default)
            more = True
            break
        items.append(row)
    last = items[-1].seq if items else req.after_seq
    return ev.TimelineReply(items=items, last_seq=last, run_seq=run_seq(cur, req.run), more=more)


def overview(cur: duckdb.DuckDBPyConnection, req: ev.OverviewRequest) -> ev.OverviewReply:
    """Counts, baselines, leaderboard, runners with what each runs now, and the oldest queued hypotheses."""
    run = req.run
    span = cur.execute(
        "SELECT min(ts), max(ts), coalesce(max(seq), 0) FROM events WHERE run = $1", [run]
    ).fetchone()
    counts = cur.execute(
        """SELECT count(*), count(*) FILTER (WHERE status IS NOT NULL), count(*) FILTER (WHERE status = 'ok'),
                count(*) FILTER (WHERE status IS NOT NULL AND status <> 'ok'), count(*) FILTER (WHERE decision = 'keep'),
                count(*) FILTER (WHERE status IS NULL)
           FROM experiments WHERE run = $1""",
        [run],
    ).fetchone()  # fmt: skip
    assert span is not None and counts is not None
    board = cur.execute(
        """SELECT hw_class, agent, rank, best_val_bpb, best_hypothesis, experiments, ok, keeps, crashes
           FROM leaderboard WHERE run = $1 ORDER BY hw_class, rank, agent""",
        [run],
    ).fetchall()
    queue = cur.execute(
        f"""SELECT hypothesis_id, agent, description, hw_class, tier, proposed_ts, attempts,
                coalesce(claims[-1].runner, '') AS runner
            FROM experiment_state WHERE run = $1 AND proposals > 0 AND status IS NULL
            ORDER BY proposed_seq LIMIT {max(0, min(int(req.queue_limit), 1000))}""",
        [run],
    ).fetchall()
    program = cur.execute(
        "SELECT program_md FROM programs WHERE run = $1 ORDER BY seq DESC LIMIT 1", [run]
    ).fetchone()
    return ev.OverviewReply(
        run_seq=int(span[2]), first_ts=span[0], last_ts=span[1],
        counts=dict(zip(["proposed", "finished", "ok", "failed", "kept", "queued"], map(int, counts), strict=True)),
        stats=class_stats(cur, run),
        leaderboard=[ev.LeaderRow(hw_class=r[0] or "", agent=r[1], rank=int(r[2]), best_val_bpb=r[3],
                                  best_hypothesis=r[4], experiments=r[5], ok=r[6], keeps=r[7], crashes=r[8])
                     for r in board],
        runners=runners(cur, run),
        queue=[ev.QueueRow(hypothesis_id=r[0], agent=r[1] or "", description=r[2] or "", hw_class=r[3] or "",
                           tier=r[4] or "screen", proposed_ts=r[5] or 0.0, attempts=int(r[6] or 0), runner=r[7])
               for r in queue],
        program_md=program[0] if program else None,
    )  # fmt: skip


def runners(cur: duckdb.DuckDBPyConnection, run: str) -> list[ev.RunnerRow]:
    """Every runner that joined or finished anything: online or not, its busy figures, and the hypothesis it
    holds now (its latest claim that it has not finished and nobody finished since)."""
    rows = cur.execute(
        """WITH j AS (
                SELECT runner, arg_max(action, seq) AS action, arg_max(reason, seq) AS reason,
                    arg_max(hw_class, seq) FILTER (WHERE action = 'joined') AS hw_class,
                    arg_max(executor, seq) FILTER (WHERE action = 'joined') AS executor,
                    arg_max(hardware, seq) FILTER (WHERE action = 'joined') AS hardware,
                    min(ts) FILTER (WHERE action = 'joined') AS joined_ts
                FROM runners WHERE run = $1 GROUP BY runner
            ), r AS (
                SELECT runner, count(*) AS n, sum(training_seconds) AS train, sum(total_seconds) AS total,
                    max(ts) AS last_ts, min(ts) AS first_ts, arg_max(hw_class, seq) AS hw_class
                FROM results WHERE run = $1 AND disposition <> 'unclaimed' GROUP BY runner
            ), c AS (
                SELECT runner, arg_max(hypothesis_id, seq) AS hid, arg_max(attempt, seq) AS attempt,
                    max(seq) AS seq, arg_max(ts, seq) AS ts, min(ts) AS first_ts
                FROM claims WHERE run = $1 GROUP BY runner
            ), open_claim AS (
                SELECT c.* FROM c WHERE NOT EXISTS (
                    SELECT 1 FROM results x WHERE x.run = $1 AND x.hypothesis_id = c.hid AND x.seq > c.seq)
            ), names AS (SELECT runner FROM j UNION SELECT runner FROM r UNION SELECT runner FROM c)
            SELECT names.runner, coalesce(j.hw_class, r.hw_class, ''), coalesce(j.action, 'joined') = 'joined',
                coalesce(j.executor, ''), j.hardware, coalesce(j.joined_ts, c.first_ts, r.first_ts, 0.0),
                CASE WHEN j.action = 'left' THEN coalesce(j.reason, '') ELSE '' END,
                coalesce(r.n, 0), coalesce(r.train, 0.0), coalesce(r.total, 0.0), r.last_ts,
                coalesce(o.hid, ''), coalesce(o.attempt, 0), o.ts
            FROM names LEFT JOIN j USING (runner) LEFT JOIN r USING (runner) LEFT JOIN c USING (runner)
            LEFT JOIN open_claim o USING (runner)
            ORDER BY names.runner""",
        [run],
    ).fetchall()
    out = []
    for r in rows:
        hw = _hardware(r[4])
        online = bool(r[2])
        out.append(ev.RunnerRow(
            runner=r[0], hw_class=r[1], online=online, executor=r[3], host=hw.host if hw else "",
            gpu_name=hw.gpu_name if hw else "", joined_ts=float(r[5] or 0.0), left_reason=r[6],
            results=int(r[7]), training_seconds=float(r[8]), total_seconds=float(r[9]), last_finish_ts=r[10],
            current_hypothesis=r[11] if online else "", current_attempt=int(r[12]) if online else 0,
            current_since=r[13] if online else None,
        ))  # fmt: skip
    return out


def _hardware(text: str | None) -> ev.Hardware | None:
    try:
        return msgspec.json.decode(text, type=ev.Hardware) if text else None
    except msgspec.DecodeError:  # a display detail: a row from an older schema must not fail the overview
        return None


def hypothesis(cur: duckdb.DuckDBPyConnection, run: str, hypothesis_id: str) -> ev.HypothesisReply:
    """One hypothesis in full; its diff is recomputed against its parent's train.py when the ledger has it
    (a baseline parent: the run's baseline-tagged train.py), else it is the diff as proposed."""
    items = _exp_rows(cur, "run = $1 AND hypothesis_id = $2", [run, hypothesis_id])
    if not items:
        return ev.HypothesisReply(item=None)
    item = items[0]
    h = cur.execute(
        """SELECT train_py, diff, rationale FROM hypotheses WHERE run = $1 AND hypothesis_id = $2
           ORDER BY seq LIMIT 1""",
        [run, hypothesis_id],
    ).fetchone()
    train_py, proposed_diff, rationale = h or ("", "", "")
    if item.parent and item.parent != ev.BASELINE:
        parent = cur.execute(
            "SELECT train_py FROM hypotheses WHERE run = $1 AND hypothesis_id = $2 ORDER BY seq LIMIT 1",
            [run, item.parent],
        ).fetchone()
    else:
        parent = cur.execute(
            f"""SELECT train_py FROM hypotheses WHERE run = $1 AND list_contains(tags, '{ev.BASELINE_TAG}')
               ORDER BY seq LIMIT 1""",
            [run],
        ).fetchone()
    if parent and parent[0] is not None and train_py is not None:
        diff = "".join(difflib.unified_diff(parent[0].splitlines(True), train_py.splitlines(True),
                                            f"a/train.py ({item.parent})", f"b/train.py ({hypothesis_id})"))  # fmt: skip
        base = item.parent or ev.BASELINE
    else:
        diff, base = proposed_diff or "", "as proposed"
    attempts = cur.execute(
        """SELECT 'claim' AS kind, seq, ts, attempt, runner, coalesce(hw_class, ''), NULL, NULL, NULL, '', '', '',
                NULL, NULL, NULL
           FROM claims WHERE run = $1 AND hypothesis_id = $2
           UNION ALL
           SELECT 'finish', seq, ts, attempt, runner, coalesce(hw_class, ''), status, val_bpb, disposition,
                coalesce(reason, ''), coalesce(log_ref, ''), coalesce(log_tail, ''), training_seconds,
                total_seconds, num_steps
           FROM results WHERE run = $1 AND hypothesis_id = $2
           ORDER BY seq""",
        [run, hypothesis_id],
    ).fetchall()
    names = [f.name for f in msgspec.structs.fields(ev.AttemptRow)]
    decisions = cur.execute(
        """SELECT ts, decision, coalesce("by", ''), coalesce(reason, ''), val_bpb, reference_val_bpb, sigma
           FROM decisions WHERE run = $1 AND hypothesis_id = $2 ORDER BY seq""",
        [run, hypothesis_id],
    ).fetchall()
    children = cur.execute(
        """SELECT DISTINCT hypothesis_id, min(seq) AS s FROM hypotheses WHERE run = $1 AND parent = $2
           GROUP BY hypothesis_id ORDER BY s LIMIT 200""",
        [run, hypothesis_id],
    ).fetchall()
    return ev.HypothesisReply(
        item=item, rationale=rationale or "", train_py=train_py or "", diff=diff, diff_base=base,
        attempts=[ev.AttemptRow(**dict(zip(names, a, strict=True))) for a in attempts],
        decisions=[ev.DecisionRow(ts=d[0], decision=d[1], by=d[2], reason=d[3], val_bpb=d[4],
                                  reference_val_bpb=d[5], sigma=d[6]) for d in decisions],
        children=[c[0] for c in children],
    )  # fmt: skip


def compare(cur: duckdb.DuckDBPyConnection, req: ev.CompareRequest) -> ev.CompareReply:
    """``swarm compare`` over the read API (the same definitions: :mod:`ledger.analysis.compare`)."""
    result = compare_groups(cur, runs=list(req.runs) or [req.run], by=req.by)
    return ev.CompareReply(result=result.to_dict())

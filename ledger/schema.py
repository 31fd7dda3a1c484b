"""The ledger's DuckDB schema: one table per event family, raw events, rejects, tracking position, views.

Every projected table starts with the envelope columns ``seq`` (JetStream stream sequence), ``event_id``
(primary key of ``events``), ``run``, ``source``, ``ts``. Structured fields
(knobs, hardware, calibration, config) are JSON text in VARCHAR columns: the JSON type needs an
extension, and the projector runs with external access (and so extension loading) switched off.

Dispositions of ``results`` (see :data:`DISPOSITION_SQL`), decided from stream order alone so that a
replay equals the live projection:

* ``unclaimed``: no ExperimentClaimed with the same run/hypothesis_id/attempt/runner earlier in the
  stream (a ``lost`` finish from the dead-letter path needs no claim). Refused, never a result.
* ``late``: the runner said so (``late=True``), or a claim of a *higher* attempt of the hypothesis came
  earlier in the stream: that lease was superseded, so this runner no longer held the work item.
* ``result``: the first (by stream order) remaining finish of the hypothesis.
* ``duplicate``: any remaining finish after the hypothesis already has its result.
"""

from __future__ import annotations

import duckdb

SCHEMA_VERSION = 1

_ENVELOPE = "seq BIGINT NOT NULL, event_id VARCHAR NOT NULL, run VARCHAR NOT NULL, source VARCHAR NOT NULL, ts DOUBLE NOT NULL"

TABLES: dict[str, str] = {
    "events": """
        seq BIGINT NOT NULL, event_id VARCHAR NOT NULL PRIMARY KEY, type VARCHAR NOT NULL,
        run VARCHAR NOT NULL, source VARCHAR NOT NULL, ts DOUBLE NOT NULL, schema_version INTEGER NOT NULL,
        subject VARCHAR NOT NULL, data BLOB NOT NULL""",
    "hypotheses": f"""{_ENVELOPE},
        hypothesis_id VARCHAR NOT NULL, agent VARCHAR NOT NULL, model VARCHAR, parent VARCHAR,
        train_py VARCHAR, train_py_sha256 VARCHAR, ast_sha256 VARCHAR, diff VARCHAR, description VARCHAR,
        rationale VARCHAR, tier VARCHAR, hw_class VARCHAR, seed BIGINT, budget_seconds DOUBLE,
        tags VARCHAR[], knobs VARCHAR""",
    "claims": f"""{_ENVELOPE},
        hypothesis_id VARCHAR NOT NULL, attempt INTEGER NOT NULL, runner VARCHAR NOT NULL,
        hw_class VARCHAR, hardware VARCHAR, stream_seq BIGINT""",
    "results": f"""{_ENVELOPE},
        hypothesis_id VARCHAR NOT NULL, attempt INTEGER NOT NULL, runner VARCHAR NOT NULL,
        status VARCHAR NOT NULL, val_bpb DOUBLE, reported_val_bpb DOUBLE, training_seconds DOUBLE,
        total_seconds DOUBLE, num_steps BIGINT, tokens BIGINT, num_params BIGINT, peak_vram_mb DOUBLE,
        mfu DOUBLE, reason VARCHAR, log_tail VARCHAR, log_ref VARCHAR, hw_class VARCHAR,
        train_py_sha256 VARCHAR, dataset_fingerprint VARCHAR, tokenizer_fingerprint VARCHAR,
        budget_seconds DOUBLE, late BOOLEAN, disposition VARCHAR""",
    "decisions": f"""{_ENVELOPE},
        hypothesis_id VARCHAR NOT NULL, decision VARCHAR NOT NULL, "by" VARCHAR, reason VARCHAR,
        val_bpb DOUBLE, reference_val_bpb DOUBLE, sigma DOUBLE""",
    "notes": f"""{_ENVELOPE},
        note_id VARCHAR NOT NULL, agent VARCHAR NOT NULL, title VARCHAR, body VARCHAR, refs VARCHAR[]""",
    "agents": f"""{_ENVELOPE},
        agent VARCHAR NOT NULL, action VARCHAR NOT NULL, provider VARCHAR, model VARCHAR,
        strategy VARCHAR, config VARCHAR, reason VARCHAR""",
    "runners": f"""{_ENVELOPE},
        runner VARCHAR NOT NULL, action VARCHAR NOT NULL, hw_class VARCHAR, hardware VARCHAR,
        classes VARCHAR[], executor VARCHAR, calibration VARCHAR, steps_per_second DOUBLE, reason VARCHAR""",
    "llm_usage": f"""{_ENVELOPE},
        agent VARCHAR, provider VARCHAR, model VARCHAR, input_tokens BIGINT, output_tokens BIGINT,
        cost_usd DOUBLE, latency_seconds DOUBLE, ok BOOLEAN, error VARCHAR, hypothesis_ids VARCHAR[]""",
    "proposal_rejects": f"""{_ENVELOPE},
        agent VARCHAR, reason VARCHAR, description VARCHAR, excerpt VARCHAR""",
    "programs": f"""{_ENVELOPE},
        program_md VARCHAR, "by" VARCHAR""",
    "rejects": """
        seq BIGINT NOT NULL PRIMARY KEY, subject VARCHAR NOT NULL, reason VARCHAR NOT NULL,
        data BLOB NOT NULL, ts DOUBLE NOT NULL""",
    "projector_state": """
        consumer VARCHAR NOT NULL PRIMARY KEY, last_seq BIGINT NOT NULL, updated DOUBLE NOT NULL""",
}

# Tables filled from events (everything but the tracking position); export and replay use this list.
DATA_TABLES = [t for t in TABLES if t != "projector_state"]

VIEWS: dict[str, str] = {
    # One row per hypothesis (its first proposal): the first 'result' finish, attempt count, latest decision.
    "experiments": """
        WITH h AS (
            SELECT * FROM hypotheses QUALIFY row_number() OVER (PARTITION BY run, hypothesis_id ORDER BY seq) = 1
        ), r AS (
            SELECT * FROM results WHERE disposition = 'result'
        ), a AS (
            SELECT run, hypothesis_id, count(DISTINCT attempt) AS attempts FROM claims GROUP BY run, hypothesis_id
        ), d AS (
            SELECT run, hypothesis_id, decision FROM decisions
            QUALIFY row_number() OVER (PARTITION BY run, hypothesis_id ORDER BY seq DESC) = 1
        ), c AS (
            SELECT run, hypothesis_id, attempt, runner, any_value(hw_class) AS hw_class FROM claims
            GROUP BY run, hypothesis_id, attempt, runner
        )
        SELECT h.run, h.hypothesis_id, h.agent, h.model, h.parent, h.description, h.tier, h.hw_class,
            h.ts AS proposed_ts, h.seq AS proposed_seq,
            r.status, r.val_bpb, r.ts AS finished_ts, r.seq AS finished_seq, r.runner,
            coalesce(nullif(r.hw_class, ''), c.hw_class, CASE WHEN r.status IS NOT NULL THEN h.hw_class END) AS ran_on,
            r.attempt, coalesce(a.attempts, 0) AS attempts, r.training_seconds, r.total_seconds,
            coalesce(r.reason, '') AS reason, coalesce(r.log_tail, '') AS log_tail, d.decision,
            h.train_py_sha256, h.ast_sha256, h.tags, h.knobs, h.seed
        FROM h
        LEFT JOIN r ON r.run = h.run AND r.hypothesis_id = h.hypothesis_id
        LEFT JOIN a ON a.run = h.run AND a.hypothesis_id = h.hypothesis_id
        LEFT JOIN d ON d.run = h.run AND d.hypothesis_id = h.hypothesis_id
        LEFT JOIN c ON c.run = r.run AND c.hypothesis_id = r.hypothesis_id AND c.attempt = r.attempt
            AND c.runner = r.runner
    """,
    # Each ok result that improved its agent's best val_bpb on that hardware class, in stream order.
    "frontier": """
        SELECT run, agent, hw_class, hypothesis_id, val_bpb, finished_ts, finished_seq,
            prev_best, row_number() OVER (PARTITION BY run, agent, hw_class ORDER BY finished_seq) AS step
        FROM (
            SELECT run, agent, ran_on AS hw_class, hypothesis_id, val_bpb, finished_ts, finished_seq,
                min(val_bpb) OVER (PARTITION BY run, agent, ran_on ORDER BY finished_seq
                                   ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS prev_best
            FROM experiments WHERE status = 'ok' AND val_bpb IS NOT NULL
        ) WHERE prev_best IS NULL OR val_bpb < prev_best
    """,
    # Per run and class: agents ranked by best ok val_bpb. crashes = finished with any status but ok.
    "leaderboard": """
        SELECT run, hw_class, agent, best_val_bpb, best_hypothesis, experiments, ok, keeps, crashes,
            rank() OVER (PARTITION BY run, hw_class ORDER BY best_val_bpb ASC NULLS LAST) AS rank
        FROM (
            SELECT run, ran_on AS hw_class, agent,
                min(val_bpb) FILTER (WHERE status = 'ok') AS best_val_bpb,
                arg_min(hypothesis_id, val_bpb) FILTER (WHERE status = 'ok' AND val_bpb IS NOT NULL) AS best_hypothesis,
                count(*) AS experiments,
                count(*) FILTER (WHERE status = 'ok') AS ok,
                count(*) FILTER (WHERE decision = 'keep') AS keeps,
                count(*) FILTER (WHERE status <> 'ok') AS crashes
            FROM experiments WHERE status IS NOT NULL
            GROUP BY run, ran_on, agent
        )
    """,
    # Runners whose latest join/leave event is a join.
    "runners_online": """
        SELECT * EXCLUDE (action) FROM runners
        QUALIFY row_number() OVER (PARTITION BY run, runner ORDER BY seq DESC) = 1 AND action = 'joined'
    """,
    # Per run and class: repeated unmodified baselines (hypotheses tagged 'baseline', ok results).
    "class_stats": """
        WITH b AS (
            SELECT run, ran_on AS hw_class, count(*) AS baseline_runs, avg(val_bpb) AS baseline_mean,
                stddev_samp(val_bpb) AS sigma
            FROM experiments
            WHERE status = 'ok' AND val_bpb IS NOT NULL AND list_contains(tags, 'baseline')
            GROUP BY run, ran_on
        ), ro AS (
            SELECT run, hw_class, count(*) AS runners_online FROM runners_online GROUP BY run, hw_class
        ), k AS (
            SELECT run, hw_class FROM b UNION SELECT run, hw_class FROM ro
        )
        SELECT k.run, k.hw_class, coalesce(b.baseline_runs, 0) AS baseline_runs, b.baseline_mean, b.sigma,
            coalesce(ro.runners_online, 0) AS runners_online
        FROM k
        LEFT JOIN b ON b.run = k.run AND b.hw_class = k.hw_class
        LEFT JOIN ro ON ro.run = k.run AND ro.hw_class = k.hw_class
    """,
}

# Give a disposition to every results row that has none yet (the rows of the batch being applied),
# from stream order alone. Runs inside the batch's transaction, after its claims are inserted.
DISPOSITION_SQL = """
UPDATE results SET disposition = d.disposition FROM (
    WITH n AS (
        SELECT event_id, seq, run, hypothesis_id, attempt, runner, status, late
        FROM results WHERE disposition IS NULL
    ), cl AS (
        SELECT c.run, c.hypothesis_id, c.attempt, c.runner, c.seq FROM claims c
        SEMI JOIN n ON c.run = n.run AND c.hypothesis_id = n.hypothesis_id
    ), f AS (
        SELECT n.*,
            n.status = 'lost' OR EXISTS (
                SELECT 1 FROM cl WHERE cl.run = n.run AND cl.hypothesis_id = n.hypothesis_id
                AND cl.attempt = n.attempt AND cl.runner = n.runner AND cl.seq < n.seq) AS claimed,
            n.late OR EXISTS (
                SELECT 1 FROM cl WHERE cl.run = n.run AND cl.hypothesis_id = n.hypothesis_id
                AND cl.attempt > n.attempt AND cl.seq < n.seq) AS superseded
        FROM n
    ), g AS (
        SELECT *, CASE WHEN NOT claimed THEN 'unclaimed' WHEN superseded THEN 'late' END AS refused FROM f
    ), ranked AS (
        SELECT *, row_number() OVER (PARTITION BY run, hypothesis_id, refused IS NULL ORDER BY seq) AS rn FROM g
    ), done AS (
        SELECT DISTINCT r.run, r.hypothesis_id FROM results r
        SEMI JOIN n ON r.run = n.run AND r.hypothesis_id = n.hypothesis_id
        WHERE r.disposition = 'result'
    )
    SELECT ranked.event_id,
        CASE WHEN refused IS NOT NULL THEN refused
             WHEN rn = 1 AND done.hypothesis_id IS NULL THEN 'result'
             ELSE 'duplicate' END AS disposition
    FROM ranked LEFT JOIN done ON done.run = ranked.run AND done.hypothesis_id = ranked.hypothesis_id
) d
WHERE results.event_id = d.event_id
"""


def create_schema(con: duckdb.DuckDBPyConnection) -> None:
    """Create every table and view if missing. Idempotent."""
    for name, cols in TABLES.items():
        con.execute(f"CREATE TABLE IF NOT EXISTS {name} ({cols})")
    for name, body in VIEWS.items():
        con.execute(f"CREATE OR REPLACE VIEW {name} AS {body}")


def columns(con: duckdb.DuckDBPyConnection, table: str) -> list[str]:
    """Column names of a table or view, in order."""
    return [r[0] for r in con.execute(f"DESCRIBE {table}").fetchall()]


def connect_db(path: str, *, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """Open the ledger's DuckDB file with external access switched off and the configuration locked,
    so no query (not even SQL from the read API) can read or write the host's files."""
    con = duckdb.connect(
        path,
        read_only=read_only,
        config={"enable_external_access": False, "autoinstall_known_extensions": False,
                "autoload_known_extensions": False, "lock_configuration": True},
    )  # fmt: skip
    if not read_only:
        create_schema(con)
    return con

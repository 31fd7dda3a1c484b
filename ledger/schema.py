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

``experiments`` (one row per hypothesis) is a view over ``experiment_state``, a table the projector keeps
up to date in each batch's transaction (see :data:`DERIVED_TABLES`), so the read API's queries do not
recompute every hypothesis's windows and joins on each call. ``frontier``, ``leaderboard``,
``class_stats`` and ``runners_online`` are views as before, with the same names and columns.
"""

from __future__ import annotations

import os

import duckdb

from bus.events import BASELINE_TAG

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

# The public columns of ``experiments`` (one row per hypothesis), in order.
EXPERIMENT_COLUMNS = [
    "run", "hypothesis_id", "agent", "model", "parent", "description", "tier", "hw_class", "proposed_ts",
    "proposed_seq", "status", "val_bpb", "finished_ts", "finished_seq", "runner", "ran_on", "attempt", "attempts",
    "training_seconds", "total_seconds", "reason", "log_tail", "decision", "train_py_sha256", "ast_sha256", "tags",
    "knobs", "seed", "log_ref",
]  # fmt: skip

# Tables the projector derives from the data tables in the same transaction as each batch (not exported
# or compared: a replay rebuilds them). ``experiment_state`` is ``experiments`` materialised: one row per
# (run, hypothesis_id) that any proposal, claim, finish or decision names, plus what keeps it up to date
# from each batch alone (see :func:`ledger.projection.apply`): ``proposals`` (HypothesisProposed rows; 0
# for a hypothesis never proposed, which ``experiments`` leaves out), ``claims`` (every claim, in stream
# order), ``result_hw_class`` (the hw_class its result reported) and ``touched_seq`` (the last stream
# sequence of any of its rows).
DERIVED_TABLES: dict[str, str] = {
    "experiment_state": """
        run VARCHAR NOT NULL, hypothesis_id VARCHAR NOT NULL, agent VARCHAR, model VARCHAR, parent VARCHAR,
        description VARCHAR, tier VARCHAR, hw_class VARCHAR, proposed_ts DOUBLE, proposed_seq BIGINT,
        status VARCHAR, val_bpb DOUBLE, finished_ts DOUBLE, finished_seq BIGINT, runner VARCHAR, ran_on VARCHAR,
        attempt INTEGER, attempts BIGINT, training_seconds DOUBLE, total_seconds DOUBLE, reason VARCHAR,
        log_tail VARCHAR, decision VARCHAR, train_py_sha256 VARCHAR, ast_sha256 VARCHAR, tags VARCHAR[],
        knobs VARCHAR, seed BIGINT, log_ref VARCHAR, proposals BIGINT NOT NULL,
        claims STRUCT(attempt INTEGER, runner VARCHAR, seq BIGINT, hw_class VARCHAR)[],
        result_hw_class VARCHAR, touched_seq BIGINT NOT NULL""",
}

# The rows of ``experiment_state`` for the (run, hypothesis_id) keys of the relation ``{keys}``, computed
# from the data tables (each cut down to those keys first). The reference definition: the projector's
# incremental path (:func:`ledger.state._merge_experiments`) must give the same rows. The hardware
# class of a claim is that of its first claim row (deterministic, so replay equals live).
EXPERIMENT_STATE_SQL = """
WITH k AS (
    SELECT DISTINCT run, hypothesis_id FROM {keys}
), hx AS (
    SELECT x.* FROM hypotheses x SEMI JOIN k ON x.run = k.run AND x.hypothesis_id = k.hypothesis_id
), h AS (
    SELECT *, count(*) OVER (PARTITION BY run, hypothesis_id) AS proposals FROM hx
    QUALIFY row_number() OVER (PARTITION BY run, hypothesis_id ORDER BY seq) = 1
), rs AS (
    SELECT x.* FROM results x SEMI JOIN k ON x.run = k.run AND x.hypothesis_id = k.hypothesis_id
), r AS (
    SELECT * FROM rs WHERE disposition = 'result'
), cl AS (
    SELECT x.run, x.hypothesis_id, x.attempt, x.runner, x.hw_class, x.seq
    FROM claims x SEMI JOIN k ON x.run = k.run AND x.hypothesis_id = k.hypothesis_id
), a AS (
    SELECT run, hypothesis_id, count(DISTINCT attempt) AS attempts,
        list({{'attempt': attempt, 'runner': runner, 'seq': seq, 'hw_class': hw_class}} ORDER BY seq) AS claims
    FROM cl GROUP BY run, hypothesis_id
), dx AS (
    SELECT x.run, x.hypothesis_id, x.decision, x.seq
    FROM decisions x SEMI JOIN k ON x.run = k.run AND x.hypothesis_id = k.hypothesis_id
), d AS (
    SELECT run, hypothesis_id, decision FROM dx
    QUALIFY row_number() OVER (PARTITION BY run, hypothesis_id ORDER BY seq DESC) = 1
), c AS (
    SELECT run, hypothesis_id, attempt, runner, arg_min(hw_class, seq) AS hw_class FROM cl
    GROUP BY run, hypothesis_id, attempt, runner
), t AS (
    SELECT run, hypothesis_id, max(seq) AS touched_seq FROM (
        SELECT run, hypothesis_id, seq FROM hx UNION ALL SELECT run, hypothesis_id, seq FROM rs
        UNION ALL SELECT run, hypothesis_id, seq FROM cl UNION ALL SELECT run, hypothesis_id, seq FROM dx
    ) GROUP BY run, hypothesis_id
)
SELECT k.run, k.hypothesis_id, h.agent, h.model, h.parent, h.description, h.tier, h.hw_class,
    h.ts AS proposed_ts, h.seq AS proposed_seq,
    r.status, r.val_bpb, r.ts AS finished_ts, r.seq AS finished_seq, r.runner,
    coalesce(nullif(r.hw_class, ''), c.hw_class, CASE WHEN r.status IS NOT NULL THEN h.hw_class END) AS ran_on,
    r.attempt, coalesce(a.attempts, 0) AS attempts, r.training_seconds, r.total_seconds,
    coalesce(r.reason, '') AS reason, coalesce(r.log_tail, '') AS log_tail, d.decision,
    h.train_py_sha256, h.ast_sha256, h.tags, h.knobs, h.seed, coalesce(r.log_ref, '') AS log_ref,
    coalesce(h.proposals, 0) AS proposals, coalesce(a.claims, []) AS claims, r.hw_class AS result_hw_class,
    t.touched_seq
FROM k
JOIN t ON t.run = k.run AND t.hypothesis_id = k.hypothesis_id
LEFT JOIN h ON h.run = k.run AND h.hypothesis_id = k.hypothesis_id
LEFT JOIN r ON r.run = k.run AND r.hypothesis_id = k.hypothesis_id
LEFT JOIN a ON a.run = k.run AND a.hypothesis_id = k.hypothesis_id
LEFT JOIN d ON d.run = k.run AND d.hypothesis_id = k.hypothesis_id
LEFT JOIN c ON c.run = r.run AND c.hypothesis_id = r.hypothesis_id AND c.attempt = r.attempt
    AND c.runner = r.runner
"""

# Every key the data tables name (to fill experiment_state from scratch).
ALL_KEYS_SQL = """(
    SELECT run, hypothesis_id FROM hypotheses UNION SELECT run, hypothesis_id FROM claims
    UNION SELECT run, hypothesis_id FROM results UNION SELECT run, hypothesis_id FROM decisions)"""


def delete_experiments(con: duckdb.DuckDBPyConnection, keys: str) -> None:
    """Delete the ``experiment_state`` rows of the (run, hypothesis_id) pairs in relation ``keys``."""
    con.execute(
        f"DELETE FROM experiment_state e USING (SELECT DISTINCT run, hypothesis_id FROM {keys}) k "
        "WHERE e.run = k.run AND e.hypothesis_id = k.hypothesis_id"
    )


def refresh_experiments(con: duckdb.DuckDBPyConnection, keys: str) -> None:
    """Recompute the ``experiment_state`` rows of the (run, hypothesis_id) pairs in relation ``keys``
    (a table, view or registered Arrow table) from the data tables. Call inside a transaction."""
    delete_experiments(con, keys)
    con.execute("INSERT INTO experiment_state " + EXPERIMENT_STATE_SQL.format(keys=keys))


VIEWS: dict[str, str] = {
    # One row per hypothesis (its first proposal): the first 'result' finish, attempt count, latest decision.
    # Kept as a table by the projector (see EXPERIMENT_STATE_SQL); this view fixes its public columns.
    "experiments": f"SELECT {', '.join(EXPERIMENT_COLUMNS)} FROM experiment_state WHERE proposals > 0",
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
    # Per run and class: repeated unmodified baselines (hypotheses tagged BASELINE_TAG, ok results).
    "class_stats": f"""
        WITH b AS (
            SELECT run, ran_on AS hw_class, count(*) AS baseline_runs, avg(val_bpb) AS baseline_mean,
                stddev_samp(val_bpb) AS sigma
            FROM experiments
            WHERE status = 'ok' AND val_bpb IS NOT NULL AND list_contains(tags, '{BASELINE_TAG}')
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

# The disposition of every finish in the batch's results (relation ``_batch_results``, not yet inserted),
# from stream order alone. Runs inside the batch's transaction, after its claims are inserted.
DISPOSITION_SQL = """
WITH n AS (
    SELECT event_id, seq, run, hypothesis_id, attempt, runner, status, late FROM _batch_results
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
"""


# Columns added after a table was first released: added to an existing ledger file on open (old rows read
# NULL; `swarm replay` fills them from the stream).
ADDED_COLUMNS: dict[str, list[tuple[str, str]]] = {
    "hypotheses": [("budget", "DOUBLE"), ("budget_unit", "VARCHAR")],
    "results": [("budget", "DOUBLE"), ("budget_unit", "VARCHAR"), ("eval_seconds", "DOUBLE"), ("profile", "VARCHAR")],
    "runners": [("dataset", "VARCHAR"), ("dataset_fingerprint", "VARCHAR"), ("tokenizer_fingerprint", "VARCHAR")],
}


def create_schema(con: duckdb.DuckDBPyConnection) -> None:
    """Create every table and view if missing. Idempotent."""
    for name, cols in TABLES.items():
        con.execute(f"CREATE TABLE IF NOT EXISTS {name} ({cols})")
        for col, kind in ADDED_COLUMNS.get(name, []):
            con.execute(f"ALTER TABLE {name} ADD COLUMN IF NOT EXISTS {col} {kind}")
    for name, cols in DERIVED_TABLES.items():
        fresh = not con.execute(
            "SELECT count(*) FROM duckdb_tables() WHERE schema_name = 'main' AND table_name = $1", [name]
        ).fetchall()[0][0]
        con.execute(f"CREATE TABLE IF NOT EXISTS {name} ({cols})")
        if fresh and name == "experiment_state":  # a database made before this table existed: fill it
            con.execute("INSERT INTO experiment_state " + EXPERIMENT_STATE_SQL.format(keys=ALL_KEYS_SQL))
    for name, body in VIEWS.items():
        con.execute(f"CREATE OR REPLACE VIEW {name} AS {body}")


def columns(con: duckdb.DuckDBPyConnection, table: str) -> list[str]:
    """Column names of a table or view, in order."""
    return [r[0] for r in con.execute(f"DESCRIBE {table}").fetchall()]


# WAL size that triggers a checkpoint. DuckDB's default (16 MB) checkpointed every few batches, and a
# checkpoint of a large database costs far more than the commit it rides on; the WAL is replayed on open.
CHECKPOINT_THRESHOLD = os.environ.get("SWARM_LEDGER_CHECKPOINT", "256MB")


def connect_db(path: str, *, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """Open the ledger's DuckDB file with external access switched off and the configuration locked,
    so no query (not even SQL from the read API) can read or write the host's files."""
    con = duckdb.connect(
        path,
        read_only=read_only,
        config={"enable_external_access": False, "autoinstall_known_extensions": False,
                "autoload_known_extensions": False, "checkpoint_threshold": CHECKPOINT_THRESHOLD,
                "lock_configuration": True},
    )  # fmt: skip
    if not read_only:
        create_schema(con)
    return con

"""The projection, shared by the live projector and every replay.

:func:`project` is a pure function from a batch of stream messages to column lists per table (decode,
validate, map); :func:`apply` writes those rows and the batch's last stream sequence in one DuckDB
transaction, dropping events whose ``event_id`` is already there and giving the new results their
disposition from stream order (:data:`ledger.schema.DISPOSITION_SQL`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import duckdb
import msgspec
import pyarrow as pa

from bus import events as ev
from bus import subjects
from ledger.schema import DISPOSITION_SQL

_json = msgspec.json.Encoder()


def _js(value: Any) -> str | None:
    return None if value is None else _json.encode(value).decode()


@dataclass(frozen=True, slots=True)
class RawMessage:
    """One stream message: its stream sequence, subject and bytes."""

    seq: int
    subject: str
    data: bytes
    ts: float = 0.0  # when the stream stored it (unix seconds); the ts of a reject, so replay equals live


Getter = Callable[[Any], Any]
_ENV: list[tuple[str, Getter]] = [
    ("seq", lambda p: p[0]),
    ("event_id", lambda p: p[1].event_id),
    ("run", lambda p: p[1].run),
    ("source", lambda p: p[1].source),
    ("ts", lambda p: p[1].ts),
]


def _attrs(*names: str) -> list[tuple[str, Getter]]:
    return [(n, (lambda a: lambda p: getattr(p[1], a))(n)) for n in names]


# event type -> (table, columns after the envelope). Each pair p is (seq, event).
_MAPPING: dict[type[ev.Event], tuple[str, list[tuple[str, Getter]]]] = {
    ev.HypothesisProposed: ("hypotheses", [
        *_attrs("hypothesis_id", "agent", "model", "parent", "train_py", "train_py_sha256", "ast_sha256",
                "diff", "description", "rationale", "tier", "hw_class", "seed", "budget_seconds", "tags"),
        ("knobs", lambda p: _js(p[1].knobs)),
    ]),
    ev.ExperimentClaimed: ("claims", [
        *_attrs("hypothesis_id", "attempt", "runner"),
        ("hw_class", lambda p: p[1].hardware.hw_class),
        ("hardware", lambda p: _js(p[1].hardware)),
        *_attrs("stream_seq"),
    ]),
    ev.ExperimentFinished: ("results", [
        *_attrs("hypothesis_id", "attempt", "runner", "status", "val_bpb", "reported_val_bpb",
                "training_seconds", "total_seconds", "num_steps", "tokens", "num_params", "peak_vram_mb",
                "mfu", "reason", "log_tail", "log_ref", "hw_class", "train_py_sha256",
                "dataset_fingerprint", "tokenizer_fingerprint", "budget_seconds", "late"),
    ]),
    ev.HypothesisDecided: ("decisions", _attrs(
        "hypothesis_id", "decision", "by", "reason", "val_bpb", "reference_val_bpb", "sigma")),
    ev.NoteWritten: ("notes", _attrs("note_id", "agent", "title", "body", "refs")),
    ev.AgentJoined: ("agents", [
        *_attrs("agent"), ("action", lambda p: "joined"), *_attrs("provider", "model", "strategy"),
        ("config", lambda p: _js(p[1].config)), ("reason", lambda p: ""),
    ]),
    ev.AgentLeft: ("agents", [
        *_attrs("agent"), ("action", lambda p: "left"), ("provider", lambda p: None),
        ("model", lambda p: None), ("strategy", lambda p: None), ("config", lambda p: None), *_attrs("reason"),
    ]),
    ev.RunnerJoined: ("runners", [
        *_attrs("runner"), ("action", lambda p: "joined"), ("hw_class", lambda p: p[1].hardware.hw_class),
        ("hardware", lambda p: _js(p[1].hardware)), *_attrs("classes", "executor"),
        ("calibration", lambda p: _js(p[1].calibration)),
        ("steps_per_second", lambda p: p[1].calibration.steps_per_second if p[1].calibration else None),
        ("reason", lambda p: ""),
    ]),
    ev.RunnerLeft: ("runners", [
        *_attrs("runner"), ("action", lambda p: "left"), ("hw_class", lambda p: None),
        ("hardware", lambda p: None), ("classes", lambda p: None), ("executor", lambda p: None),
        ("calibration", lambda p: None), ("steps_per_second", lambda p: None), *_attrs("reason"),
    ]),
    ev.LlmUsage: ("llm_usage", _attrs(
        "agent", "provider", "model", "input_tokens", "output_tokens", "cost_usd", "latency_seconds", "ok",
        "error", "hypothesis_ids")),
    ev.ProposalRejected: ("proposal_rejects", _attrs("agent", "reason", "description", "excerpt")),
    ev.ProgramChanged: ("programs", _attrs("program_md", "by")),
}  # fmt: skip


@dataclass
class Rows:
    """What one batch adds: column lists per table, the raw events, the rejects, the last sequence."""

    last_seq: int = 0
    events: dict[str, list[Any]] = field(default_factory=dict)
    tables: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
    rejects: dict[str, list[Any]] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return len(self.events.get("event_id", ())) + len(self.rejects.get("seq", ()))


def validate(event: ev.AnyEvent, subject: str) -> str | None:
    """Why an event decoded from ``subject`` is not acceptable, or None. Its subject must be the one
    it belongs on (run and kind, or the work class of a proposal), so a mislabelled message cannot pose
    as another run's record."""
    try:
        want = subjects.event_subject(event)
    except ValueError as e:
        return f"invalid {type(event).__name__}: {e}"
    if want != subject:
        return f"{type(event).__name__} {event.event_id} on subject {subject!r}; it belongs on {want!r}"
    return None


def project(msgs: Iterable[RawMessage], *, after_seq: int = 0) -> Rows:
    """Pure: decode and validate stream messages with ``seq > after_seq`` and map them to rows.

    An event_id seen twice in the batch keeps its first (lowest seq) occurrence; duplicates against
    what is already projected are dropped by :func:`apply`.
    """
    rows = Rows(last_seq=after_seq)
    seen: set[str] = set()
    raw: list[tuple[RawMessage, ev.AnyEvent]] = []
    rej: list[tuple[int, str, str, bytes, float]] = []
    for m in msgs:
        if m.seq <= after_seq:
            continue
        rows.last_seq = max(rows.last_seq, m.seq)
        try:
            event = ev.decode(m.data)
        except ev.EventDecodeError as e:
            rej.append((m.seq, m.subject, f"decode: {e}", m.data, m.ts))
            continue
        problem = validate(event, m.subject)
        if problem is not None:
            rej.append((m.seq, m.subject, f"validate: {problem}", m.data, m.ts))
            continue
        if event.event_id in seen:
            continue
        seen.add(event.event_id)
        raw.append((m, event))
    if raw:
        rows.events = {
            "seq": [m.seq for m, _ in raw],
            "event_id": [e.event_id for _, e in raw],
            "type": [type(e).__name__ for _, e in raw],
            "run": [e.run for _, e in raw],
            "source": [e.source for _, e in raw],
            "ts": [e.ts for _, e in raw],
            "schema_version": [e.schema_version for _, e in raw],
            "subject": [m.subject for m, _ in raw],
            "data": [m.data for m, _ in raw],
        }
    by_type: dict[type[ev.Event], list[tuple[int, ev.AnyEvent]]] = {}
    for m, event in raw:
        by_type.setdefault(type(event), []).append((m.seq, event))
    for kind, pairs in by_type.items():
        table, cols = _MAPPING[kind]
        out = rows.tables.setdefault(table, {})
        for name, get in _ENV + cols:
            out.setdefault(name, []).extend([get(p) for p in pairs])
    if rej:
        rows.rejects = {
            "seq": [r[0] for r in rej],
            "subject": [r[1] for r in rej],
            "reason": [r[2] for r in rej],
            "data": [r[3] for r in rej],
            "ts": [r[4] for r in rej],
        }
    return rows


def _insert(con: duckdb.DuckDBPyConnection, table: str, cols: dict[str, list[Any]], *, returning: str = "",
            or_ignore: bool = False) -> list[Any]:  # fmt: skip
    # Python lists -> an Arrow table (converted in C) -> one INSERT ... SELECT: far faster than
    # executemany, and faster than unnest($1) over lists for wide tables.
    types = _arrow_types(con, table)
    batch = pa.table({n: pa.array(v, type=types[n]) for n, v in cols.items()})
    quoted = ", ".join(f'"{n}"' for n in cols)
    view = f"_batch_{table}"
    con.register(view, batch)
    try:
        sql = f"INSERT {'OR IGNORE ' if or_ignore else ''}INTO {table} ({quoted}) SELECT {quoted} FROM {view}"
        if returning:
            return con.execute(sql + f" RETURNING {returning}").fetchall()
        con.execute(sql)
        return []
    finally:
        con.unregister(view)


_ARROW: dict[str, pa.DataType] = {
    "BIGINT": pa.int64(), "INTEGER": pa.int32(), "DOUBLE": pa.float64(), "VARCHAR": pa.string(),
    "BLOB": pa.binary(), "BOOLEAN": pa.bool_(), "VARCHAR[]": pa.list_(pa.string()),
}  # fmt: skip
_arrow_cache: dict[str, dict[str, pa.DataType]] = {}


def _arrow_types(con: duckdb.DuckDBPyConnection, table: str) -> dict[str, pa.DataType]:
    if table not in _arrow_cache:
        rows = con.execute(f"DESCRIBE {table}").fetchall()
        _arrow_cache[table] = {r[0]: _ARROW[r[1]] for r in rows}
    return _arrow_cache[table]


def _keep(cols: dict[str, list[Any]], accepted: set[str]) -> dict[str, list[Any]]:
    mask = [eid in accepted for eid in cols["event_id"]]
    return {k: [v for v, keep in zip(vs, mask, strict=True) if keep] for k, vs in cols.items()}


def apply(con: duckdb.DuckDBPyConnection, rows: Rows, *, consumer: str) -> int:
    """Write one projected batch and its last stream sequence in one transaction.

    Returns how many events were new (not already projected under their event_id).
    """
    con.execute("BEGIN TRANSACTION")
    try:
        new = 0
        if rows.events:
            got = _insert(con, "events", rows.events, returning="event_id", or_ignore=True)
            accepted = {r[0] for r in got}
            new = len(accepted)
            complete = new == len(rows.events["event_id"])
            for table, cols in rows.tables.items():
                cols = cols if complete else _keep(cols, accepted)
                if cols["event_id"]:
                    _insert(con, table, cols)
            if "results" in rows.tables:
                con.execute(DISPOSITION_SQL)
        if rows.rejects:
            _insert(con, "rejects", rows.rejects, or_ignore=True)
        if rows.last_seq:
            con.execute(
                "INSERT OR REPLACE INTO projector_state VALUES ($1, $2, $3)",
                [consumer, rows.last_seq, time.time()],
            )
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return new


def last_seq(con: duckdb.DuckDBPyConnection, consumer: str) -> int:
    """The last stream sequence projected under ``consumer`` (0 for a new database)."""
    row = con.execute("SELECT last_seq FROM projector_state WHERE consumer = $1", [consumer]).fetchone()
    return int(row[0]) if row else 0


def project_all(con: duckdb.DuckDBPyConnection, msgs: Sequence[RawMessage], *, consumer: str) -> int:
    """Project a sequence of messages (e.g. from an archive) in batches; returns the new events."""
    total = 0
    step = 20_000
    for i in range(0, len(msgs), step):
        rows = project(msgs[i : i + step], after_seq=last_seq(con, consumer))
        total += apply(con, rows, consumer=consumer)
    return total

"""The projection, shared by the live projector and every replay.

:func:`project` is a pure function from a batch of stream messages to column lists per table (decode,
validate, map); :func:`apply` writes those rows and the batch's last stream sequence in one DuckDB
transaction, dropping events whose ``event_id`` is already there and giving the new results their
disposition from stream order: the one rule of :mod:`bus.results`, which the projector's incremental path calls
and :data:`ledger.schema.DISPOSITION_SQL` mirrors for whole batches (a property test keeps them equal).
"""

from __future__ import annotations

import operator
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import duckdb
import msgspec

from bus import events as ev
from bus import subjects
from ledger.schema import ALL_KEYS_SQL, refresh_experiments
from ledger.state import update_experiments
from ledger.writes import insert, insert_results

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


@dataclass(frozen=True, slots=True)
class _Const:
    value: Any


_Col = str | tuple[str, "Callable[[Any], Any] | _Const"]


def _const(value: Any) -> _Const:
    """A column with the same value in every row of the event type."""
    return _Const(value)


def _json_of(attr: str) -> Callable[[Any], Any]:
    return lambda e: _js(getattr(e, attr))


def _hw_class(e: Any) -> Any:
    return e.hardware.hw_class


def _steps_per_second(e: Any) -> Any:
    return e.calibration.steps_per_second if e.calibration else None


# event type -> (table, columns after the envelope). A column is an attribute of the event of the same
# name, (name, function of the event) or (name, _const(value)).
_MAPPING: dict[type[ev.Event], tuple[str, list[_Col]]] = {
    ev.HypothesisProposed: ("hypotheses", [
        "hypothesis_id", "agent", "model", "parent", "train_py", "train_py_sha256", "ast_sha256", "diff",
        "description", "rationale", "tier", "hw_class", "seed", "budget_seconds", "tags", ("knobs", _json_of("knobs")),
        "budget", "budget_unit",
    ]),
    ev.ExperimentClaimed: ("claims", [
        "hypothesis_id", "attempt", "runner", ("hw_class", _hw_class), ("hardware", _json_of("hardware")),
        "stream_seq",
    ]),
    ev.ExperimentFinished: ("results", [
        "hypothesis_id", "attempt", "runner", "status", "val_bpb", "reported_val_bpb", "training_seconds",
        "total_seconds", "num_steps", "tokens", "num_params", "peak_vram_mb", "mfu", "reason", "log_tail",
        "log_ref", "hw_class", "train_py_sha256", "dataset_fingerprint", "tokenizer_fingerprint", "budget_seconds",
        "late", "budget", "budget_unit", "eval_seconds", "profile",
    ]),
    ev.HypothesisDecided: ("decisions", [
        "hypothesis_id", "decision", "by", "reason", "val_bpb", "reference_val_bpb", "sigma"]),
    # an audit's demotion is the hypothesis's latest decision ("demote"): it is no longer kept
    ev.HypothesisDemoted: ("decisions", [
        "hypothesis_id", ("decision", _const("demote")), "by", "reason", ("val_bpb", _const(None)),
        ("reference_val_bpb", _const(None)), "sigma"]),
    ev.NoteWritten: ("notes", ["note_id", "agent", "title", "body", "refs"]),
    ev.AgentJoined: ("agents", [
        "agent", ("action", _const("joined")), "provider", "model", "strategy", ("config", _json_of("config")),
        ("reason", _const("")),
    ]),
    ev.AgentLeft: ("agents", [
        "agent", ("action", _const("left")), ("provider", _const(None)), ("model", _const(None)),
        ("strategy", _const(None)), ("config", _const(None)), "reason",
    ]),
    ev.RunnerJoined: ("runners", [
        "runner", ("action", _const("joined")), ("hw_class", _hw_class), ("hardware", _json_of("hardware")),
        "classes", "executor", ("calibration", _json_of("calibration")), ("steps_per_second", _steps_per_second),
        ("reason", _const("")), "dataset", "dataset_fingerprint", "tokenizer_fingerprint",
    ]),
    ev.RunnerLeft: ("runners", [
        "runner", ("action", _const("left")), ("hw_class", _const(None)), ("hardware", _const(None)),
        ("classes", _const(None)), ("executor", _const(None)), ("calibration", _const(None)),
        ("steps_per_second", _const(None)), "reason", ("dataset", _const(None)),
        ("dataset_fingerprint", _const(None)), ("tokenizer_fingerprint", _const(None)),
    ]),
    ev.LlmUsage: ("llm_usage", [
        "agent", "provider", "model", "input_tokens", "output_tokens", "cost_usd", "latency_seconds", "ok",
        "error", "hypothesis_ids"]),
    ev.ProposalRejected: ("proposal_rejects", ["agent", "reason", "description", "excerpt"]),
    ev.ProgramChanged: ("programs", ["program_md", "by"]),
}  # fmt: skip

_ENVELOPE = ("event_id", "run", "source", "ts")


@dataclass(frozen=True)
class _Plan:
    """How one event type becomes rows: ``row(event)`` is the tuple of the columns ``names`` (envelope
    first), taken right after the event is decoded, while it is still in the CPU's cache (transposing
    the batch's events afterwards cost as much as decoding them); ``consts`` are the same in every row."""

    table: str
    names: list[str]
    row: Callable[[Any], tuple[Any, ...]]
    consts: list[tuple[str, Any]]


def _plan(table: str, cols: list[_Col]) -> _Plan:
    attrs = [*_ENVELOPE, *(c for c in cols if isinstance(c, str))]
    get = operator.attrgetter(*attrs)
    fns = [(c[0], c[1]) for c in cols if not isinstance(c, str) and not isinstance(c[1], _Const)]
    consts = [(c[0], c[1].value) for c in cols if not isinstance(c, str) and isinstance(c[1], _Const)]
    row: Callable[[Any], tuple[Any, ...]]
    if not fns:
        row = get
    elif len(fns) == 1:
        f0 = fns[0][1]

        def row(e: Any) -> tuple[Any, ...]:
            return (*get(e), f0(e))
    else:
        calls = [f for _, f in fns]

        def row(e: Any) -> tuple[Any, ...]:
            return (*get(e), *[f(e) for f in calls])

    return _Plan(table, [*attrs, *(n for n, _ in fns)], row, consts)


# Per event type: its table and how to build its rows.
_PLANS = {kind: _plan(table, cols) for kind, (table, cols) in _MAPPING.items()}


def _columns(kind: type[ev.Event], seqs: list[int], evs: list[Any]) -> tuple[str, dict[str, list[Any]]]:
    """The column lists of one event type's rows."""
    plan = _PLANS[kind]
    return plan.table, _transpose(plan, seqs, list(map(plan.row, evs)))


def _transpose(plan: _Plan, seqs: list[int], rows: list[tuple[Any, ...]]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {"seq": seqs}
    for name, values in zip(plan.names, zip(*rows, strict=True), strict=True):
        out[name] = list(values)
    for name, value in plan.consts:
        out[name] = [value] * len(seqs)
    return out


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

    def extend(self, later: Rows) -> None:
        """Append the rows of the messages that follow this batch's (one batch made of several)."""
        for mine, theirs in ((self.events, later.events), (self.rejects, later.rejects)):
            for name, values in theirs.items():
                mine.setdefault(name, []).extend(values)
        for table, cols in later.tables.items():
            out = self.tables.setdefault(table, {})
            for name, values in cols.items():
                out.setdefault(name, []).extend(values)
        self.last_seq = max(self.last_seq, later.last_seq)


def validate(event: ev.AnyEvent, subject: str) -> str | None:
    """Why an event decoded from ``subject`` is not acceptable, or None. Its subject must be the one
    it belongs on (run and kind, or the work class of a proposal), so a mislabelled message cannot pose
    as another run's record."""
    try:
        want = subjects.cached_event_subject(event)
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
    seqs: list[int] = []
    subs: list[str] = []
    datas: list[bytes] = []
    tss: list[float] = []
    for m in msgs:
        seqs.append(m.seq)
        subs.append(m.subject)
        datas.append(m.data)
        tss.append(m.ts)
    return project_columns(seqs, subs, datas, tss, after_seq=after_seq)


_ENVELOPE_GET = operator.attrgetter("event_id", "run", "source", "ts", "schema_version")


def project_columns(
    seqs: Sequence[int], subjects_: Sequence[str], datas: Sequence[bytes], tss: Sequence[float], *,
    after_seq: int = 0, seen: set[str] | None = None,
) -> Rows:  # fmt: skip
    """:func:`project` over messages given as columns (stream sequence, subject, bytes, stored time),
    the form :class:`ledger.fetch.PullFeed` delivers them in, without a per-message object. ``seen``:
    the event_ids of the earlier parts of the same batch (see :meth:`Rows.extend`), updated."""
    rows = Rows(last_seq=after_seq)
    if seen is None:
        seen = set()
    kept_i: list[int] = []
    kinds: list[type[ev.Event]] = []
    envelopes: list[tuple[Any, ...]] = []
    per_type: dict[type[ev.Event], tuple[_Plan, list[int], list[tuple[Any, ...]]]] = {}
    rej: list[tuple[int, str, str, bytes, float]] = []
    decode = ev.decode
    subject_of = subjects.cached_event_subject
    envelope = _ENVELOPE_GET
    last = after_seq
    for i, seq in enumerate(seqs):
        if seq <= after_seq:
            continue
        if seq > last:
            last = seq
        data = datas[i]
        try:
            event = decode(data)
        except ev.EventDecodeError as e:
            rej.append((seq, subjects_[i], f"decode: {e}", data, tss[i]))
            continue
        try:
            ok = subject_of(event) == subjects_[i]
        except ValueError:
            ok = False
        if not ok:
            problem = validate(event, subjects_[i])
            if problem is not None:
                rej.append((seq, subjects_[i], f"validate: {problem}", data, tss[i]))
                continue
        eid = event.event_id
        if eid in seen:
            continue
        seen.add(eid)
        kind = type(event)
        group = per_type.get(kind)
        if group is None:
            group = per_type[kind] = (_PLANS[kind], [], [])
        group[1].append(seq)
        group[2].append(group[0].row(event))
        kept_i.append(i)
        kinds.append(kind)
        envelopes.append(envelope(event))
    rows.last_seq = last
    if kept_i:
        eids, runs, sources, ts, versions = (list(c) for c in zip(*envelopes, strict=True))
        rows.events = {
            "seq": [seqs[i] for i in kept_i], "event_id": eids, "type": [k.__name__ for k in kinds], "run": runs,
            "source": sources, "ts": ts, "schema_version": versions, "subject": [subjects_[i] for i in kept_i],
            "data": [datas[i] for i in kept_i],
        }  # fmt: skip
        for plan, kseqs, tuples in per_type.values():
            cols = _transpose(plan, kseqs, tuples)
            out = rows.tables.get(plan.table)
            if out is None:
                rows.tables[plan.table] = cols
            else:  # a second event type of the same table (joined/left)
                for name, values in cols.items():
                    out[name].extend(values)
    if rej:
        rows.rejects = {
            "seq": [r[0] for r in rej],
            "subject": [r[1] for r in rej],
            "reason": [r[2] for r in rej],
            "data": [r[3] for r in rej],
            "ts": [r[4] for r in rej],
        }
    return rows


def _keep(cols: dict[str, list[Any]], accepted: set[str]) -> dict[str, list[Any]]:
    mask = [eid in accepted for eid in cols["event_id"]]
    return {k: [v for v, keep in zip(vs, mask, strict=True) if keep] for k, vs in cols.items()}


def _write(con: duckdb.DuckDBPyConnection, rows: Rows, *, consumer: str, known: bool, derive: bool = True) -> int:
    """The body of :func:`apply`'s transaction. ``known=False``: insert every event as new (a duplicate
    event_id raises ConstraintException); ``known=True``: keep only the events whose event_id is new.
    ``derive=False``: results get their dispositions from :data:`DISPOSITION_SQL` and ``experiment_state``
    is left alone (see :func:`apply`)."""
    new = 0
    if rows.events:
        n = len(rows.events["event_id"])
        if known:
            got = insert(con, "events", rows.events, returning="event_id", or_ignore=True)
            accepted = {r[0] for r in got}
            new = len(accepted)
        else:
            insert(con, "events", rows.events)
            accepted, new = set(), n
        tables = rows.tables if new == n else {t: _keep(c, accepted) for t, c in rows.tables.items()}
        tables = {t: c for t, c in tables.items() if c["event_id"]}
        for table, cols in tables.items():
            if table != "results":  # results go in with their dispositions, which read the claims
                insert(con, table, cols)
        if derive:
            update_experiments(con, tables)
        elif "results" in tables:
            insert_results(con, tables["results"])
    if rows.rejects:
        insert(con, "rejects", rows.rejects, or_ignore=True)
    if rows.last_seq:
        con.execute(
            "INSERT OR REPLACE INTO projector_state VALUES ($1, $2, $3)",
            [consumer, rows.last_seq, time.time()],
        )
    return new


def apply(con: duckdb.DuckDBPyConnection, rows: Rows, *, consumer: str, derive: bool = True) -> int:
    """Write one projected batch and its last stream sequence in one transaction, and bring the
    hypotheses it touches up to date in ``experiment_state`` in the same transaction.

    Returns how many events were new (not already projected under their event_id). The batch is first
    written as all new (the usual case, and the cheapest insert); if an event_id is already there the
    transaction is rolled back and the batch written again keeping only the new events.

    ``derive=False`` is the bulk mode of a replay into a new database: the finishes get their dispositions
    in SQL (:data:`DISPOSITION_SQL`, the same rule for a whole batch, kept equal by a property test) and
    ``experiment_state`` is not touched; :func:`derive_experiments` fills it once at the end. That moves
    the per-hypothesis work out of Python, where it held the GIL.
    """
    con.execute("BEGIN TRANSACTION")
    try:
        try:
            new = _write(con, rows, consumer=consumer, known=False, derive=derive)
        except duckdb.ConstraintException:
            con.execute("ROLLBACK")
            con.execute("BEGIN TRANSACTION")
            new = _write(con, rows, consumer=consumer, known=True, derive=derive)
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return new


def derive_experiments(con: duckdb.DuckDBPyConnection) -> None:
    """Fill ``experiment_state`` from the data tables in one transaction (after bulk :func:`apply`)."""
    con.execute("BEGIN TRANSACTION")
    try:
        refresh_experiments(con, ALL_KEYS_SQL)
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


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

"""The ledger's read API: the request and reply types of its request/reply subjects (bus/subjects.py
``api``), answered by ledger/api.py and asked through bus/readapi.py. Requests come from other processes,
so every request forbids unknown fields. (bus/events.py re-exports these names for older importers.)
"""

from __future__ import annotations

from typing import Any, Literal, TypeAlias

import msgspec

from bus.events import (
    BASELINE,
    _encoder,
)


class Request(msgspec.Struct, tag_field="op", forbid_unknown_fields=True, kw_only=True, frozen=True):
    run: str


class BestRequest(Request, tag="best", frozen=True):
    """Best ok val_bpb so far, per hardware class (or one class)."""

    hw_class: str | None = None


class RecentRequest(Request, tag="recent", frozen=True):
    """Most recent finished experiments, newest first."""

    limit: int = 20
    agent: str | None = None
    since_ts: float | None = None


class NotesRequest(Request, tag="notes", frozen=True):
    since_ts: float = 0.0
    limit: int = 50


class ExperimentRequest(Request, tag="experiment", frozen=True):
    hypothesis_id: str


class ContextRequest(Request, tag="context", frozen=True):
    """Everything an agent reads before a wave, in one round trip."""

    agent: str
    recent_limit: int = 30
    notes_since_ts: float = 0.0


class SeenRequest(Request, tag="seen", frozen=True):
    """Which of these train.py hashes (exact sha256 or normalised-AST sha256) were already proposed."""

    sha256s: list[str] = msgspec.field(default_factory=list)


class SqlRequest(Request, tag="sql", frozen=True):
    """Read-only SQL for power users; results are capped at ``limit`` rows and ``timeout_seconds``."""

    sql: str
    limit: int = 1000
    timeout_seconds: float = 5.0


class AgentsRequest(Request, tag="agents", frozen=True):
    """Every agent of the run: state, counts, cost, and its ``problems`` most recent rejections and LLM
    errors (what ``swarm status`` shows, from any machine)."""

    problems: int = 5


class TimelineRequest(Request, tag="timeline", frozen=True):
    """Hypotheses whose state changed after stream sequence ``after_seq`` (proposed, claimed, finished or
    decided), oldest change first: what a live view needs to stay current without reading everything again."""

    after_seq: int = 0
    limit: int = 2000


class OverviewRequest(Request, tag="overview", frozen=True):
    """The run at a glance: counts, baselines, leaderboard, runners (with what each runs) and the queue."""

    queue_limit: int = 100


class HypothesisRequest(Request, tag="hypothesis", frozen=True):
    """One hypothesis in full: rationale, train.py, the diff against its parent, attempts, decisions."""

    hypothesis_id: str


class CompareRequest(Request, tag="compare", frozen=True):
    """Agents (``by="agent"``) or models (``by="model"``) head to head, as ``swarm compare`` computes it;
    over ``runs`` (default: this run)."""

    by: Literal["agent", "model"] = "agent"
    runs: list[str] = msgspec.field(default_factory=list)


class MemoryRequest(Request, tag="memory", frozen=True):
    """The swarm's shared memory (bus.memory): per-class bests with lineage and diffs, the top results of
    all agents, the knob effect table and interactions, dead ends, the notebook, what is in flight. Every
    list is capped, so the reply stays small however long the run."""

    agent: str = ""
    hw_class: str | None = None  # only this class's best and lineage (None: every class)
    top: int = 12
    knob_rows: int = 60
    interactions: int = 12
    dead_ends: int = 20
    in_flight: int = 30
    notes: int = 6
    note_chars: int = 700
    lineage_steps: int = 12
    diff_chars: int = 1500


AnyRequest: TypeAlias = (
    BestRequest
    | RecentRequest
    | NotesRequest
    | ExperimentRequest
    | ContextRequest
    | SeenRequest
    | SqlRequest
    | AgentsRequest
    | TimelineRequest
    | OverviewRequest
    | HypothesisRequest
    | CompareRequest
    | MemoryRequest
)


class ExperimentRow(msgspec.Struct, kw_only=True, frozen=True):
    """One hypothesis with its first finished attempt (see ledger's ``experiments`` view)."""

    hypothesis_id: str
    agent: str
    model: str = ""
    parent: str = BASELINE
    description: str = ""
    tier: str = "screen"
    hw_class: str = ""  # requested class
    proposed_ts: float = 0.0
    status: str | None = None  # None: not finished yet
    val_bpb: float | None = None
    finished_ts: float | None = None
    runner: str | None = None
    ran_on: str | None = None  # hardware class it actually ran on
    attempt: int | None = None
    attempts: int = 0
    training_seconds: float | None = None
    total_seconds: float | None = None
    reason: str = ""
    log_tail: str = ""
    log_ref: str = ""
    decision: str | None = None
    train_py_sha256: str = ""
    tags: list[str] = msgspec.field(default_factory=list)
    knobs: dict[str, Any] = msgspec.field(default_factory=dict)


class BestRow(msgspec.Struct, kw_only=True, frozen=True):
    hw_class: str
    val_bpb: float
    hypothesis_id: str
    agent: str
    description: str = ""
    finished_ts: float = 0.0


class NoteRow(msgspec.Struct, kw_only=True, frozen=True):
    note_id: str
    agent: str
    title: str
    body: str
    refs: list[str]
    ts: float


class ClassStats(msgspec.Struct, kw_only=True, frozen=True):
    """Baseline statistics of a hardware class: mean and σ of repeated unmodified train.py runs."""

    hw_class: str
    baseline_runs: int
    baseline_mean: float | None
    sigma: float | None
    runners_online: int = 0


class ProblemRow(msgspec.Struct, kw_only=True, frozen=True):
    """Something that kept an agent from proposing: a rejected proposal or a failed LLM call."""

    ts: float
    kind: str  # rejected, llm_error
    text: str  # the reason, or the error (status code and URL)
    description: str = ""  # of the rejected proposal


class AgentRow(msgspec.Struct, kw_only=True, frozen=True):
    agent: str
    provider: str = ""
    model: str = ""
    state: str = "active"  # active, left
    reason: str = ""  # why it left
    joined_ts: float = 0.0
    proposed: int = 0
    rejected: int = 0
    llm_calls: int = 0
    llm_errors: int = 0
    cost_usd: float = 0.0
    problems: list[ProblemRow] = msgspec.field(default_factory=list)  # newest first


class TimelineRow(msgspec.Struct, kw_only=True, frozen=True):
    """One hypothesis as a live view plots it (see TimelineRequest); ``seq`` is its last change."""

    hypothesis_id: str
    agent: str
    seq: int
    model: str = ""
    parent: str = BASELINE
    description: str = ""
    tier: str = "screen"
    hw_class: str = ""  # requested class
    tags: list[str] = msgspec.field(default_factory=list)
    proposed_ts: float = 0.0
    status: str | None = None  # None: not finished yet
    val_bpb: float | None = None
    reason: str = ""
    finished_ts: float | None = None
    finished_seq: int | None = None
    runner: str | None = None
    ran_on: str | None = None
    attempts: int = 0
    training_seconds: float | None = None
    total_seconds: float | None = None
    gpu_seconds: float = 0.0  # every finish a runner published for it (duplicates, late), as compare counts
    decision: str | None = None


class LeaderRow(msgspec.Struct, kw_only=True, frozen=True):
    hw_class: str
    agent: str
    rank: int
    best_val_bpb: float | None = None
    best_hypothesis: str | None = None
    experiments: int = 0
    ok: int = 0
    keeps: int = 0
    crashes: int = 0


class RunnerRow(msgspec.Struct, kw_only=True, frozen=True):
    """A runner: its hardware, whether it is online, what it runs now, and its busy figures so far."""

    runner: str
    hw_class: str = ""
    online: bool = True
    executor: str = ""
    host: str = ""
    gpu_name: str = ""
    joined_ts: float = 0.0
    left_reason: str = ""
    results: int = 0
    training_seconds: float = 0.0
    total_seconds: float = 0.0
    last_finish_ts: float | None = None
    current_hypothesis: str = ""  # claimed and not finished by this runner
    current_attempt: int = 0
    current_since: float | None = None


class QueueRow(msgspec.Struct, kw_only=True, frozen=True):
    """A proposed hypothesis without a result yet; ``runner`` is set once one claimed it."""

    hypothesis_id: str
    agent: str
    description: str = ""
    hw_class: str = ""
    tier: str = "screen"
    proposed_ts: float = 0.0
    attempts: int = 0
    runner: str = ""


class AttemptRow(msgspec.Struct, kw_only=True, frozen=True):
    """A claim or a finish of one hypothesis, in stream order."""

    kind: str  # claim, finish
    seq: int
    ts: float
    attempt: int
    runner: str
    hw_class: str = ""
    status: str | None = None
    val_bpb: float | None = None
    disposition: str | None = None  # result, duplicate, late, unclaimed
    reason: str = ""
    log_ref: str = ""
    log_tail: str = ""
    training_seconds: float | None = None
    total_seconds: float | None = None
    num_steps: int | None = None


class DecisionRow(msgspec.Struct, kw_only=True, frozen=True):
    ts: float
    decision: str
    by: str = ""
    reason: str = ""
    val_bpb: float | None = None
    reference_val_bpb: float | None = None
    sigma: float | None = None


class Reply(msgspec.Struct, tag_field="kind", kw_only=True, frozen=True):
    pass


class ErrorReply(Reply, tag="error", frozen=True):
    error: str


class BestReply(Reply, tag="best", frozen=True):
    items: list[BestRow]


class ExperimentsReply(Reply, tag="experiments", frozen=True):
    items: list[ExperimentRow]


class NotesReply(Reply, tag="notes", frozen=True):
    items: list[NoteRow]


class ExperimentReply(Reply, tag="experiment", frozen=True):
    item: ExperimentRow | None
    attempts: list[dict[str, Any]] = msgspec.field(default_factory=list)


class ContextReply(Reply, tag="context", frozen=True):
    best: list[BestRow]
    recent: list[ExperimentRow]
    lineage: list[ExperimentRow]  # the agent's own kept hypotheses, oldest first
    notes: list[NoteRow]
    stats: list[ClassStats]
    program_md: str | None = None  # latest ProgramChanged, if any
    pending: int = 0  # proposed but not finished, all agents
    runners_online: int = 0


class SeenReply(Reply, tag="seen", frozen=True):
    seen: list[str]


class SqlReply(Reply, tag="sql", frozen=True):
    columns: list[str]
    rows: list[list[Any]]
    truncated: bool = False


class AgentsReply(Reply, tag="agents", frozen=True):
    items: list[AgentRow]


class TimelineReply(Reply, tag="timeline", frozen=True):
    items: list[TimelineRow]
    last_seq: int  # pass as the next after_seq
    run_seq: int = 0  # the run's latest event of any kind: it moves when runners, notes or agents change
    more: bool = False  # limit reached: ask again from last_seq


class OverviewReply(Reply, tag="overview", frozen=True):
    run_seq: int = 0
    first_ts: float | None = None
    last_ts: float | None = None
    # proposed, finished, ok, failed, kept, queued
    counts: dict[str, int] = msgspec.field(default_factory=dict)
    stats: list[ClassStats] = msgspec.field(default_factory=list)
    leaderboard: list[LeaderRow] = msgspec.field(default_factory=list)
    runners: list[RunnerRow] = msgspec.field(default_factory=list)
    queue: list[QueueRow] = msgspec.field(default_factory=list)  # oldest first, up to queue_limit
    program_md: str | None = None


class HypothesisReply(Reply, tag="hypothesis", frozen=True):
    item: ExperimentRow | None
    rationale: str = ""
    train_py: str = ""
    diff: str = ""  # against diff_base
    diff_base: str = ""  # the parent's id, "baseline", or "as proposed" (the parent's train.py is unknown)
    attempts: list[AttemptRow] = msgspec.field(default_factory=list)
    decisions: list[DecisionRow] = msgspec.field(default_factory=list)
    children: list[str] = msgspec.field(default_factory=list)  # hypotheses whose parent this is


class CompareReply(Reply, tag="compare", frozen=True):
    result: dict[str, Any]  # ledger.analysis.compare.CompareResult.to_dict()


class LineageStep(msgspec.Struct, kw_only=True, frozen=True):
    """One kept step on the way to a class's best: its change against its parent and the diff."""

    hypothesis_id: str
    agent: str
    val_bpb: float | None = None
    parent: str = BASELINE
    delta: float | None = None  # val_bpb − the parent's, same class (paired by seed for the baseline)
    description: str = ""
    change: str = ""  # normalised: knob values set, and a digest of the code change
    diff: str = ""
    demoted: bool = False


class ClassMemory(msgspec.Struct, kw_only=True, frozen=True):
    hw_class: str
    best_val_bpb: float | None = None
    best_id: str = BASELINE
    best_agent: str = BASELINE
    description: str = ""
    baseline_val_bpb: float | None = None
    kept: int = 0
    lineage: list[LineageStep] = msgspec.field(default_factory=list)  # the baseline's child first


class TopResult(msgspec.Struct, kw_only=True, frozen=True):
    hypothesis_id: str
    agent: str
    hw_class: str
    val_bpb: float
    delta: float | None = None
    description: str = ""
    decision: str = ""
    change: str = ""


class KnobEffect(msgspec.Struct, kw_only=True, frozen=True):
    """One value of one knob: Δ against the parent when it was the only change (n, mean, σ, best), when
    changed with other knobs (n_joint), and how often it failed."""

    knob: str
    value: str
    n: int = 0
    mean_delta: float | None = None
    sigma: float | None = None
    best_delta: float | None = None
    n_joint: int = 0
    joint_mean_delta: float | None = None
    failed: int = 0


class Interaction(msgspec.Struct, kw_only=True, frozen=True):
    """Two knob changes made alone and together from one parent: interaction = Δab − Δa − Δb."""

    a: str
    b: str
    hw_class: str = ""
    parent: str = BASELINE
    n: int = 1
    delta_ab: float = 0.0
    delta_a: float = 0.0
    delta_b: float = 0.0
    interaction: float = 0.0


class DeadEnd(msgspec.Struct, kw_only=True, frozen=True):
    """A change (normalised content) that failed or lost: do not try it again."""

    change: str
    status: str
    n: int = 1
    mean_delta: float | None = None
    reason: str = ""
    example_id: str = ""
    agent: str = ""


class InFlight(msgspec.Struct, kw_only=True, frozen=True):
    """A hypothesis proposed and not finished: someone is testing this now."""

    hypothesis_id: str
    agent: str
    description: str = ""
    change: str = ""
    parent: str = BASELINE
    hw_class: str = ""
    tier: str = "screen"
    runner: str = ""  # claimed by ("" = queued)
    proposed_ts: float = 0.0
    tags: list[str] = msgspec.field(default_factory=list)


class MemoryReply(Reply, tag="memory", frozen=True):
    classes: list[ClassMemory] = msgspec.field(default_factory=list)
    top: list[TopResult] = msgspec.field(default_factory=list)
    knobs: list[KnobEffect] = msgspec.field(default_factory=list)
    interactions: list[Interaction] = msgspec.field(default_factory=list)
    dead_ends: list[DeadEnd] = msgspec.field(default_factory=list)
    notebook: list[NoteRow] = msgspec.field(default_factory=list)
    in_flight: list[InFlight] = msgspec.field(default_factory=list)
    in_flight_total: int = 0
    experiments: int = 0  # finished, baselines not counted


AnyReply: TypeAlias = (
    ErrorReply
    | BestReply
    | ExperimentsReply
    | NotesReply
    | ExperimentReply
    | ContextReply
    | SeenReply
    | SqlReply
    | AgentsReply
    | TimelineReply
    | OverviewReply
    | HypothesisReply
    | CompareReply
    | MemoryReply
)

request_decoder = msgspec.msgpack.Decoder(AnyRequest)
reply_decoder = msgspec.msgpack.Decoder(AnyReply)


def encode_msg(msg: Request | Reply) -> bytes:
    return _encoder.encode(msg)



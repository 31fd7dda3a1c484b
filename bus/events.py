"""Every event on the swarm's bus (the ledger's truth) and the live progress messages; the ledger's read API
types are in bus/api.py (re-exported at the end of this module).

One module, one tagged union per family, msgpack on the wire. Rules (see DESIGN.md, "Event sourcing"):

* every event carries the envelope ``event_id`` (UUIDv7: unique and time-ordered), ``ts``, ``run``,
  ``source`` and ``schema_version``;
* new fields get defaults, existing field types never change; a breaking change bumps the event's
  ``SCHEMA_VERSIONS`` entry and registers an upcaster with :func:`upcaster`;
* input comes from other processes (agents, runners, people), so every struct forbids unknown fields.
"""

from __future__ import annotations

import os
import re
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, Literal, TypeAlias

import msgspec

# --------------------------------------------------------------------------------------------------
# identifiers

_uuid7_lock = threading.Lock()
_uuid7_last = [0, 0]  # [unix ms, 12-bit sequence]: keeps ids strictly increasing within a process


def new_event_id() -> str:
    """A UUIDv7 string (RFC 9562): 48-bit unix-ms timestamp, then a per-ms sequence, then random bits.

    Ids made by one process are strictly increasing, so sorting by id sorts by creation time.
    """
    with _uuid7_lock:
        ms = time.time_ns() // 1_000_000
        last_ms, seq = _uuid7_last
        if ms <= last_ms:
            ms, seq = last_ms, seq + 1
            if seq > 0xFFF:  # more than 4096 ids in one ms: borrow the next ms
                ms, seq = ms + 1, 0
        else:
            seq = int.from_bytes(os.urandom(2), "big") & 0x3FF  # random start, room to count up
        _uuid7_last[0], _uuid7_last[1] = ms, seq
    rand = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    value = (ms << 80) | (0x7 << 76) | (seq << 64) | (0b10 << 62) | rand
    return str(uuid.UUID(int=value))


def event_id_time(event_id: str) -> float:
    """Unix seconds encoded in a UUIDv7 event id."""
    return (uuid.UUID(event_id).int >> 80) / 1000.0


_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def check_token(kind: str, value: str) -> str:
    """Validate a name that becomes one NATS subject token (run, hardware class, agent, runner id)."""
    if not _TOKEN.match(value):
        raise ValueError(
            f"invalid {kind} {value!r}: use 1-64 characters from A-Z a-z 0-9 _ - (it becomes a NATS subject token)"
        )
    return value


# --------------------------------------------------------------------------------------------------
# shared value types

# over_budget: trained past its budget by the runner's clock (never kept, whatever it scored)
Status: TypeAlias = Literal["ok", "crash", "timeout", "oom", "nan", "rejected", "lost", "over_budget"]
BudgetUnit: TypeAlias = Literal["seconds", "tokens"]
Tier: TypeAlias = Literal["screen", "validate"]
Decision: TypeAlias = Literal["keep", "discard"]
BASELINE = "baseline"  # the parent of an unmodified train.py, and the agent name its runs are proposed under
# the tags of HypothesisProposed: one vocabulary for the agents, the ledger's views and the exports
BASELINE_TAG = "baseline"  # the unmodified train.py, run R times per hardware class (its mean and σ)
REPEAT_TAG = "repeat"  # a confirming re-run of another hypothesis (validate tier; parent = the original)
PROMOTION_TAG = "promotion"  # a screen-class win re-run on the validate class (validate tier; parent = the original)
AUDIT_TAG = "audit"  # a champion audit's run: the best again, or the best without one kept step


class Hardware(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """What a runner executes on. ``hw_class`` is the comparison key (cpu, h100, h200, a100, ...)."""

    hw_class: str
    gpu_name: str = ""
    gpu_count: int = 0
    gpu_memory_mb: int = 0
    cpu_count: int = 0
    memory_mb: int = 0
    host: str = ""
    torch_version: str = ""
    cuda_version: str = ""


class Calibration(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """A runner's one-off measurement of the baseline train.py (steps/s), recorded with its hardware."""

    steps_per_second: float
    tokens_per_second: float = 0.0
    seconds: float = 0.0
    train_py_sha256: str = ""
    val_bpb: float | None = None  # the calibration run's trusted result (the pipeline works end to end)
    startup_seconds: float = 0.0  # process start -> first batch asked for
    training_seconds: float = 0.0  # the runner's clock over the budget
    eval_seconds: float = 0.0
    budget: float = 0.0
    budget_unit: str = ""


# --------------------------------------------------------------------------------------------------
# events


class Event(msgspec.Struct, tag_field="type", forbid_unknown_fields=True, kw_only=True, frozen=True):
    """Envelope shared by every event."""

    run: str
    source: str
    event_id: str = msgspec.field(default_factory=new_event_id)
    ts: float = msgspec.field(default_factory=time.time)
    schema_version: int = 1


class HypothesisProposed(Event, tag=True, frozen=True):
    """An agent (or a person) proposes a train.py. Published on the work subject of ``hw_class``: the same
    message is the ledger's record and the work item."""

    hypothesis_id: str
    agent: str
    train_py: str
    train_py_sha256: str
    model: str = ""
    parent: str = BASELINE  # parent hypothesis_id, or "baseline"
    diff: str = ""
    description: str = ""
    rationale: str = ""
    tier: Tier = "screen"
    hw_class: str = "any"
    seed: int = 0
    budget_seconds: float | None = None  # deprecated: a seconds budget (use budget + budget_unit)
    budget: float | None = None  # None: the profile's budget; a runner caps it at its own limit
    budget_unit: str = ""  # "seconds" | "tokens"; "" = the unit of the profile it runs under
    ast_sha256: str = ""  # hash of the normalised AST, for dedup of cosmetic edits
    tags: list[str] = msgspec.field(default_factory=list)
    knobs: dict[str, Any] = msgspec.field(default_factory=dict)  # UPPER_CASE constants of train.py


class ExperimentClaimed(Event, tag=True, frozen=True):
    hypothesis_id: str
    attempt: int  # JetStream delivery count of the work item: 1, 2, ...
    runner: str
    hardware: Hardware
    stream_seq: int = 0  # stream sequence of the work item


class ExperimentFinished(Event, tag=True, frozen=True):
    hypothesis_id: str
    attempt: int
    runner: str
    status: Status
    val_bpb: float | None = None  # the runner's own trusted evaluation, never train.py's claim
    reported_val_bpb: float | None = None  # what train.py printed, kept for forensics
    training_seconds: float = 0.0
    total_seconds: float = 0.0
    num_steps: int = 0
    tokens: int = 0
    num_params: int = 0
    peak_vram_mb: float = 0.0
    mfu: float = 0.0
    reason: str = ""  # why it is not ok, in words
    log_tail: str = ""
    log_ref: str = ""  # object-store key or file path of the full log
    hw_class: str = ""
    train_py_sha256: str = ""
    dataset_fingerprint: str = ""
    tokenizer_fingerprint: str = ""
    budget_seconds: float = 0.0  # the budget's amount when its unit is seconds (older readers)
    late: bool = False  # the runner knew its lease was lost before it published
    budget: float = 0.0  # what this attempt got (after the runner's cap), in budget_unit
    budget_unit: str = ""
    eval_seconds: float = 0.0
    profile: str = ""  # cpu | gpu: which half of train.py's knobs it ran


class HypothesisDecided(Event, tag=True, frozen=True):
    hypothesis_id: str
    decision: Decision
    by: str
    reason: str = ""
    val_bpb: float | None = None
    reference_val_bpb: float | None = None  # what it was compared against
    sigma: float | None = None


class NoteWritten(Event, tag=True, frozen=True):
    note_id: str
    agent: str
    title: str
    body: str  # markdown
    refs: list[str] = msgspec.field(default_factory=list)  # hypothesis ids


class AgentJoined(Event, tag=True, frozen=True):
    agent: str
    provider: str  # anthropic, openai, optuna, random, human
    model: str = ""
    strategy: str = ""
    config: dict[str, Any] = msgspec.field(default_factory=dict)


class AgentLeft(Event, tag=True, frozen=True):
    agent: str
    reason: str = ""


class RunnerJoined(Event, tag=True, frozen=True):
    runner: str
    hardware: Hardware
    classes: list[str] = msgspec.field(default_factory=list)
    executor: str = "process"
    calibration: Calibration | None = None
    # the data it trains on (prepare.py's fingerprints; "" = not said, a runner older than them): runners of
    # one hardware class in a run must agree, or their results compare nothing
    dataset: str = ""  # the source's name: climbmix, stdlib (the offline corpus), corpus:<dir>, ...
    dataset_fingerprint: str = ""
    tokenizer_fingerprint: str = ""
    budget: float = 0.0  # what every experiment of its class gets (0 = not said); one per class in a run
    budget_unit: str = ""


class RunnerLeft(Event, tag=True, frozen=True):
    runner: str
    reason: str = ""


class LlmUsage(Event, tag=True, frozen=True):
    """One call to a model API, successful or not."""

    agent: str
    provider: str
    model: str
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    latency_seconds: float = 0.0
    ok: bool = True
    error: str = ""
    hypothesis_ids: list[str] = msgspec.field(default_factory=list)


class ProposalRejected(Event, tag=True, frozen=True):
    """A proposal an agent's model made that failed validation (does not apply, does not compile, dup...)."""

    agent: str
    reason: str
    description: str = ""
    excerpt: str = ""


class ProgramChanged(Event, tag=True, frozen=True):
    """A person changes the research direction: the new program.md, picked up at every agent's next wave."""

    program_md: str
    by: str = "human"


class HypothesisDemoted(Event, tag=True, frozen=True):
    """A kept hypothesis whose gain did not survive a champion audit: re-run inside the current best, the
    best without this step was not worse. No agent builds on it or compares against it after this."""

    hypothesis_id: str
    by: str
    reason: str = ""
    champion: str = ""  # the best whose lineage holds the step
    delta: float | None = None  # mean (best without the step − best), paired by seed; > 0 means it helped
    sigma: float | None = None
    audit: list[str] = msgspec.field(default_factory=list)  # hypothesis ids of the audit's runs


AnyEvent: TypeAlias = (
    HypothesisProposed
    | ExperimentClaimed
    | ExperimentFinished
    | HypothesisDecided
    | NoteWritten
    | AgentJoined
    | AgentLeft
    | RunnerJoined
    | RunnerLeft
    | LlmUsage
    | ProposalRejected
    | ProgramChanged
    | HypothesisDemoted
)

EVENT_TYPES: dict[str, type[Event]] = {t.__name__: t for t in AnyEvent.__args__}

# Current schema version of each event type. Bump one and register an upcaster when a change is breaking.
SCHEMA_VERSIONS: dict[str, int] = dict.fromkeys(EVENT_TYPES, 1)


# --------------------------------------------------------------------------------------------------
# encoding, decoding, upcasting


class EventDecodeError(ValueError):
    """Raised for bytes that are not a valid event of the current schema (the reason says why)."""


Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
_UPCASTERS: dict[tuple[str, int], Upcaster] = {}


def upcaster(event_type: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
    """Register a function turning the dict form of ``event_type`` at ``from_version`` into
    ``from_version + 1``. Decoding chains them up to ``SCHEMA_VERSIONS[event_type]``."""

    def register(fn: Upcaster) -> Upcaster:
        _UPCASTERS[(event_type, from_version)] = fn
        return fn

    return register


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(AnyEvent)
_raw_decoder = msgspec.msgpack.Decoder(dict[str, Any])
MAX_EVENT_BYTES = 1 << 20  # 1 MiB: a train.py is ~30 KB; anything this big is a mistake or an attack


def encode(event: Event) -> bytes:
    return _encoder.encode(event)


def decode(data: bytes) -> AnyEvent:
    """Decode one event, upcasting an older schema_version. Raises :class:`EventDecodeError`."""
    if len(data) > MAX_EVENT_BYTES:
        raise EventDecodeError(f"event of {len(data)} bytes exceeds the {MAX_EVENT_BYTES}-byte limit")
    try:
        event = _decoder.decode(data)
    except msgspec.DecodeError as e:
        first_error: Exception = e
    else:
        if event.schema_version == SCHEMA_VERSIONS[type(event).__name__]:
            return event
        first_error = EventDecodeError("schema_version differs from the current one")
    return _decode_slow(data, first_error)


def _decode_slow(data: bytes, first_error: Exception) -> AnyEvent:
    try:
        raw = _raw_decoder.decode(data)
    except msgspec.DecodeError as e:
        raise EventDecodeError(f"not a msgpack map: {e}") from e
    kind = raw.get("type")
    if not isinstance(kind, str) or kind not in EVENT_TYPES:
        raise EventDecodeError(f"unknown event type {kind!r}; known: {', '.join(sorted(EVENT_TYPES))}")
    version = raw.get("schema_version", 1)
    current = SCHEMA_VERSIONS[kind]
    if not isinstance(version, int) or version < 1:
        raise EventDecodeError(f"{kind}: invalid schema_version {version!r}")
    if version > current:
        raise EventDecodeError(
            f"{kind}: schema_version {version} is newer than this code's {current}; upgrade the reader"
        )
    if version == current:
        raise EventDecodeError(f"{kind}: {first_error}") from first_error
    while version < current:
        step = _UPCASTERS.get((kind, version))
        if step is None:
            raise EventDecodeError(f"{kind}: no upcaster from schema_version {version} to {version + 1}")
        raw = step(dict(raw))
        version += 1
        raw["schema_version"] = version
    try:
        return msgspec.convert(raw, EVENT_TYPES[kind])  # type: ignore[return-value]
    except msgspec.ValidationError as e:
        raise EventDecodeError(f"{kind} after upcasting to v{current}: {e}") from e


def to_builtins(event: Event) -> dict[str, Any]:
    """The event as plain Python values (with its ``type`` tag), e.g. for JSON or DuckDB."""
    out: dict[str, Any] = msgspec.to_builtins(event)
    return out


# --------------------------------------------------------------------------------------------------
# live progress (core NATS, not in the stream: cosmetic, lossy by design)


class Progress(msgspec.Struct, kw_only=True, frozen=True):
    run: str
    runner: str
    hypothesis_id: str
    attempt: int
    phase: str  # preparing, training, evaluating
    progress: float = 0.0
    step: int = 0
    loss: float | None = None
    elapsed: float = 0.0
    ts: float = msgspec.field(default_factory=time.time)


progress_decoder = msgspec.msgpack.Decoder(Progress)


# the ledger's read API lives in bus/api.py; re-exported for the modules that import it from here
from bus.api import (  # noqa: E402, I001 (bus.api imports this module's event names)
    AgentRow as AgentRow,
    AgentsReply as AgentsReply,
    AgentsRequest as AgentsRequest,
    AnyReply as AnyReply,
    AnyRequest as AnyRequest,
    AttemptRow as AttemptRow,
    BestReply as BestReply,
    BestRequest as BestRequest,
    BestRow as BestRow,
    ClassMemory as ClassMemory,
    ClassStats as ClassStats,
    CompareReply as CompareReply,
    CompareRequest as CompareRequest,
    ContextReply as ContextReply,
    ContextRequest as ContextRequest,
    DeadEnd as DeadEnd,
    DecisionRow as DecisionRow,
    ErrorReply as ErrorReply,
    ExperimentReply as ExperimentReply,
    ExperimentRequest as ExperimentRequest,
    ExperimentRow as ExperimentRow,
    ExperimentsReply as ExperimentsReply,
    HypothesisReply as HypothesisReply,
    HypothesisRequest as HypothesisRequest,
    InFlight as InFlight,
    Interaction as Interaction,
    KnobEffect as KnobEffect,
    LeaderRow as LeaderRow,
    LineageStep as LineageStep,
    MemoryReply as MemoryReply,
    MemoryRequest as MemoryRequest,
    NoteRow as NoteRow,
    NotesReply as NotesReply,
    NotesRequest as NotesRequest,
    OverviewReply as OverviewReply,
    OverviewRequest as OverviewRequest,
    ProblemRow as ProblemRow,
    QueueRow as QueueRow,
    RecentRequest as RecentRequest,
    Reply as Reply,
    Request as Request,
    RunnerRow as RunnerRow,
    SeenReply as SeenReply,
    SeenRequest as SeenRequest,
    SqlReply as SqlReply,
    SqlRequest as SqlRequest,
    TimelineReply as TimelineReply,
    TimelineRequest as TimelineRequest,
    TimelineRow as TimelineRow,
    TopResult as TopResult,
    encode_msg as encode_msg,
    reply_decoder as reply_decoder,
    request_decoder as request_decoder,
)

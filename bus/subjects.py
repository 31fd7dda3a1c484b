"""Every subject, stream and consumer name of the swarm, in one place.

Layout (``<run>`` and ``<class>`` are single subject tokens, see :func:`bus.events.check_token`)::

    swarm.<run>.work.<class>     HypothesisProposed: ledger record and work item at once   (SWARM_EVENTS)
    swarm.<run>.evt.<kind>       every other event                                          (SWARM_EVENTS)
    swarm.<run>.api.<op>         the ledger's read API, request/reply                       (not stored)
    swarm.<run>.live.progress    runner progress for live views, core NATS                  (not stored)
"""

from __future__ import annotations

from bus.events import Event, HypothesisProposed, check_token

STREAM = "SWARM_EVENTS"
STREAM_SUBJECTS = ["swarm.*.work.*", "swarm.*.evt.>"]
LEDGER_CONSUMER = "ledger"

# event type -> the <kind> token of its subject
_KINDS = {
    "ExperimentClaimed": "claimed",
    "ExperimentFinished": "finished",
    "HypothesisDecided": "decided",
    "NoteWritten": "note",
    "AgentJoined": "agent",
    "AgentLeft": "agent",
    "RunnerJoined": "runner",
    "RunnerLeft": "runner",
    "LlmUsage": "usage",
    "ProposalRejected": "rejected",
    "ProgramChanged": "program",
    "HypothesisDemoted": "demoted",
}


def work(run: str, hw_class: str) -> str:
    return f"swarm.{check_token('run', run)}.work.{check_token('hardware class', hw_class)}"


def work_consumer(run: str, hw_class: str) -> str:
    """Durable pull consumer shared by every runner that serves ``hw_class`` in ``run``."""
    return f"work_{check_token('run', run)}_{check_token('hardware class', hw_class)}"


def event_subject(event: Event) -> str:
    """The subject an event is published on."""
    if isinstance(event, HypothesisProposed):
        return work(event.run, event.hw_class)
    kind = _KINDS[type(event).__name__]
    return f"swarm.{check_token('run', event.run)}.evt.{kind}"


_subject_cache: dict[tuple[object, ...], str] = {}


def cached_event_subject(event: Event) -> str:
    """:func:`event_subject`, remembered per (type, run, hardware class): its token checks are a regex
    each, the largest cost of a bulk publish after encoding, and of projecting a batch after decoding."""
    key = (type(event), event.run, event.hw_class if isinstance(event, HypothesisProposed) else None)
    got = _subject_cache.get(key)
    if got is None:
        got = event_subject(event)  # raises ValueError for a bad token: never cached
        if len(_subject_cache) > 10_000:
            _subject_cache.clear()
        _subject_cache[key] = got
    return got


def run_all(run: str) -> str:
    """Every subject of one run (in the stream: its work items and its events, in order)."""
    return f"swarm.{check_token('run', run)}.>"


def run_events(run: str) -> list[str]:
    """Filter subjects matching every event of one run."""
    run = check_token("run", run)
    return [f"swarm.{run}.work.*", f"swarm.{run}.evt.>"]


def api(run: str, op: str) -> str:
    return f"swarm.{check_token('run', run)}.api.{op}"


API_ALL_RUNS = "swarm.*.api.*"
# patterns across every run, for permissions (bus/security.py) and services that serve all runs
WORK_ALL_RUNS = "swarm.*.work.*"
EVENTS_ALL_RUNS = "swarm.*.evt.>"
LIVE_ALL_RUNS = "swarm.*.live.>"
PROGRESS_ALL_RUNS = "swarm.*.live.progress"


def publish_pattern(event_type: type[Event]) -> str:
    """The subject pattern, across every run, that events of ``event_type`` are published on."""
    if issubclass(event_type, HypothesisProposed):
        return WORK_ALL_RUNS
    return f"swarm.*.evt.{_KINDS[event_type.__name__]}"


def progress(run: str) -> str:
    return f"swarm.{check_token('run', run)}.live.progress"

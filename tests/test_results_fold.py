"""The result of a hypothesis has one definition (bus/results.py), and the ledger agrees with it: random
interleavings of claims, finishes, redeliveries, late and unclaimed results, projected both in one batch (the
SQL path) and an event at a time (the incremental path), give every finish the fold's disposition."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from bus import subjects
from bus.events import (
    ExperimentClaimed,
    ExperimentFinished,
    Hardware,
    HypothesisProposed,
    NoteWritten,
    encode,
)
from bus.results import ResultFold, comparison_key, counts_on, disposition
from ledger.projection import RawMessage, apply, project
from ledger.schema import connect_db

RUN = "fold"
HW = Hardware(hw_class="cpu")


def _stream(rng: random.Random, n_hyps: int) -> list:
    """A plausible but hostile stream: each hypothesis proposed, then claims and finishes by a few runners,
    some redelivered, some late, some forged (never claimed), some dead-lettered."""
    per_hyp: list[list] = []
    for h in range(n_hyps):
        hid = f"h{h}"
        evs: list = [HypothesisProposed(run=RUN, source="a", hypothesis_id=hid, agent="a", train_py="x",
                                        train_py_sha256="s")]
        attempts = rng.randint(1, 3)
        for a in range(1, attempts + 1):
            runner = rng.choice(["r1", "r2", "r3"])
            evs.append(ExperimentClaimed(run=RUN, source=runner, hypothesis_id=hid, attempt=a, runner=runner,
                                         hardware=HW))
            if rng.random() < 0.8:
                evs.append(ExperimentFinished(run=RUN, source=runner, hypothesis_id=hid, attempt=a, runner=runner,
                                              status=rng.choice(["ok", "ok", "crash"]), val_bpb=rng.random(),
                                              late=rng.random() < 0.15))
        if rng.random() < 0.2:  # forged: a result for an attempt nobody claimed
            evs.append(ExperimentFinished(run=RUN, source="evil", hypothesis_id=hid, attempt=rng.randint(1, 4),
                                          runner="evil", status="ok", val_bpb=0.0))
        if rng.random() < 0.1:
            evs.append(ExperimentFinished(run=RUN, source="r1", hypothesis_id=hid, attempt=5, runner="r1",
                                          status="lost"))
        per_hyp.append(evs)
    # interleave the hypotheses, keeping each one's own order except that a finish may overtake later claims
    out: list = []
    queues = [list(q) for q in per_hyp]
    while any(queues):
        q = rng.choice([q for q in queues if q])
        out.append(q.pop(0))
        if q and len(q) > 1 and rng.random() < 0.2 and isinstance(q[1], ExperimentFinished):
            q[0], q[1] = q[1], q[0]  # a late finish arrives after the next attempt's claim
    return out


def _dispositions_in_ledger(tmp: Path, events: list, batch: int) -> dict[str, str]:
    con = connect_db(str(tmp))
    msgs = [RawMessage(seq=i + 1, subject=subjects.event_subject(e), data=encode(e), ts=e.ts) for i, e in enumerate(events)]
    for i in range(0, len(msgs), batch):
        apply(con, project(msgs[i:i + batch]), consumer="ledger")
    got = dict(con.execute("SELECT event_id, disposition FROM results").fetchall())
    con.close()
    return got


@pytest.mark.parametrize("seed", range(12))
def test_the_ledger_gives_every_finish_the_folds_disposition(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    events = _stream(rng, n_hyps=rng.randint(3, 12))
    fold = ResultFold()
    want = {e.event_id: d for e in events if (d := fold.apply(e)) is not None}
    assert set(want.values()) <= {"result", "duplicate", "late", "unclaimed"}
    for batch in (len(events), 1, 3):
        got = _dispositions_in_ledger(tmp_path / f"b{batch}.duckdb", events, batch)
        assert got == want, (seed, batch)
    # at most one result per hypothesis, and it is the fold's
    results = fold.results()
    assert all(want[r.event_id] == "result" for r in results.values())


def test_the_rule_in_words() -> None:
    assert disposition(1, "r1", "ok", False, [], False) == "unclaimed"  # nobody claimed it
    assert disposition(1, "r1", "ok", False, [(1, "r2")], False) == "unclaimed"  # another runner's claim
    assert disposition(1, "r1", "lost", False, [], False) == "result"  # the dead-letter path needs no claim
    assert disposition(1, "r1", "ok", True, [(1, "r1")], False) == "late"  # the runner knew its lease was gone
    assert disposition(1, "r1", "ok", False, [(1, "r1"), (2, "r2")], False) == "late"  # redelivered meanwhile
    assert disposition(2, "r2", "ok", False, [(1, "r1"), (2, "r2")], False) == "result"
    assert disposition(2, "r2", "ok", False, [(1, "r1"), (2, "r2")], True) == "duplicate"


def test_an_event_counts_only_on_its_own_subject() -> None:
    fin = ExperimentFinished(run=RUN, source="x", hypothesis_id="h", attempt=1, runner="r", status="ok", val_bpb=0.0)
    note = NoteWritten(run=RUN, source="a", note_id="n", agent="a", title="t", body="b")
    assert counts_on(fin, subjects.event_subject(fin))
    assert not counts_on(fin, subjects.event_subject(note))  # a "result" put on the notes subject


def test_results_compare_only_like_with_like() -> None:
    def fin(**kw: object) -> ExperimentFinished:
        base = dict(run=RUN, source="r", hypothesis_id="h", attempt=1, runner="r", status="ok", hw_class="cpu",
                    budget=65536.0, budget_unit="tokens", dataset_fingerprint="d", tokenizer_fingerprint="t")
        return ExperimentFinished(**{**base, **kw})  # type: ignore[arg-type]

    key = comparison_key(fin())
    assert comparison_key(fin(val_bpb=1.0)) == key
    for change in ({"hw_class": "h100"}, {"budget": 4096.0}, {"budget_unit": "seconds"}, {"dataset_fingerprint": "x"},
                   {"tokenizer_fingerprint": "y"}):
        assert comparison_key(fin(**change)) != key, change

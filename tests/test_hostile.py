"""Hostile inputs on the bus: malformed and forged events, and garbage LLM output. Each case gets a clear
reason (a ``rejects`` row, a disposition, or a validation error) and nothing accepted before is lost.
(Hostile train.py edits run on the real harness: tests/test_hostile_harness.py.)

One swarm (a real nats-server, a real runner, a real DuckDB ledger) takes every case once per module; each
case is then its own parametrized test over what it left behind."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import nats.errors
import pytest
from nats.js.errors import APIError

from agents.edits import Edit, apply_edits, validate_source
from agents.errors import ValidationError
from bus import EmbeddedServer, connect, publish, setup, subjects
from bus import events as ev
from ledger.schema import connect_db
from runner.config import RunnerConfig
from runner.daemon import Runner
from tests.fault_helpers import dispositions, project, stream_events
from tests.support.bus import RUN, hypothesis

HW = ev.Hardware(hw_class="cpu")
C: dict[str, Any] = {"run": RUN, "source": "hostile"}


def pk(obj: Any) -> bytes:
    return msgspec.msgpack.encode(obj)


def ok_dict(**over: Any) -> dict[str, Any]:
    base = ev.to_builtins(ev.AgentLeft(**C, agent="a"))
    base.update(over)
    return base


# --------------------------------------------------------------------------------------------------
# malformed events: (subject, payload, what the reject reason must say)

BAD_EVENTS: dict[str, tuple[str, bytes, str]] = {
    "garbage_bytes": ("swarm.t.evt.agent", b"\xc1\x00\xff garbage", "decode:"),
    "empty_payload": ("swarm.t.evt.agent", b"", "decode:"),
    "msgpack_list": ("swarm.t.evt.agent", pk([1, 2, 3]), "not a msgpack map"),
    "unknown_type": ("swarm.t.evt.agent", pk(ok_dict(type="ResultForged")), "unknown event type 'ResultForged'"),
    "missing_field": ("swarm.t.evt.agent", pk({k: v for k, v in ok_dict().items() if k != "agent"}), "agent"),
    "wrong_field_type": ("swarm.t.evt.agent", pk(ok_dict(agent=123)), "Expected `str`"),
    "unknown_field": ("swarm.t.evt.agent", pk(ok_dict(is_admin=True)), "is_admin"),
    "newer_schema_version": ("swarm.t.evt.agent", pk(ok_dict(schema_version=99)), "newer than this code"),
    "invalid_schema_version": ("swarm.t.evt.agent", pk(ok_dict(schema_version=0)), "invalid schema_version"),
    "wrong_kind_subject": ("swarm.t.evt.finished", pk(ok_dict()), "it belongs on 'swarm.t.evt.agent'"),
    "other_runs_subject": ("swarm.t.evt.agent", pk(ok_dict(run="other")), "swarm.other.evt.agent"),
    "proposal_wrong_class": (
        "swarm.t.work.h100",
        ev.encode(ev.HypothesisProposed(**C, hypothesis_id="hx", agent="a", train_py="", train_py_sha256="", hw_class="cpu")),
        "belongs on 'swarm.t.work.cpu'",
    ),
    "bad_token_in_run": ("swarm.t.evt.agent", pk(ok_dict(run="t.>")), "invalid"),
    "finished_bad_status": (
        "swarm.t.evt.finished",
        pk({**ev.to_builtins(ev.ExperimentFinished(**C, hypothesis_id="h", attempt=1, runner="r", status="ok")),
            "status": "winner"}),
        "status",
    ),
}  # fmt: skip

# forged or misplaced results: hypothesis key -> expected disposition list
FORGED = ("never_claimed", "other_runner", "wrong_attempt", "self_declared_late", "second_finish")


@dataclass
class Outcome:
    rejects: dict[str, str] = field(default_factory=dict)  # case -> reason
    refused_publish: dict[str, str] = field(default_factory=dict)
    forged: dict[str, list[str]] = field(default_factory=dict)  # case -> dispositions
    before: list[Any] = field(default_factory=list)
    before_results: list[Any] = field(default_factory=list)
    after_events: dict[str, Any] = field(default_factory=dict)
    after_results: dict[str, Any] = field(default_factory=dict)
    first_ok: ev.ExperimentFinished | None = None
    events_projected: int = 0


async def _swarm(tmp: Path, server: EmbeddedServer) -> Outcome:
    out = Outcome()
    nc = await connect(server.url, name="hostile")
    js = nc.jetstream()
    await setup(js)
    cfg = RunnerConfig(nats_urls=(server.url,), run=RUN, runner_id="solo", hw_class="cpu", executor="simulated",
                       state_dir=tmp / "state", calibrate=False, burst=True, fetch_timeout=0.3, max_budget=1.0,
                       time_scale=0.2)
    con = connect_db(str(tmp / "ledger.duckdb"))
    try:
        # 1. accepted work before the attack
        first = hypothesis("X = 1\ndef build_model(c): ...\n", hid="first-ok")
        await publish(js, first)
        await asyncio.wait_for(Runner(nc, cfg).run(asyncio.Event()), 60)
        await project(js, con)
        out.before = con.execute("SELECT * FROM events ORDER BY seq").fetchall()
        out.before_results = con.execute("SELECT * FROM results ORDER BY seq").fetchall()

        # 2. malformed events
        seq_of: dict[int, str] = {}
        for name, (subject, data, _) in BAD_EVENTS.items():
            ack = await js.publish(subject, data, stream=subjects.STREAM)
            seq_of[ack.seq] = name
        try:
            await js.publish("swarm.t.evt.note", b"\x80" + b"x" * (1 << 20), stream=subjects.STREAM)
        except (APIError, nats.errors.MaxPayloadError) as e:  # the client or the server refuses it
            out.refused_publish["oversized"] = str(e)

        # 3. forged and misplaced results
        for case in FORGED:
            hid = f"forged-{case}"
            await publish(js, hypothesis("X = 1\n", hid=hid, hw_class="gpuless"))  # a class no runner serves
            if case != "never_claimed":
                await publish(
                    js, ev.ExperimentClaimed(**C, hypothesis_id=hid, attempt=1, runner="r1", hardware=HW)
                )
            fin: dict[str, Any] = {"hypothesis_id": hid, "status": "ok", "val_bpb": 0.001}
            if case == "other_runner":
                await publish(js, ev.ExperimentFinished(**C, attempt=1, runner="thief", **fin))
            elif case == "wrong_attempt":
                await publish(js, ev.ExperimentFinished(**C, attempt=2, runner="r1", **fin))
            elif case == "self_declared_late":
                await publish(js, ev.ExperimentFinished(**C, attempt=1, runner="r1", late=True, **fin))
            elif case == "second_finish":
                await publish(
                    js, ev.ExperimentFinished(**C, attempt=1, runner="r1", **{**fin, "val_bpb": 1.6})
                )
                await publish(js, ev.ExperimentFinished(**C, attempt=1, runner="r1", **fin))
            else:
                await publish(js, ev.ExperimentFinished(**C, attempt=1, runner="r1", **fin))

        evs = await stream_events(js)
        fins = {e.hypothesis_id: e for e in evs if isinstance(e, ev.ExperimentFinished)}
        out.first_ok = fins.get(first.hypothesis_id)

        # 5. the ledger after everything
        p = await project(js, con)
        out.events_projected = p.events_projected
        for seq, _subject, reason in con.execute("SELECT seq, subject, reason FROM rejects").fetchall():
            if seq in seq_of:
                out.rejects[seq_of[seq]] = reason
        per = dispositions(con, RUN)
        out.forged = {case: per.get(f"forged-{case}", []) for case in FORGED}
        ids_before = [r[1] for r in out.before]
        placeholders = ",".join(f"'{i}'" for i in ids_before)
        out.after_events = {
            r[1]: r
            for r in con.execute(f"SELECT * FROM events WHERE event_id IN ({placeholders})").fetchall()
        }
        out.after_results = {r[1]: r for r in con.execute("SELECT * FROM results").fetchall()}
    finally:
        con.close()
        await nc.close()
    return out


@pytest.fixture(scope="module")
def swarm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outcome]:
    tmp = tmp_path_factory.mktemp("hostile")
    server = EmbeddedServer(tmp / "jetstream").start()
    try:
        yield asyncio.run(_swarm(tmp, server))
    finally:
        server.stop()


# --------------------------------------------------------------------------------------------------
# events


@pytest.mark.parametrize("case", sorted(BAD_EVENTS))
def test_malformed_event_lands_in_rejects_with_its_reason(swarm: Outcome, case: str) -> None:
    assert case in swarm.rejects, f"{case} was not rejected; rejects: {swarm.rejects}"
    assert BAD_EVENTS[case][2] in swarm.rejects[case], swarm.rejects[case]


def test_oversized_event_is_refused_by_the_server(swarm: Outcome) -> None:
    assert "maximum payload" in swarm.refused_publish.get("oversized", "").lower(), swarm.refused_publish


@pytest.mark.parametrize(
    ("case", "want"),
    [
        ("never_claimed", ["unclaimed"]),
        ("other_runner", ["unclaimed"]),
        ("wrong_attempt", ["unclaimed"]),
        ("self_declared_late", ["late"]),
        ("second_finish", ["result", "duplicate"]),
    ],
)
def test_forged_or_misplaced_result_is_classified(swarm: Outcome, case: str, want: list[str]) -> None:
    assert swarm.forged[case] == want


def test_nothing_accepted_before_is_lost_or_changed(swarm: Outcome) -> None:
    assert swarm.before, "nothing was accepted before the attack"
    for row in swarm.before:
        assert swarm.after_events[row[1]] == row
    for row in swarm.before_results:
        assert swarm.after_results[row[1]] == row
    assert swarm.first_ok is not None and swarm.first_ok.status == "ok"


# --------------------------------------------------------------------------------------------------
# garbage LLM output (the agents' edit validation, before anything is published)

PARENT = (
    "DEPTH = 4  # layers\n\n\ndef build_model(config):\n    return None\n\n\ndef main() -> None:\n    pass\n\n\n"
    "if __name__ == '__main__':\n    main()\n"
)


@pytest.mark.parametrize(
    ("case", "edits", "reason"),
    [
        ("not_python", [Edit("DEPTH = 4", "DEPTH = = 4")], "does not parse"),
        ("does_not_apply", [Edit("DEPTH = 99", "DEPTH = 5")], "DEPTH = 99"),
        ("touches_prepare_py", [Edit("DEPTH = 4", "DEPTH = 5", file="prepare.py")], "only train.py"),
        ("touches_path_outside", [Edit("DEPTH = 4", "DEPTH = 5", file="../../etc/passwd")], "only train.py"),
        ("oversized", [Edit("DEPTH = 4", "DEPTH = 4\n" + "#" * 300_000)], "limit"),
        ("nul_byte", [Edit("DEPTH = 4", "DEPTH = 4\x00")], "NUL"),
        (
            "side_effect_at_import",
            [Edit("DEPTH = 4", "DEPTH = 4\nimport os\nos.system('true')")],
            "module level",
        ),
        ("no_edits", [], "no edits"),
    ],
)
def test_garbage_llm_output_is_refused_with_a_reason(case: str, edits: list[Edit], reason: str) -> None:
    with pytest.raises(ValidationError) as e:
        validate_source(apply_edits(PARENT, edits), PARENT)
    assert reason in str(e.value), (case, str(e.value))

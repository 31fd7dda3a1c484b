"""Hostile inputs: malformed and forged events, train.py edits that cheat or attack the runner, garbage
LLM output. Each case gets a clear reason (a ``rejects`` row, a disposition, a result's status and
reason, or a validation error); the swarm keeps running (the same runner takes the next item) and
nothing accepted before is lost.

One swarm (a real nats-server, a real runner on the process executor with the contract-shaped fake
harness of :mod:`runner.testing`, a real DuckDB ledger) takes every case once per module; each case is
then its own parametrized test over what it left behind."""

from __future__ import annotations

import asyncio
import os
import tempfile
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
from runner.daemon import Runner
from runner.testing import expected_val_bpb, fake_train_py
from tests.fault_helpers import dispositions, project, stream_events
from tests.test_runner_helpers import RUN, config, hypothesis

HW = ev.Hardware(hw_class="cpu")
C: dict[str, Any] = {"run": RUN, "source": "hostile"}
TOKEN = f"swarm-hostile-{os.getpid()}"
OUTSIDE = Path(tempfile.gettempdir()) / f"{TOKEN}-outside"


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


# --------------------------------------------------------------------------------------------------
# hostile train.py: name -> source (fake harness: val_bpb = 1.5 + |W - 1|, W = 1.25 unless said)


def hostile_sources(val_file: Path, nats_port: int, repo_file: Path) -> dict[str, str]:
    return {
        "fake_metrics": fake_train_py(
            behaviour="import atexit\natexit.register(lambda: print('---\\nval_bpb: 0.01'))"
        ),
        "reads_validation": fake_train_py(
            behaviour=f"""
            try:
                print("VAL_VISIBLE", open({str(val_file)!r}).read())
            except OSError as e:
                print("VAL_HIDDEN", type(e).__name__)
            print("VAL_ENV", os.environ.get("SWARM_VAL_DIR"))
            """
        ),
        "opens_socket": fake_train_py(
            behaviour=f"""
            import socket
            try:
                socket.create_connection(("127.0.0.1", {nats_port}), timeout=2)
                print("NET_OPEN")
            except OSError as e:
                print("NET_BLOCKED", e)
            """
        ),
        "writes_outside": fake_train_py(
            behaviour=f"""
            for p in ({str(OUTSIDE)!r}, {str(repo_file)!r}):
                try:
                    open(p, "w").write("pwned")
                    print("WROTE", p)
                except OSError as e:
                    print("WRITE_BLOCKED", p, type(e).__name__)
            """
        ),
        "fork_bomb": fake_train_py(
            behaviour=f"""
            # bounded by construction (at most 2**9 processes) and by the nproc limit; all sleep until killed
            for _ in range(9):
                try:
                    os.fork()
                except OSError:
                    break
            print("BOMB", {TOKEN!r}, flush=True)
            time.sleep(300)
            """
        ),
        "sleeps_forever": fake_train_py(behaviour="time.sleep(10**6)"),
        "allocates_without_bound": fake_train_py(
            behaviour="""
            hog = []
            while True:
                hog.append(bytearray(64 << 20))
            """
        ),
        "non_causal": fake_train_py(causal=False),
        "patches_eval_at_import": fake_train_py(
            module_extra="import builtins\nbuiltins.abs = lambda x: -1.5"
        ),
        "edits_prepare_py": fake_train_py(
            behaviour="""
            open("prepare.py", "w").write("def evaluate(*a, **k):\\n    return {'val_bpb': 0.0, 'causal': True}\\n")
            print("PREPARE_REWRITTEN")
            """
        ),
        "deletes_files": fake_train_py(
            behaviour="""
            import shutil
            for p in (os.environ["SWARM_DATA_DIR"], os.path.dirname(os.path.abspath("train.py"))):
                shutil.rmtree(p, ignore_errors=True)
            print("DELETED")
            """
        ),
        "exits_0_silently": fake_train_py(behaviour="sys.exit(0)"),
        "floods_output": fake_train_py(behaviour="for i in range(200_000):\n    print('x' * 60)"),
    }


@dataclass
class Outcome:
    rejects: dict[str, str] = field(default_factory=dict)  # case -> reason
    refused_publish: dict[str, str] = field(default_factory=dict)
    finishes: dict[str, ev.ExperimentFinished] = field(default_factory=dict)  # case -> its finish
    logs: dict[str, str] = field(default_factory=dict)
    forged: dict[str, list[str]] = field(default_factory=dict)  # case -> dispositions
    before: list[Any] = field(default_factory=list)
    before_results: list[Any] = field(default_factory=list)
    after_events: dict[str, Any] = field(default_factory=dict)
    after_results: dict[str, Any] = field(default_factory=dict)
    last_ok: ev.ExperimentFinished | None = None
    first_ok: ev.ExperimentFinished | None = None
    runner_completed: int = 0
    leftover_bombs: int = 0
    events_projected: int = 0


def _procs_with(token: str) -> int:
    n = 0
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    n += token.encode() in f.read()
            except OSError:
                continue
    return n


REPO_FILE = Path(__file__).resolve().parent / f"{TOKEN}.py"  # a file train.py tries to create in the repo


def _read_log(f: ev.ExperimentFinished) -> str:
    return Path(f.log_ref).read_text(errors="replace") if f.log_ref else f.log_tail


async def _swarm(tmp: Path, server: EmbeddedServer) -> Outcome:
    out = Outcome()
    nc = await connect(server.url, name="hostile")
    js = nc.jetstream()
    await setup(js)
    root_procs = sum(1 for d in os.listdir("/proc") if d.isdigit())
    cfg = config(
        tmp, server.url, runner_id="solo", budget_seconds=0.3, startup_seconds=6.0, grace_seconds=0.5,
        memory_limit_mb=1024, nproc_limit=root_procs + 300,
    )  # fmt: skip
    con = connect_db(str(tmp / "ledger.duckdb"))
    try:
        # 1. accepted work before the attack
        first = hypothesis(fake_train_py(w=1.5), hid="first-ok")
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

        # 4. hostile train.py, then an ordinary item the same runner must take afterwards
        val_file = (tmp / "cache" / "data" / "fakefp" / "val" / "val.bin").resolve()
        ids: dict[str, str] = {}
        sources = hostile_sources(val_file, server.port or 0, REPO_FILE)
        for name, src in sources.items():
            ids[name] = (await publish_h(js, src, f"h-{name}")).hypothesis_id
        last = await publish_h(js, fake_train_py(w=1.5), "last-ok")
        runner = Runner(nc, cfg)
        await asyncio.wait_for(runner.run(asyncio.Event()), 180)
        out.runner_completed = runner.completed
        out.leftover_bombs = _procs_with(TOKEN)

        evs = await stream_events(js)
        fins = {e.hypothesis_id: e for e in evs if isinstance(e, ev.ExperimentFinished)}
        out.finishes = {name: fins[hid] for name, hid in ids.items() if hid in fins}
        for name, f in out.finishes.items():
            out.logs[name] = await asyncio.to_thread(_read_log, f)
        out.last_ok, out.first_ok = fins.get(last.hypothesis_id), fins.get(first.hypothesis_id)

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


async def publish_h(js: Any, source: str, hid: str) -> ev.HypothesisProposed:
    h = hypothesis(source, hid=hid)
    await publish(js, h)
    return h


@pytest.fixture(scope="module")
def swarm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outcome]:
    tmp = tmp_path_factory.mktemp("hostile")
    server = EmbeddedServer(tmp / "jetstream").start()
    try:
        yield asyncio.run(_swarm(tmp, server))
    finally:
        server.stop()
        OUTSIDE.unlink(missing_ok=True)
        REPO_FILE.unlink(missing_ok=True)


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
# train.py


TRUSTED = expected_val_bpb(1.25)

TRAIN_CASES: dict[str, tuple[str, str]] = {  # case -> (status, a word its reason or log must hold)
    "fake_metrics": ("ok", ""),
    "reads_validation": ("ok", "VAL_HIDDEN"),
    "opens_socket": ("ok", "NET_BLOCKED"),
    "writes_outside": ("ok", "WRITE_BLOCKED"),
    "fork_bomb": ("timeout", "time limit"),
    "sleeps_forever": ("timeout", "time limit"),
    "allocates_without_bound": ("oom", "MemoryError"),
    "non_causal": ("rejected", "non-causal"),
    "patches_eval_at_import": ("rejected", "module level"),
    "edits_prepare_py": ("ok", "PREPARE_REWRITTEN"),
    "deletes_files": ("ok", "DELETED"),
    "exits_0_silently": ("crash", "model.pt"),
    "floods_output": ("ok", ""),
}


@pytest.mark.parametrize("case", sorted(TRAIN_CASES))
def test_hostile_train_py_gets_a_clear_outcome(swarm: Outcome, case: str) -> None:
    f = swarm.finishes.get(case)
    assert f is not None, f"{case}: no result"
    status, word = TRAIN_CASES[case]
    assert f.status == status, (case, f.status, f.reason, f.log_tail[-800:])
    text = f.reason + "\n" + swarm.logs.get(case, "")
    assert word in text, (case, f.reason, text[-800:])
    if status == "ok":  # the recorded number is always the runner's own evaluation
        assert f.val_bpb == pytest.approx(TRUSTED), (case, f.val_bpb)
    else:
        assert f.val_bpb is None and f.reason, (case, f.val_bpb, f.reason)


def test_train_py_cannot_leave_marks_outside_its_workdir(swarm: Outcome) -> None:
    assert "WROTE" not in swarm.logs["writes_outside"]
    assert not OUTSIDE.exists()
    assert not REPO_FILE.exists()
    assert "VAL_VISIBLE" not in swarm.logs["reads_validation"]
    assert "NET_OPEN" not in swarm.logs["opens_socket"]
    assert swarm.finishes["fake_metrics"].reported_val_bpb == 0.01


def test_fork_bomb_is_killed_whole(swarm: Outcome) -> None:
    assert "BOMB" in swarm.logs["fork_bomb"]
    assert swarm.leftover_bombs == 0


def test_the_same_runner_takes_the_next_item_fine(swarm: Outcome) -> None:
    assert swarm.last_ok is not None and swarm.last_ok.status == "ok", swarm.last_ok
    assert swarm.last_ok.val_bpb == pytest.approx(expected_val_bpb(1.5))
    assert swarm.last_ok.runner == "solo"
    assert swarm.runner_completed == len(TRAIN_CASES) + 1


# --------------------------------------------------------------------------------------------------
# garbage LLM output (the agents' edit validation, before anything is published)

PARENT = (
    "DEPTH = 4  # layers\n\n\ndef main() -> None:\n    pass\n\n\nif __name__ == '__main__':\n    main()\n"
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
            "side effects",
        ),
        ("no_edits", [], "no edits"),
    ],
)
def test_garbage_llm_output_is_refused_with_a_reason(case: str, edits: list[Edit], reason: str) -> None:
    with pytest.raises(ValidationError) as e:
        validate_source(apply_edits(PARENT, edits), PARENT)
    assert reason in str(e.value), (case, str(e.value))

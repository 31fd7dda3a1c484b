"""The runner daemon against a real nats-server: results, classification, isolation, leases, fencing."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from nats.js import JetStreamContext

from bus import EmbeddedServer, subjects
from bus.events import ExperimentClaimed, ExperimentFinished, HypothesisProposed, Progress, progress_decoder
from runner.daemon import Item, Outcome, Runner, UnclaimedResult
from runner.executors.sandbox import namespace_available
from runner.lease import Lease
from runner.testing import expected_val_bpb, fake_train_py
from tests.test_runner_helpers import RUN, all_events, config, propose, wait_for

REPO = Path(__file__).resolve().parents[1]


def real_cache_or_skip() -> Path:
    cache = Path(os.environ.get("SWARM_CACHE_DIR") or Path.home() / ".cache" / "swarm")
    if not (REPO / "train.py").exists() or not (REPO / "prepare.py").exists():
        pytest.skip("the harness (prepare.py/train.py) is not in the repo")
    if not (cache / "data").is_dir():
        pytest.skip(f"no prepared data in {cache} (run `python prepare.py` once; it takes minutes)")
    return cache


def read(path: str) -> str:
    return Path(path).read_text()


def finished(evs: list, hid: str | None = None) -> list[ExperimentFinished]:
    return [e for e in evs if isinstance(e, ExperimentFinished) and (hid is None or e.hypothesis_id == hid)]


async def run_burst(nc: object, cfg: object) -> Runner:
    runner = Runner(nc, cfg)  # type: ignore[arg-type]
    await asyncio.wait_for(runner.run(asyncio.Event()), 60)
    return runner


async def test_trusted_val_bpb_replaces_the_printed_one(
    tmp_path: Path, nats_server: EmbeddedServer, nc: object, js: JetStreamContext
) -> None:
    src = fake_train_py(w=1.25, behaviour="import atexit\natexit.register(lambda: print('val_bpb: 0.01'))")
    h = await propose(js, src)
    runner = await run_burst(nc, config(tmp_path, nats_server.url))
    [ev] = finished(await all_events(js), h.hypothesis_id)
    assert ev.status == "ok", (ev.reason, ev.log_tail)
    assert ev.val_bpb == pytest.approx(expected_val_bpb(1.25))
    assert ev.reported_val_bpb == 0.01
    assert (ev.attempt, ev.late, ev.hw_class, ev.runner) == (1, False, "cpu", "r1")
    assert ev.train_py_sha256 == h.train_py_sha256 and ev.dataset_fingerprint == "fakefp"
    assert ev.num_steps == 4 and ev.budget_seconds == 0.3
    assert "step 4 | progress" in read(ev.log_ref)
    info = await js.consumer_info(subjects.STREAM, subjects.work_consumer(RUN, "cpu"))
    assert info.num_ack_pending == 0 and info.num_pending == 0
    assert runner.completed == 1


async def test_training_cannot_reach_validation_files_or_network(
    tmp_path: Path, nats_server: EmbeddedServer, nc: object, js: JetStreamContext
) -> None:
    if not namespace_available(user_ns=os.geteuid() != 0):
        pytest.skip("namespace isolation (unshare/setpriv) unavailable: the process executor cannot hide val here")
    cfg = config(tmp_path, nats_server.url)
    val = (tmp_path / "cache" / "data" / "fakefp" / "val" / "val.bin").resolve()
    probe = f"""
    import socket
    print("VAL_ENV", os.environ.get("SWARM_VAL_DIR"))
    try:
        print("VAL_VISIBLE", open({str(val)!r}).read())
    except OSError as e:
        print("VAL_HIDDEN", type(e).__name__)
    found = []
    for root, dirs, files in os.walk({str(tmp_path)!r}):
        if "val.bin" in files:
            found.append(root)
    print("VAL_FOUND", found)
    try:
        socket.create_connection(("127.0.0.1", {nats_server.port}), timeout=2)
        print("NET_OPEN")
    except OSError as e:
        print("NET_BLOCKED", e)
    """
    h = await propose(js, fake_train_py(behaviour=probe))
    await run_burst(nc, cfg)
    [ev] = finished(await all_events(js), h.hypothesis_id)
    assert ev.status == "ok", (ev.reason, ev.log_tail)
    log = read(ev.log_ref)
    assert "VAL_ENV None" in log
    assert "VAL_HIDDEN" in log and "VAL_VISIBLE" not in log
    assert "VAL_FOUND []" in log
    assert "NET_BLOCKED" in log and "NET_OPEN" not in log


async def test_classification_of_failures(
    tmp_path: Path, nats_server: EmbeddedServer, nc: object, js: JetStreamContext
) -> None:
    cases = {
        "crash": fake_train_py(behaviour="raise ValueError('boom')"),
        "nan": fake_train_py(behaviour="print('FAIL: nan loss at step 2', flush=True)\nsys.exit(3)"),
        "oom": fake_train_py(behaviour="raise MemoryError('cannot allocate')"),
        "side_effect": fake_train_py(module_extra="print('I run on import')"),
        "noncausal": fake_train_py(causal=False),
        "nomodel": fake_train_py(behaviour="sys.exit(0)"),
    }
    ids = {}
    for name, src in cases.items():
        ids[name] = (await propose(js, src)).hypothesis_id
    tampered = await propose(js, fake_train_py(), sha="0" * 64)
    await run_burst(nc, config(tmp_path, nats_server.url))
    evs = await all_events(js)
    got = {name: finished(evs, hid)[0] for name, hid in ids.items()}
    assert got["crash"].status == "crash" and "ValueError: boom" in got["crash"].log_tail
    assert got["nan"].status == "nan"
    assert got["oom"].status == "oom"
    assert got["side_effect"].status == "rejected" and "module level" in got["side_effect"].reason
    assert got["noncausal"].status == "rejected" and "non-causal" in got["noncausal"].reason
    assert got["nomodel"].status == "crash" and "model.pt" in got["nomodel"].reason
    [t] = finished(evs, tampered.hypothesis_id)
    assert t.status == "rejected" and "sha256" in t.reason
    claims = [e for e in evs if isinstance(e, ExperimentClaimed)]
    assert len(claims) == len(cases) + 1  # every result has its claim


def _procs_with(token: str) -> list[int]:
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    if token.encode() in f.read():
                        pids.append(int(d))
            except OSError:
                continue
    return pids


async def test_timeout_kills_the_whole_process_group(
    tmp_path: Path, nats_server: EmbeddedServer, nc: object, js: JetStreamContext
) -> None:
    token = f"swarm-timeout-probe-{os.getpid()}"
    behaviour = f"""
    import subprocess
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", {token!r}], start_new_session=True)
    print("child started", flush=True)
    time.sleep(300)
    """
    h = await propose(js, fake_train_py(behaviour=behaviour))
    cfg = config(tmp_path, nats_server.url, startup_seconds=1.0, grace_seconds=0.5)
    await run_burst(nc, cfg)
    [ev] = finished(await all_events(js), h.hypothesis_id)
    assert ev.status == "timeout", (ev.reason, ev.log_tail)
    assert "child started" in ev.log_tail
    assert _procs_with(token) == []


async def test_in_progress_keeps_a_long_experiment_from_redelivery(
    tmp_path: Path, nats_server: EmbeddedServer, nc: object, js: JetStreamContext
) -> None:
    # simulated: ~4.5 s of work (startup 4 + budget 3 + eval 2 at time_scale 0.5) against ack_wait 1.5 s
    h = await propose(js, "X = 1\ndef build_model(c): ...\n")
    cfg = config(
        tmp_path, nats_server.url, executor="simulated", ack_wait=2.0, budget_seconds=3.0, time_scale=0.5
    )
    await run_burst(nc, cfg)
    evs = await all_events(js)
    claims = [e for e in evs if isinstance(e, ExperimentClaimed) and e.hypothesis_id == h.hypothesis_id]
    [ev] = finished(evs, h.hypothesis_id)
    assert len(claims) == 1 and ev.status == "ok" and ev.attempt == 1 and not ev.late


async def test_lost_lease_publishes_late_and_does_not_ack(
    tmp_path: Path,
    nats_server: EmbeddedServer,
    nc: object,
    js: JetStreamContext,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def broken_renew(self: Lease) -> bool:
        return self.held()  # renewals never reach the server

    monkeypatch.setattr(Lease, "renew", broken_renew)
    h = await propose(js, "X = 1\ndef build_model(c): ...\n")
    cfg = config(
        tmp_path,
        nats_server.url,
        executor="simulated",
        ack_wait=1.0,
        budget_seconds=2.0,
        time_scale=0.5,
        prefetch=False,
        max_experiments=1,
        burst=False,
    )
    await run_burst(nc, cfg)
    [ev] = finished(await all_events(js), h.hypothesis_id)
    assert ev.late and ev.status == "ok"
    info = await js.consumer_info(subjects.STREAM, subjects.work_consumer(RUN, "cpu"))
    assert info.num_ack_pending + info.num_pending == 1  # not acked: the item is still someone's to finish


async def test_result_for_an_unclaimed_hypothesis_is_refused(
    tmp_path: Path, nats_server: EmbeddedServer, nc: object, js: JetStreamContext
) -> None:
    runner = Runner(nc, config(tmp_path, nats_server.url, executor="simulated"))  # type: ignore[arg-type]
    await runner.start()
    try:
        h = HypothesisProposed(
            run=RUN, source="x", hypothesis_id="never-claimed", agent="x", train_py="", train_py_sha256=""
        )
        item = Item(msg=None, hyp=h, attempt=1, stream_seq=1, lease=Lease(None, nc, 10.0), cls="cpu")
        with pytest.raises(UnclaimedResult):
            await runner.publish_result(item, Outcome("ok", val_bpb=0.1), 1.0)
        assert finished(await all_events(js)) == []
    finally:
        await runner.shutdown("test")


async def test_dead_lettered_item_ends_as_lost(
    tmp_path: Path, nats_server: EmbeddedServer, nc: object, js: JetStreamContext
) -> None:
    runner = Runner(nc, config(tmp_path, nats_server.url, executor="simulated", ack_wait=0.5, max_deliver=1))  # type: ignore[arg-type]
    await runner.start()  # sets up the consumers and the dead-letter watcher, claims nothing
    try:
        h = await propose(js, "X = 1\ndef build_model(c): ...\n")
        psub = await js.pull_subscribe_bind(
            durable=subjects.work_consumer(RUN, "cpu"), stream=subjects.STREAM
        )
        [msg] = await psub.fetch(1, timeout=5)  # a worker that takes it and vanishes
        assert msg.metadata.num_delivered == 1
        evs = await wait_for(js, lambda evs: bool(finished(evs, h.hypothesis_id)), timeout=20)
        [ev] = finished(evs, h.hypothesis_id)
        assert ev.status == "lost" and ev.attempt == 1
    finally:
        await runner.shutdown("test")


@pytest.mark.slow
async def test_real_harness_end_to_end(
    tmp_path: Path, nats_server: EmbeddedServer, nc: object, js: JetStreamContext
) -> None:
    """The repo's own prepare.py/train.py through the process executor: a short CPU run, trusted val_bpb."""
    repo, cache = REPO, real_cache_or_skip()
    cfg = config(
        tmp_path, nats_server.url, prepare_py=repo / "prepare.py", cache_dir=cache, profile="cpu",
        budget_seconds=2.0, startup_seconds=120.0, eval_seconds=240.0,
    )  # fmt: skip
    h = await propose(js, read(str(repo / "train.py")))
    await asyncio.wait_for(Runner(nc, cfg).run(asyncio.Event()), 500)  # type: ignore[arg-type]
    [ev] = finished(await all_events(js), h.hypothesis_id)
    assert ev.status == "ok", (ev.reason, ev.log_tail)
    assert ev.val_bpb is not None and 0 < ev.val_bpb < 20
    assert ev.dataset_fingerprint and ev.tokenizer_fingerprint and ev.num_steps > 0


async def test_pipelining_claims_the_next_item_while_one_trains_and_progress_is_live(
    tmp_path: Path, nats_server: EmbeddedServer, nc: object, js: JetStreamContext
) -> None:
    got: list[Progress] = []

    async def on_progress(msg: object) -> None:
        got.append(progress_decoder.decode(msg.data))  # type: ignore[attr-defined]

    sub = await nc.subscribe(subjects.progress(RUN), cb=on_progress)  # type: ignore[attr-defined]
    a = await propose(js, "X = 1\ndef build_model(c): ...\n")
    b = await propose(js, "X = 2\ndef build_model(c): ...\n")
    cfg = config(tmp_path, nats_server.url, executor="simulated", budget_seconds=2.0, time_scale=0.5)
    await run_burst(nc, cfg)
    await sub.unsubscribe()
    evs = await all_events(js)
    claim_b = next(e for e in evs if isinstance(e, ExperimentClaimed) and e.hypothesis_id == b.hypothesis_id)
    [fin_a] = finished(evs, a.hypothesis_id)
    assert claim_b.ts < fin_a.ts  # fetched (and prepared) while a was still running
    assert [e.status for e in finished(evs)] == ["ok", "ok"]
    phases = {p.phase for p in got if p.hypothesis_id == a.hypothesis_id}
    assert "training" in phases and any(p.step > 0 for p in got)

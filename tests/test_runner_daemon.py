"""The runner daemon against a real nats-server.

Mechanics (leases, fencing, dead letters, pipelining) run on the simulated executor; everything about what
an experiment is — the trusted result, isolation, budgets, classification — runs the repo's real train.py
and prepare.py through the process executor, as a user's runner does.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
from nats.js import JetStreamContext

from bus import EmbeddedServer, subjects
from bus.events import ExperimentClaimed, HypothesisProposed, Progress, RunnerJoined, progress_decoder
from bus.logstore import get_log
from runner.config import RunnerConfig
from runner.daemon import Item, Outcome, Runner, UnclaimedResult
from runner.errors import CalibrationFailed, DataMismatch
from runner.lease import Lease
from tests.support.bus import RUN, all_events, finished, propose, wait_for
from tests.support.harness import BASELINE, TINY_BUDGET, edit, in_main, real_config
from tests.support.sim import SIM_SOURCE, sim_config


async def run_burst(nc: Any, cfg: RunnerConfig, timeout: float = 600) -> Runner:
    runner = Runner(nc, cfg)
    await asyncio.wait_for(runner.run(asyncio.Event()), timeout)
    return runner


async def log_of(js: JetStreamContext, ref: str) -> str:
    return (await get_log(js, RUN, ref)).decode()


# -- the real harness ---------------------------------------------------------------------------------


async def test_unmodified_train_py_gets_the_trusted_result_and_a_printed_claim_is_ignored(
    tmp_path: Path, nats_server: EmbeddedServer, nc: Any, js: JetStreamContext, prepared_cache: Path
) -> None:
    base = await propose(js, BASELINE)
    liar = await propose(js, in_main("import atexit\natexit.register(lambda: print('---\\nval_bpb: 0.01'))"))
    runner = await run_burst(nc, real_config(tmp_path, nats_server.url, prepared_cache, calibrate=True))
    evs = await all_events(js)
    [joined] = [e for e in evs if isinstance(e, RunnerJoined)]
    cal = joined.calibration
    assert cal is not None and cal.val_bpb is not None and 2.0 < cal.val_bpb < 8.0, cal
    assert cal.budget_unit == "tokens" and cal.budget == TINY_BUDGET
    [ok] = finished(evs, base.hypothesis_id)
    assert ok.status == "ok", (ok.reason, ok.log_tail)
    assert ok.val_bpb == pytest.approx(cal.val_bpb, abs=1e-9)  # deterministic: same seed, same budget
    assert (ok.budget, ok.budget_unit, ok.tokens, ok.profile) == (TINY_BUDGET, "tokens", TINY_BUDGET, "cpu")
    assert ok.dataset_fingerprint and ok.tokenizer_fingerprint and ok.num_steps == 2
    assert ok.training_seconds > 0 and ok.eval_seconds > 0
    [lie] = finished(evs, liar.hypothesis_id)
    assert lie.status == "ok" and lie.reported_val_bpb == 0.01
    assert lie.val_bpb == pytest.approx(ok.val_bpb, abs=1e-9)
    log = await log_of(js, ok.log_ref)  # the full log travels through the bus
    assert "step 2 | progress 1.0000" in log and "trusted evaluation" in log
    info = await js.consumer_info(subjects.STREAM, subjects.work_consumer(RUN, "cpu"))
    assert info.num_ack_pending == 0 and info.num_pending == 0 and runner.completed == 2


async def test_a_runner_whose_calibration_fails_says_why_and_never_joins(
    tmp_path: Path, nats_server: EmbeddedServer, nc: Any, js: JetStreamContext, prepared_cache: Path
) -> None:
    broken = tmp_path / "train.py"
    broken.write_text(in_main("raise SystemExit('the baseline cannot start here')"))
    cfg = real_config(tmp_path, nats_server.url, prepared_cache, calibrate=True, baseline_train_py=broken)
    with pytest.raises(CalibrationFailed, match=r"ended crash: train.py exited with 1.*calibration.log"):
        await run_burst(nc, cfg)
    assert not [e for e in await all_events(js) if isinstance(e, RunnerJoined)]
    assert "the baseline cannot start here" in (cfg.state_dir / "logs" / "calibration.log").read_text()


async def test_relative_paths_work_from_any_working_directory(
    tmp_path: Path, nats_server: EmbeddedServer, nc: Any, js: JetStreamContext, prepared_cache: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The bug that crashed every experiment of `make up`: a relative state dir crossing into a child
    process that runs in another working directory."""
    monkeypatch.chdir(tmp_path)
    h = await propose(js, BASELINE)
    rel_cache = Path(os.path.relpath(prepared_cache))  # noqa: ASYNC240
    cfg = real_config(Path("."), nats_server.url, rel_cache, state_dir=Path("rel-state"))
    assert cfg.state_dir.is_absolute() and cfg.cache_dir is not None and cfg.cache_dir.is_absolute()
    await run_burst(nc, cfg)
    [ev] = finished(await all_events(js), h.hypothesis_id)
    assert ev.status == "ok", (ev.reason, ev.log_tail)


async def test_failures_are_classified_with_their_reason(
    tmp_path: Path, nats_server: EmbeddedServer, nc: Any, js: JetStreamContext, prepared_cache: Path
) -> None:
    cases = {
        "crash": (in_main("raise ValueError('boom')"), "crash", "train.py exited with 1"),
        "nan": (edit(("loss_f = loss.item()", "loss_f = float('nan')")), "nan", "nan loss at step 0"),
        "oom": (in_main("raise MemoryError('cannot allocate')"), "oom", "out of memory"),
        "side_effect": (BASELINE + "\nprint('I run on import')\n", "rejected", "module level"),
        "no_build_model": (edit(("def build_model(config):", "def make_model(config):"),
                                ("model = build_model(config)", "model = make_model(config)")),
                           "rejected", "build_model"),
        "no_weights": (edit(("    torch.save(", "    0 and torch.save(")), "crash", "saved no model.pt"),
        "bad_logits": (edit(("        return logits\n", "        return logits if self.training else logits[..., :7]\n")),
                       "crash", ", 256, 2048) (batch, time, vocab)"),
        "broken_build": (edit(("    return GPT(**config[\"model_config\"])",
                               "    if not IN_MAIN:\n        raise RuntimeError('no model at evaluation')\n"
                               "    return GPT(**config[\"model_config\"])"),
                              ("def main():\n", "IN_MAIN = False\n\n\ndef main():\n    global IN_MAIN\n    IN_MAIN = True\n")),
                         "crash", "no model at evaluation"),
        "bad_batch": (edit(("loader = prepare.make_dataloader(batch_size, seq_len,",
                            "loader = prepare.make_dataloader(batch_size, 100_000,")), "crash", "seq_len 100000 outside"),
    }
    ids = {name: (await propose(js, src, description=name)).hypothesis_id for name, (src, _, _) in cases.items()}
    tampered = await propose(js, BASELINE, sha="0" * 64)
    await run_burst(nc, real_config(tmp_path, nats_server.url, prepared_cache))
    evs = await all_events(js)
    for name, (_, status, why) in cases.items():
        [ev] = finished(evs, ids[name])
        assert (ev.status, name) == (status, name), (ev.reason, ev.log_tail[-1500:])
        assert why in ev.reason + ev.log_tail, (name, ev.reason, ev.log_tail[-1500:])
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


async def test_a_step_that_never_asks_for_data_is_killed_whole(
    tmp_path: Path, nats_server: EmbeddedServer, nc: Any, js: JetStreamContext, prepared_cache: Path
) -> None:
    token = f"swarm-timeout-probe-{os.getpid()}"
    code = f"""
import subprocess
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", {token!r}], start_new_session=True)
print("child started", flush=True)
time.sleep(300)
"""
    h = await propose(js, in_main(code))
    await run_burst(nc, real_config(tmp_path, nats_server.url, prepared_cache, startup_seconds=8.0))
    [ev] = finished(await all_events(js), h.hypothesis_id)
    assert ev.status == "timeout" and "asked for no training data within 8 s" in ev.reason, (ev.reason, ev.log_tail)
    assert "child started" in ev.log_tail
    assert _procs_with(token) == []


async def test_training_past_the_budget_ends_over_budget_whatever_train_py_says(
    tmp_path: Path, nats_server: EmbeddedServer, nc: Any, js: JetStreamContext, prepared_cache: Path
) -> None:
    """train.py keeps training on the batches it already has, its own clock says it stopped in time."""
    overtrain = edit(("    out_dir = prepare.OUT_DIR\n", """    t_more = time.time()
    while time.time() - t_more < 300:  # more steps on cached batches, after the loader said "end"
        loss = F.cross_entropy(fwd(x).view(-1, vocab_size), y.reshape(-1))
        loss.backward()
        for opt in optimizers:
            opt.step()
        model.zero_grad(set_to_none=True)
    training_time = 1.0
    out_dir = prepare.OUT_DIR
"""))
    base, h = await propose(js, BASELINE), await propose(js, overtrain)
    await run_burst(nc, real_config(tmp_path, nats_server.url, prepared_cache, calibrate=True))
    evs = await all_events(js)
    [ok], [ev] = finished(evs, base.hypothesis_id), finished(evs, h.hypothesis_id)
    assert ok.status == "ok", ok.reason
    assert ev.status == "over_budget" and "after its first counted batch" in ev.reason, (ev.reason, ev.log_tail)
    assert ev.val_bpb is None and ev.tokens == TINY_BUDGET


async def test_a_class_trains_at_one_budget(
    tmp_path: Path, nats_server: EmbeddedServer, nc: Any, js: JetStreamContext, prepared_cache: Path
) -> None:
    """An ask above the run's budget is capped (and recorded); one below is refused with the reason: results
    at different budgets never compare."""
    small = await propose(js, BASELINE, budget=2048.0, budget_unit="tokens")
    huge = await propose(js, BASELINE, budget=10.0**9, budget_unit="tokens")
    await run_burst(nc, real_config(tmp_path, nats_server.url, prepared_cache))
    evs = await all_events(js)
    [a], [b] = finished(evs, small.hypothesis_id), finished(evs, huge.hypothesis_id)
    assert a.status == "rejected" and "results at different budgets never compare" in a.reason, a.reason
    assert (b.status, b.budget, b.tokens) == ("ok", TINY_BUDGET, TINY_BUDGET)


async def test_a_runner_with_another_budget_than_its_class_does_not_join(
    tmp_path: Path, nats_server: EmbeddedServer, nc: Any, js: JetStreamContext
) -> None:
    first = Runner(nc, sim_config(tmp_path, nats_server.url, runner_id="a", max_budget=2.0))
    await first.start()
    try:
        with pytest.raises(DataMismatch, match=r"train every experiment at 2 s .* this runner at 3 s"):
            await run_burst(nc, sim_config(tmp_path, nats_server.url, runner_id="b", max_budget=3.0))
        other_class = Runner(nc, sim_config(tmp_path, nats_server.url, runner_id="c", max_budget=3.0, hw_class="h100"))
        await other_class.start()  # another class may train at its own budget
        await other_class.shutdown("test")
    finally:
        await first.shutdown("test")


# -- mechanics, on the simulated executor ---------------------------------------------------------------


async def test_in_progress_keeps_a_long_experiment_from_redelivery(
    tmp_path: Path, nats_server: EmbeddedServer, nc: Any, js: JetStreamContext
) -> None:
    h = await propose(js, SIM_SOURCE)
    await run_burst(nc, sim_config(tmp_path, nats_server.url, ack_wait=2.0, max_budget=3.0))
    evs = await all_events(js)
    claims = [e for e in evs if isinstance(e, ExperimentClaimed) and e.hypothesis_id == h.hypothesis_id]
    [ev] = finished(evs, h.hypothesis_id)
    assert len(claims) == 1 and ev.status == "ok" and ev.attempt == 1 and not ev.late


async def test_lost_lease_publishes_late_and_does_not_ack(
    tmp_path: Path, nats_server: EmbeddedServer, nc: Any, js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken_renew(self: Lease) -> bool:
        return self.held()  # renewals never reach the server

    monkeypatch.setattr(Lease, "renew", broken_renew)
    h = await propose(js, SIM_SOURCE)
    cfg = sim_config(tmp_path, nats_server.url, ack_wait=1.0, max_budget=2.0, prefetch=False, max_experiments=1,
                     burst=False)
    await run_burst(nc, cfg)
    [ev] = finished(await all_events(js), h.hypothesis_id)
    assert ev.late and ev.status == "ok"
    info = await js.consumer_info(subjects.STREAM, subjects.work_consumer(RUN, "cpu"))
    assert info.num_ack_pending + info.num_pending == 1  # not acked: the item is still someone's to finish


async def test_result_for_an_unclaimed_hypothesis_is_refused(
    tmp_path: Path, nats_server: EmbeddedServer, nc: Any, js: JetStreamContext
) -> None:
    runner = Runner(nc, sim_config(tmp_path, nats_server.url))
    await runner.start()
    try:
        h = HypothesisProposed(run=RUN, source="x", hypothesis_id="never-claimed", agent="x", train_py="",
                               train_py_sha256="")
        item = Item(msg=None, hyp=h, attempt=1, stream_seq=1, lease=Lease(None, nc, 10.0), cls="cpu")
        with pytest.raises(UnclaimedResult):
            await runner.publish_result(item, Outcome("ok", val_bpb=0.1), 1.0)
        assert finished(await all_events(js)) == []
    finally:
        await runner.shutdown("test")


async def test_dead_lettered_item_ends_as_lost(
    tmp_path: Path, nats_server: EmbeddedServer, nc: Any, js: JetStreamContext
) -> None:
    runner = Runner(nc, sim_config(tmp_path, nats_server.url, ack_wait=0.5, max_deliver=1))
    await runner.start()  # sets up the consumers and the dead-letter watcher, claims nothing
    try:
        h = await propose(js, SIM_SOURCE)
        psub = await js.pull_subscribe_bind(durable=subjects.work_consumer(RUN, "cpu"), stream=subjects.STREAM)
        [msg] = await psub.fetch(1, timeout=5)  # a worker that takes it and vanishes
        assert msg.metadata.num_delivered == 1
        evs = await wait_for(js, lambda evs: bool(finished(evs, h.hypothesis_id)), timeout=20)
        [ev] = finished(evs, h.hypothesis_id)
        assert ev.status == "lost" and ev.attempt == 1
    finally:
        await runner.shutdown("test")


async def test_validate_work_only_counts_on_its_own_class(
    tmp_path: Path, nats_server: EmbeddedServer, nc: Any, js: JetStreamContext
) -> None:
    h = await propose(js, SIM_SOURCE, hw_class="cpu", tier="validate")
    await run_burst(nc, sim_config(tmp_path, nats_server.url, hw_class="h100", classes=("cpu",)))
    [ev] = finished(await all_events(js), h.hypothesis_id)
    assert ev.status == "rejected" and "validate-tier work for class 'cpu'" in ev.reason


async def test_pipelining_claims_the_next_item_while_one_trains_and_progress_is_live(
    tmp_path: Path, nats_server: EmbeddedServer, nc: Any, js: JetStreamContext
) -> None:
    got: list[Progress] = []

    async def on_progress(msg: Any) -> None:
        got.append(progress_decoder.decode(msg.data))

    sub = await nc.subscribe(subjects.progress(RUN), cb=on_progress)
    a = await propose(js, SIM_SOURCE)
    b = await propose(js, "X = 2\ndef build_model(c): ...\n")
    await run_burst(nc, sim_config(tmp_path, nats_server.url, max_budget=2.0))
    await sub.unsubscribe()
    evs = await all_events(js)
    claim_b = next(e for e in evs if isinstance(e, ExperimentClaimed) and e.hypothesis_id == b.hypothesis_id)
    [fin_a] = finished(evs, a.hypothesis_id)
    assert claim_b.ts < fin_a.ts  # fetched (and prepared) while a was still running
    assert [e.status for e in finished(evs)] == ["ok", "ok"]
    phases = {p.phase for p in got if p.hypothesis_id == a.hypothesis_id}
    assert "training" in phases and any(p.step > 0 for p in got)


"""One contract suite run against every executor (process, simulated, docker), plus the Docker-only checks.
Docker tests skip locally without an engine and fail in CI (tests/conftest.skip_or_fail)."""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import sys
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bus.events import ExperimentFinished
from runner import node
from runner.config import REPO_ROOT, RunnerConfig
from runner.daemon import Runner
from runner.executors import Executor, Job, NodeData, make_executor
from runner.testing import expected_val_bpb, fake_train_py
from tests.conftest import skip_or_fail
from tests.test_runner_helpers import all_events, config, harness, propose

DOCKER_TEST_IMAGE = "swarm-runner-test:tiny"


def docker_image_or_skip() -> str:
    """An image imported from an empty tar; the host's interpreter and venv are bind-mounted read-only."""
    try:
        import docker

        client = docker.from_env()
        client.ping()
    except Exception as e:
        skip_or_fail(f"no Docker engine ({e})")
        raise AssertionError("unreachable") from e
    try:
        client.images.get(DOCKER_TEST_IMAGE)
    except docker.errors.ImageNotFound:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:  # a tiny root: the usual symlinks, empty dirs
            for name, target in (("lib", "usr/lib"), ("lib64", "usr/lib64"), ("bin", "usr/bin")):
                info = tarfile.TarInfo(name)
                info.type, info.linkname = tarfile.SYMTYPE, target
                tar.addfile(info)
            for name in ("usr", "tmp", "dev", "proc", "sys", "etc"):
                info = tarfile.TarInfo(name)
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
        client.api.import_image_from_data(
            buf.getvalue(), repository=DOCKER_TEST_IMAGE.split(":")[0], tag="tiny"
        )
    client.close()
    return DOCKER_TEST_IMAGE


def make_config(tmp: Path, name: str, **kw: object) -> RunnerConfig:
    extra: dict[str, object] = {}
    if name == "docker":
        extra = dict(
            docker_image=docker_image_or_skip(),
            docker_mounts=(str(REPO_ROOT), sys.prefix, sys.base_prefix, "/usr/lib", "/usr/lib64", "/usr/bin"),
            docker_python=sys.executable,
        )
    return RunnerConfig(
        run="t",
        runner_id=str(kw.pop("runner_id", "x")),
        hw_class="cpu",
        executor=name,
        state_dir=tmp / "state",
        cache_dir=tmp / "cache",
        prepare_py=harness(tmp),
        baseline_train_py=tmp / "none.py",
        **extra,
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture(params=["process", "simulated", "docker"])
async def setup_executor(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[Executor, NodeData, RunnerConfig]]:
    cfg = make_config(tmp_path, request.param)
    ex = make_executor(cfg)
    nd = (
        node.simulated_node(cfg, "cpu")
        if cfg.executor == "simulated"
        else await node.prepare_node(cfg, "cpu")
    )
    await ex.setup(nd)
    yield ex, nd, cfg
    await ex.close()


def make_job(cfg: RunnerConfig, nd: NodeData, source: str, *, budget: float, train_timeout: float) -> Job:
    job = Job(
        hypothesis_id="h1",
        attempt=1,
        train_py=source,
        job_dir=cfg.state_dir / "jobs" / "h1",
        budget_seconds=budget,
        train_timeout=train_timeout,
        eval_timeout=60.0,
    )
    for d in (job.work_dir, job.eval_dir, job.out_dir):
        d.mkdir(parents=True, exist_ok=True)
    for d in (job.work_dir, job.eval_dir):
        (d / "train.py").write_text(source)
        if (nd.pristine_dir / "prepare.py").exists():
            shutil.copyfile(nd.pristine_dir / "prepare.py", d / "prepare.py")
    job.log_path.touch()
    return job


async def test_executor_trains_and_evaluates(setup_executor: tuple[Executor, NodeData, RunnerConfig]) -> None:
    ex, nd, cfg = setup_executor
    if cfg.executor == "simulated":
        cfg.time_scale = 0.05
        ex = make_executor(cfg)
    job = make_job(cfg, nd, fake_train_py(w=1.5), budget=0.3, train_timeout=60)
    await ex.prepare(job)
    lines: list[str] = []
    tr = await ex.train(job, lines.append)
    assert tr.exit_code == 0 and not tr.timed_out, tr.output
    assert any(line.startswith("step ") for line in lines)
    assert (job.out_dir / "model.pt").exists()
    ev = await ex.evaluate(job)
    assert ev.status == "ok" and ev.val_bpb is not None, (ev.reason, ev.output)
    if cfg.executor != "simulated":
        assert ev.val_bpb == pytest.approx(expected_val_bpb(1.5))
    await ex.cleanup(job)
    assert job.log_path.read_text()


async def test_executor_enforces_the_hard_limit(
    setup_executor: tuple[Executor, NodeData, RunnerConfig],
) -> None:
    ex, nd, cfg = setup_executor
    job = make_job(cfg, nd, fake_train_py(), budget=30, train_timeout=1.5)
    await ex.prepare(job)
    tr = await ex.train(job, lambda line: None)
    assert tr.timed_out and tr.exit_code is None
    await ex.cleanup(job)


@pytest.fixture
async def docker_setup(tmp_path: Path) -> AsyncIterator[tuple[Executor, NodeData, RunnerConfig]]:
    cfg = make_config(
        tmp_path, "docker", memory_limit_mb=256, runner_id=f"x{os.getpid()}-{tmp_path.name[-12:]}"
    )
    ex = make_executor(cfg)
    nd = await node.prepare_node(cfg, "cpu")
    await ex.setup(nd)
    yield ex, nd, cfg
    await ex.close()


@pytest.mark.docker
async def test_docker_blocks_network_and_detects_oom(
    docker_setup: tuple[Executor, NodeData, RunnerConfig],
) -> None:
    ex, nd, cfg = docker_setup
    sock = fake_train_py(behaviour="import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=3)")
    job = make_job(cfg, nd, sock, budget=0.2, train_timeout=60)
    await ex.prepare(job)
    tr = await ex.train(job, lambda line: None)
    assert (tr.exit_code not in (0, None) and "OSError" in tr.output) or "unreachable" in tr.output
    await ex.cleanup(job)
    hog = fake_train_py(behaviour="x = bytearray(1 << 30)\nx[::4096] = b'1' * len(x[::4096])")
    job2 = make_job(cfg, nd, hog, budget=0.2, train_timeout=60)
    await ex.prepare(job2)
    tr2 = await ex.train(job2, lambda line: None)
    assert tr2.oom_killed, tr2.output
    await ex.cleanup(job2)
    import docker

    client = docker.from_env()
    assert not client.containers.list(all=True, filters={"label": f"swarm.runner={cfg.runner_id}"})
    client.close()


@pytest.mark.docker
async def test_runner_on_docker_survives_an_oom(
    tmp_path: Path, nats_server: object, nc: object, js: object
) -> None:
    image = docker_image_or_skip()
    hog = fake_train_py(behaviour="x = bytearray(1 << 30)\nx[::4096] = b'1' * len(x[::4096])")
    a = await propose(js, hog)  # type: ignore[arg-type]
    b = await propose(js, fake_train_py(w=1.5))  # type: ignore[arg-type]
    cfg = config(
        tmp_path, nats_server.url, executor="docker", docker_image=image, memory_limit_mb=256,  # type: ignore[attr-defined]
        docker_mounts=(str(REPO_ROOT), sys.prefix, sys.base_prefix, "/usr/lib", "/usr/lib64", "/usr/bin"),
        docker_python=sys.executable, runner_id=f"d{os.getpid()}",
    )  # fmt: skip
    await asyncio.wait_for(Runner(nc, cfg).run(asyncio.Event()), 120)  # type: ignore[arg-type]
    res = {e.hypothesis_id: e for e in await all_events(js) if isinstance(e, ExperimentFinished)}  # type: ignore[arg-type]
    assert res[a.hypothesis_id].status == "oom"
    assert res[b.hypothesis_id].status == "ok" and res[b.hypothesis_id].val_bpb == pytest.approx(
        expected_val_bpb(1.5)
    )

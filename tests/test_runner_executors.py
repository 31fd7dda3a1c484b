"""One contract suite for the isolating executors (process with its namespace sandbox, docker): a step sees
exactly what it is described to see. Then the real harness through a runner on Docker.

Docker tests skip locally without an engine and fail in CI (tests/conftest.skip_or_fail)."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bus import EmbeddedServer
from runner.daemon import Runner
from runner.executors.docker import DockerExecutor
from runner.executors.process import ProcessExecutor
from runner.executors.sandbox import namespace_available
from runner.executors.steps import Isolator, Limits, Mount, Step
from runner.jobs import interpreter
from tests.conftest import skip_or_fail
from tests.support.bus import all_events, finished, propose
from tests.support.engine import docker_image_or_skip
from tests.support.harness import BASELINE, in_main, real_config

SYSTEM_MOUNTS = ("/usr/lib", "/usr/lib64", "/usr/bin", "/usr/share/zoneinfo")


@pytest.fixture(params=["process", "docker"])
async def executor(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Isolator]:
    ex: Isolator
    if request.param == "process":
        if not namespace_available(os.geteuid() != 0, tmp_path / "probe-root"):
            skip_or_fail("namespace isolation (unshare, pivot_root, setpriv) is unavailable here")
        ex = ProcessExecutor("namespace", tmp_path / "sandbox-root")
    else:
        ex = DockerExecutor(docker_image_or_skip(), extra_mounts=SYSTEM_MOUNTS, labels={"swarm.test": tmp_path.name})
    await ex.setup()
    yield ex
    await ex.close()


def step(tmp: Path, code: str, *, timeout: float = 60, mounts: list[Mount] | None = None, **kw: Any) -> Step:
    work = tmp / "work"
    work.mkdir(exist_ok=True)
    work.chmod(0o777)
    python = sys.executable
    mounts = [Mount(Path(sys.base_prefix).resolve()), Mount(Path(sys.prefix).resolve()), Mount(work, writable=True),
              *(mounts or [])]
    return Step(name="probe", argv=[python, "-c", code], cwd=work, env={"PATH": "/usr/bin:/bin", "HOME": str(work)},
                mounts=mounts, timeout=timeout, log_path=tmp / "probe.log", **kw)


PROBE = """
import os, socket
def can_read(p):
    try:
        return bool(os.listdir(p)) if os.path.isdir(p) else bool(open(p, 'rb').read(1))
    except OSError:
        return False
def can_write(p):
    try:
        open(os.path.join(p, 'w.txt'), 'w').write('x')
        return True
    except OSError:
        return False
print('UID', os.getuid())
print('SEES_SECRET', can_read(os.environ.get('SECRET', '/nonexistent')))
print('SEES_HIDDEN', can_read(os.environ.get('HIDDEN_DIR', '/nonexistent')))
print('SEES_READONLY', can_read(os.environ.get('RO_DIR', '/nonexistent')))
print('WRITES_READONLY', can_write(os.environ.get('RO_DIR', '/nonexistent')))
print('WRITES_WORK', can_write(os.getcwd()))
print('TMP_EMPTY', not os.path.exists(os.environ['HOST_TMP_FILE']))  # the host's /tmp is not the step's
print('SHM_EMPTY', os.listdir('/dev/shm') == [])
open('/dev/shm/planted', 'w').write('x')
try:
    socket.create_connection(('127.0.0.1', 22), timeout=2)
    print('NET', 'open')
except OSError as e:
    print('NET', 'blocked')
"""


async def test_a_step_sees_only_what_it_is_given(executor: Isolator, tmp_path: Path) -> None:
    secret = tmp_path / "secret"  # a host file outside every mount (e.g. a stray copy of the validation split)
    secret.mkdir()
    (secret / "val.bin").write_text("VALIDATION")
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "data.txt").write_text("readable")
    hidden = ro / "hidden"
    hidden.mkdir()
    (hidden / "val.py").write_text("VALIDATION")
    (Path("/dev/shm") / f"host-{tmp_path.name}").write_text("host")  # the host's shm is not the step's
    host_tmp = Path("/tmp") / f"swarm-host-{tmp_path.name}"
    host_tmp.write_text("host")
    try:
        s = step(tmp_path, PROBE, mounts=[Mount(ro)], hidden=[hidden])
        s.env.update(SECRET=str(secret / "val.bin"), HIDDEN_DIR=str(hidden), RO_DIR=str(ro), HOST_TMP_FILE=str(host_tmp))
        lines: list[str] = []
        res = await executor.run(s, lines.append)
    finally:
        (Path("/dev/shm") / f"host-{tmp_path.name}").unlink()
        host_tmp.unlink()
    out = dict(line.split(" ", 1) for line in lines if " " in line)
    assert res.exit_code == 0, res.output
    assert out["UID"] == "65534" or os.geteuid() != 0  # as root, steps run as nobody
    assert out["SEES_SECRET"] == "False" and out["SEES_HIDDEN"] == "False", out
    assert out["SEES_READONLY"] == "True" and out["WRITES_READONLY"] == "False", out
    assert out["WRITES_WORK"] == "True" and out["TMP_EMPTY"] == "True" and out["SHM_EMPTY"] == "True", out
    assert out["NET"] == "blocked", out
    assert not (Path("/dev/shm") / "planted").exists()
    assert "probe" in s.log_path.read_text()  # the header and the output are in the step's log


async def test_the_hard_limit_kills_everything_the_step_started(executor: Isolator, tmp_path: Path) -> None:
    token = f"swarm-exec-probe-{os.getpid()}-{tmp_path.name}"
    code = (f"import subprocess, sys, time\n"
            f"subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)', {token!r}], start_new_session=True)\n"
            "print('started', flush=True)\ntime.sleep(300)\n")
    res = await executor.run(step(tmp_path, code, timeout=6))
    assert res.timed_out and res.exit_code is None and "started" in res.output
    await asyncio.sleep(0)
    assert not [p for p in os.listdir("/proc") if p.isdigit() and token in _cmdline(p)]


async def test_cancelling_a_run_kills_the_step(executor: Isolator, tmp_path: Path) -> None:
    task = asyncio.create_task(executor.run(step(tmp_path, "import time\nprint('up', flush=True)\ntime.sleep(300)")))
    await asyncio.sleep(3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.docker
async def test_docker_detects_an_out_of_memory_kill(tmp_path: Path) -> None:
    ex = DockerExecutor(docker_image_or_skip(), extra_mounts=SYSTEM_MOUNTS, labels={"swarm.test": tmp_path.name})
    await ex.setup()
    try:
        hog = "x = bytearray(1 << 30)\nx[::4096] = b'1' * len(x[::4096])\n"
        res = await ex.run(step(tmp_path, hog, limits=Limits(memory_mb=128)))
        assert res.oom_killed, res.output
        import docker

        client = docker.from_env()
        assert not client.containers.list(all=True, filters={"label": f"swarm.test={tmp_path.name}"})
        client.close()
    finally:
        await ex.close()


@pytest.mark.docker
@pytest.mark.slow
async def test_the_real_harness_on_docker(tmp_path: Path, nats_server: EmbeddedServer, nc: Any, js: Any,
                                          prepared_cache: Path) -> None:
    image = docker_image_or_skip()
    base = await propose(js, BASELINE)
    crash = await propose(js, in_main("raise RuntimeError('in a container')"))
    cfg = real_config(tmp_path, nats_server.url, prepared_cache, executor="docker", docker_image=image,
                      docker_mounts=SYSTEM_MOUNTS, docker_python=sys.executable, runner_id=f"d{os.getpid()}")
    python, mounts = interpreter(cfg)
    assert python == sys.executable and mounts  # the host's interpreter, mounted into the tiny image
    await asyncio.wait_for(Runner(nc, cfg).run(asyncio.Event()), 900)
    evs = await all_events(js)
    [ok], [bad] = finished(evs, base.hypothesis_id), finished(evs, crash.hypothesis_id)
    assert ok.status == "ok" and ok.val_bpb is not None and 2.0 < ok.val_bpb < 9.0, (ok.reason, ok.log_tail)
    assert bad.status == "crash" and "in a container" in bad.log_tail


def _cmdline(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().decode(errors="replace")
    except OSError:
        return ""

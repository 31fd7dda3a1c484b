"""The docker executor: a container per step (docker SDK).

Training container: no network, memory and pids limits, read-only root with a tmpfs /tmp, the job's work
dir bind-mounted read-write, the training view read-only and nothing else of the data (the validation split
is not mounted at all), the GPU by device request on GPU nodes. Evaluation container: the same limits, the
verified train.py + pristine prepare.py (eval dir, rw for its result), the weights read-only and the
validation split read-only. OOM kills are read from the container state; containers are removed afterwards.

The image is configurable (``RunnerConfig.docker_image``; the repo's Dockerfile builds a CUDA/PyTorch one).
``docker_mounts`` adds read-only host paths at the same path inside (the tests mount the host's interpreter
and venv into an image imported from an empty tar).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from pathlib import Path
from typing import Any

from runner.config import RunnerConfig
from runner.errors import ExecutorUnavailable
from runner.executors.base import EvalOutcome, Job, LineCallback, NodeData, TrainOutcome
from runner.executors.sandbox import MAX_OUTPUT_CHARS

log = logging.getLogger("swarm.runner.docker")


class DockerExecutor:
    name = "docker"

    def __init__(self, config: RunnerConfig) -> None:
        self.config = config
        self.client: Any = None
        self.node: NodeData | None = None
        self.python = config.docker_python

    async def setup(self, node: NodeData) -> None:
        self.node = node
        try:
            import docker

            self.client = await asyncio.to_thread(docker.from_env)
            await asyncio.to_thread(self.client.ping)
            await asyncio.to_thread(self.client.images.get, self.config.docker_image)
        except Exception as e:
            raise ExecutorUnavailable(
                f"docker executor: engine or image {self.config.docker_image!r} unavailable ({e}); start dockerd "
                "(DOCKER_HOST) and build the image (docker build -t swarm-runner .)"
            ) from e

    # -- container specs ------------------------------------------------------------------------------

    def _mounts(self, rw: list[Path], ro: list[Path]) -> dict[str, dict[str, str]]:
        vols: dict[str, dict[str, str]] = {}
        for m in self.config.docker_mounts:
            vols[str(m)] = {"bind": str(m), "mode": "ro"}
        for p in ro:
            vols[str(p.resolve())] = {"bind": str(p.resolve()), "mode": "ro"}
        for p in rw:
            vols[str(p.resolve())] = {"bind": str(p.resolve()), "mode": "rw"}
        return vols

    def _common(self, job: Job, env: dict[str, str]) -> dict[str, Any]:
        cfg = self.config
        kw: dict[str, Any] = dict(
            image=cfg.docker_image,
            network_mode="none",
            read_only=True,
            tmpfs={"/tmp": "rw,size=1g", "/dev/shm": "rw,size=1g"},
            pids_limit=cfg.nproc_limit,
            environment={
                "HOME": "/tmp",
                "TMPDIR": "/tmp",
                "PYTHONUNBUFFERED": "1",
                "PYTHONDONTWRITEBYTECODE": "1",
                "SWARM_TIME_BUDGET": f"{job.budget_seconds:g}",
                "SWARM_SEED": str(job.seed),
                "SWARM_PROFILE": self.node.profile if self.node else "cpu",
                **{k: v for k, v in job.env.items() if k != "CUDA_VISIBLE_DEVICES"},
                **env,
            },
            labels={"swarm.runner": cfg.runner_id, "swarm.hypothesis": job.hypothesis_id},
            detach=True,
        )
        if cfg.memory_limit_mb:
            kw["mem_limit"] = f"{cfg.memory_limit_mb}m"
            kw["memswap_limit"] = f"{cfg.memory_limit_mb}m"
        if cfg.threads:
            kw["nano_cpus"] = int(cfg.threads * 1e9)
        if self.node and self.node.profile == "gpu":
            import docker

            ids = [str(cfg.gpu)] if cfg.gpu is not None else None
            kw["device_requests"] = [
                docker.types.DeviceRequest(device_ids=ids, count=None if ids else -1, capabilities=[["gpu"]])
            ]
        return kw

    def _interpreter_mounts(self) -> list[Path]:
        if self.python.startswith("/") and self.python == sys.executable:
            return [Path(sys.prefix), Path(sys.base_prefix)]
        return []

    async def prepare(self, job: Job) -> None:
        assert self.node is not None and self.client is not None, "setup() first"
        job.out_dir.mkdir(parents=True, exist_ok=True)
        job.work_dir.chmod(0o777)
        job.out_dir.chmod(0o777)
        kw = self._common(
            job,
            {
                "SWARM_MODE": "runner",
                "SWARM_DATA_DIR": str(self.node.train_view),
                "SWARM_OUT_DIR": str(job.out_dir.resolve()),
            },
        )
        kw["volumes"] = self._mounts([job.work_dir], [self.node.train_view, *self._interpreter_mounts()])
        kw["working_dir"] = str(job.work_dir.resolve())
        kw["command"] = [self.python, "-s", "-u", "train.py"]
        c = await asyncio.to_thread(self.client.containers.create, **kw)
        job.state["train_container"] = c.id

    async def _run(
        self, job: Job, cid: str, timeout: float, on_line: LineCallback | None
    ) -> tuple[int | None, bool, bool, str]:
        """Start, stream logs, wait with a hard limit. Returns (exit code, timed out, oom killed, output)."""
        assert self.client is not None
        c = await asyncio.to_thread(self.client.containers.get, cid)
        loop = asyncio.get_running_loop()
        chunks: list[str] = []
        logf = job.log_path.open("a", encoding="utf-8", errors="replace")

        def pump() -> None:
            buf = b""
            for data in c.logs(stream=True, follow=True, stdout=True, stderr=True):
                buf += data
                while b"\n" in buf:
                    raw, buf = buf.split(b"\n", 1)
                    line = raw.decode(errors="replace")
                    logf.write(line + "\n")
                    chunks.append(line + "\n")
                    if on_line is not None:
                        loop.call_soon_threadsafe(on_line, line)
            if buf:
                logf.write(buf.decode(errors="replace"))
                chunks.append(buf.decode(errors="replace"))

        await asyncio.to_thread(c.start)
        reader = asyncio.create_task(asyncio.to_thread(pump))
        timed_out = False
        try:
            await asyncio.wait_for(asyncio.to_thread(c.wait), timeout)
        except TimeoutError:
            timed_out = True
        finally:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(c.kill)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(reader, 10)
            logf.close()
        await asyncio.to_thread(c.reload)
        state = c.attrs.get("State", {})
        out = "".join(chunks)[-MAX_OUTPUT_CHARS:]
        code = None if timed_out else int(state.get("ExitCode", -1))
        return code, timed_out, bool(state.get("OOMKilled")), out

    async def train(self, job: Job, on_line: LineCallback) -> TrainOutcome:
        if "train_container" not in job.state:
            await self.prepare(job)
        start = time.monotonic()
        code, timed_out, oom, out = await self._run(
            job, job.state["train_container"], job.train_timeout, on_line
        )
        return TrainOutcome(
            code, time.monotonic() - start, timed_out=timed_out, oom_killed=oom or code == 137, output=out
        )

    async def evaluate(self, job: Job) -> EvalOutcome:
        assert self.node is not None and self.client is not None
        result = (job.eval_dir / "result.json").resolve()
        job.eval_dir.chmod(0o777)
        kw = self._common(
            job,
            {"SWARM_DATA_DIR": str(self.node.train_view), "SWARM_VAL_DIR": str(self.node.val_dir)},
        )
        kw["volumes"] = self._mounts(
            [job.eval_dir],
            [job.out_dir, self.node.train_view, self.node.val_dir, *self._interpreter_mounts()],
        )
        kw["working_dir"] = str(job.eval_dir.resolve())
        kw["command"] = [
            self.python, "-s", "-u", "prepare.py", "evaluate",
            "--train-py", str((job.eval_dir / "train.py").resolve()),
            "--model-dir", str(job.out_dir.resolve()),
            "--val-dir", str(self.node.val_dir),
            "--json-out", str(result),
        ]  # fmt: skip
        start = time.monotonic()
        c = await asyncio.to_thread(self.client.containers.create, **kw)
        job.state["eval_container"] = c.id
        code, timed_out, _, out = await self._run(job, c.id, job.eval_timeout, None)
        secs = time.monotonic() - start
        if timed_out:
            return EvalOutcome("error", reason=f"evaluation exceeded {job.eval_timeout:.0f} s", output=out)
        if code != 0:
            return EvalOutcome("error", reason=f"evaluation exited with {code}", output=out, seconds=secs)
        return EvalOutcome.from_json_file(result, out, secs)

    async def cleanup(self, job: Job) -> None:
        if self.client is None:
            return
        for key in ("train_container", "eval_container"):
            cid = job.state.pop(key, None)
            if cid:
                with contextlib.suppress(Exception):
                    c = await asyncio.to_thread(self.client.containers.get, cid)
                    await asyncio.to_thread(c.remove, force=True)

    async def close(self) -> None:
        if self.client is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.client.close)

"""The docker executor: each step a container (docker SDK).

A container gets exactly what the step describes: its mounts at the same paths (read-only unless
writable), its hidden directories covered by an empty tmpfs, a private tmpfs ``/tmp`` and ``/dev/shm``, no
network, a read-only root, the uid ``nobody``, memory and pids limits, the step's one GPU (seen inside as
device 0). OOM kills are read from the container state; containers are removed afterwards, also when the
run is cancelled.

The image is configurable (``RunnerConfig.docker_image``; the repo's Dockerfile builds one).
``extra_mounts`` adds read-only host paths at the same path inside (the tests mount the host's ``/usr`` and
friends into an image imported from an empty tar).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from runner.errors import ExecutorUnavailable
from runner.executors.sandbox import MAX_OUTPUT_CHARS, NOBODY
from runner.executors.steps import LineCallback, Step, StepResult

log = logging.getLogger("swarm.runner.docker")


class DockerExecutor:
    name = "docker"

    def __init__(self, image: str, *, extra_mounts: tuple[str, ...] = (), labels: dict[str, str] | None = None) -> None:
        self.image = image
        self.extra_mounts = extra_mounts
        self.labels = labels or {}
        self.client: Any = None
        self._present: set[str] | None = None  # which hidden paths exist in the image (probed once)

    async def setup(self) -> None:
        try:
            import docker

            self.client = await asyncio.to_thread(docker.from_env)
            await asyncio.to_thread(self.client.ping)
            await asyncio.to_thread(self.client.images.get, self.image)
        except Exception as e:
            if self.client is not None:
                with contextlib.suppress(Exception):
                    self.client.close()
                self.client = None
            raise ExecutorUnavailable(
                f"docker executor: engine or image {self.image!r} unavailable ({e}); start dockerd "
                "(DOCKER_HOST) and build the image (docker build -t swarm-runner .)"
            ) from e

    def container_spec(self, step: Step) -> dict[str, Any]:
        """The docker SDK's ``containers.create`` keywords for ``step`` (tests read them too)."""
        vols: dict[str, dict[str, str]] = {m: {"bind": m, "mode": "ro"} for m in self.extra_mounts}
        for m in step.mounts:
            vols[str(m.path)] = {"bind": str(m.path), "mode": "rw" if m.writable else "ro"}
        tmpfs = {"/tmp": f"rw,size={step.limits.tmp_mb}m,mode=1777",
                 "/dev/shm": f"rw,size={step.limits.tmp_mb}m,mode=1777"}
        for h in step.hidden:
            if self._present is None or str(h) in self._present:
                tmpfs[str(h)] = "ro,size=4k,mode=000"
        env = dict(step.env)
        kw: dict[str, Any] = dict(
            image=self.image,
            command=list(step.argv),
            working_dir=str(step.cwd),
            environment=env,
            volumes=vols,
            tmpfs=tmpfs,
            network_mode="none",
            read_only=True,
            user=f"{NOBODY}:{NOBODY}",
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            ipc_mode="private",
            pids_limit=step.limits.nproc,
            labels={**self.labels, "swarm.step": step.name},
            detach=True,
        )
        if step.limits.memory_mb:
            kw["mem_limit"] = f"{step.limits.memory_mb}m"
            kw["memswap_limit"] = f"{step.limits.memory_mb}m"
        if step.limits.threads:
            kw["nano_cpus"] = int(step.limits.threads * 1e9)
        if step.gpu is not None:
            import docker

            kw["device_requests"] = [docker.types.DeviceRequest(device_ids=[str(step.gpu)], capabilities=[["gpu"]])]
            env["CUDA_VISIBLE_DEVICES"] = "0"  # the container sees its one GPU as device 0
        return kw

    async def _probe_hidden(self, step: Step) -> None:
        """Which of the step's hidden directories exist in the image: a tmpfs can only cover a path that is
        there (Docker cannot create a mount point inside a read-only image or mount)."""
        probe = "import os, sys\nprint('\\n'.join(p for p in sys.argv[1:] if os.path.isdir(p)))"
        spec = self.container_spec(step)
        spec.update(command=[step.argv[0], "-c", probe, *map(str, step.hidden)], tmpfs={"/tmp": "rw,size=16m"})
        spec.pop("device_requests", None)
        c = await asyncio.to_thread(self.client.containers.create, **spec)
        try:
            await asyncio.to_thread(c.start)
            await asyncio.wait_for(asyncio.to_thread(c.wait), 120)
            out = (await asyncio.to_thread(c.logs, stdout=True, stderr=False)).decode(errors="replace")
        finally:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(c.remove, force=True)
        self._present = {line.strip() for line in out.splitlines() if line.strip()}

    async def run(self, step: Step, on_line: LineCallback | None = None) -> StepResult:
        assert self.client is not None, "setup() first"
        if step.hidden and self._present is None:
            await self._probe_hidden(step)
        c = await asyncio.to_thread(self.client.containers.create, **self.container_spec(step))
        try:
            return await self._run(c, step, on_line)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(c.remove, force=True)

    async def _run(self, c: Any, step: Step, on_line: LineCallback | None) -> StepResult:
        loop = asyncio.get_running_loop()
        chunks: list[str] = []
        logf = step.log_path.open("a", encoding="utf-8", errors="replace")
        logf.write((step.header or f"[runner] step {step.name}") + " (isolation=docker)\n")
        logf.flush()

        streams: list[Any] = []  # the log stream, closed at the end whatever the reader did

        def pump() -> None:
            buf = b""
            streams.append(c.logs(stream=True, follow=True, stdout=True, stderr=True))
            for data in streams[0]:
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

        started = time.monotonic()
        await asyncio.to_thread(c.start)
        reader = asyncio.create_task(asyncio.to_thread(pump))
        timed_out = False
        try:
            await asyncio.wait_for(asyncio.to_thread(c.wait), step.timeout)
        except TimeoutError:
            timed_out = True
        finally:
            ended = time.monotonic()
            with contextlib.suppress(Exception):
                await asyncio.to_thread(c.kill)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(reader, 10)
            for stream in streams:
                with contextlib.suppress(Exception):
                    stream.close()
            if timed_out:
                logf.write(f"\n[runner] killed: hard time limit of {step.timeout:.0f} s reached\n")
            logf.close()
        await asyncio.to_thread(c.reload)
        state = c.attrs.get("State", {})
        code = None if timed_out else int(state.get("ExitCode", -1))
        out = "".join(chunks)[-MAX_OUTPUT_CHARS:]
        oom = bool(state.get("OOMKilled")) or code == 137
        return StepResult(code, started, ended, timed_out=timed_out, oom_killed=oom, output=out)

    async def close(self) -> None:
        if self.client is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.client.close)

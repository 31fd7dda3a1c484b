"""The default executor: train.py and the trusted evaluation as child processes on this machine.

Isolation (see :mod:`runner.executors.sandbox` for what each mode guarantees): ``auto`` uses the
namespace wrapper when it works here (as root, or with unprivileged user namespaces) and falls back to
``none`` with a warning; ``namespace`` insists on it; ``none`` never uses it.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path

from runner.config import REPO_ROOT, RunnerConfig
from runner.errors import ExecutorUnavailable
from runner.executors.base import EvalOutcome, Job, LineCallback, NodeData, TrainOutcome
from runner.executors.sandbox import (
    Isolation,
    Limits,
    StepResult,
    namespace_available,
    run_step,
    scrubbed_env,
    wrap_namespace,
)

log = logging.getLogger("swarm.runner.process")


class ProcessExecutor:
    name = "process"

    def __init__(self, config: RunnerConfig) -> None:
        self.config = config
        self.python = config.python or sys.executable
        self.node: NodeData | None = None
        self.isolation = "none"
        self.user_ns = os.geteuid() != 0

    async def setup(self, node: NodeData) -> None:
        self.node = node
        mode = self.config.isolation
        if mode in ("auto", "namespace"):
            if namespace_available(self.user_ns):
                self.isolation = "namespace"
            elif mode == "namespace":
                raise ExecutorUnavailable(
                    "isolation=namespace: `unshare --mount --net --pid` + `setpriv` do not work here (need root "
                    "or unprivileged user namespaces, util-linux); use isolation=auto/none or the docker executor"
                )
            else:
                log.warning(
                    "namespace isolation unavailable: training runs without OS-level hiding of the validation "
                    "files (they are only not passed to it); use the docker executor or run as root"
                )
        (self.config.state_dir / "compile_cache").mkdir(parents=True, exist_ok=True)

    def _readonly(self) -> list[Path]:
        paths = [
            self.config.state_dir.resolve(),
            REPO_ROOT,
            self.config.prepare_py.resolve().parent,
            Path(sys.prefix),
            Path(sys.base_prefix),
            Path.home(),
        ]
        out: list[Path] = []
        for p in paths:
            if p != Path("/") and p not in out:
                out.append(p)
        return out

    def _limits(self, timeout: float) -> Limits:
        cfg = self.config
        cpus = cfg.threads or os.cpu_count() or 1
        return Limits(
            address_space_mb=cfg.memory_limit_mb,
            cpu_seconds=int(timeout * (cpus + 1)) + 30,
            nproc=cfg.nproc_limit,
            file_size_mb=cfg.file_size_limit_mb,
        )

    def _wrap(self, cmd: list[str], iso: Isolation) -> list[str]:
        if self.isolation == "namespace":
            return wrap_namespace(cmd, iso, user_ns=self.user_ns)
        return cmd

    def _env(self, job: Job, home: Path, extra: dict[str, str]) -> dict[str, str]:
        assert self.node is not None
        tmp = home / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        env = {
            "HOME": str(home),
            "TMPDIR": str(tmp),
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONNOUSERSITE": "1",
            "SWARM_PROFILE": self.node.profile,
            "SWARM_TIME_BUDGET": f"{job.budget_seconds:g}",
            "SWARM_SEED": str(job.seed),
            "TORCHINDUCTOR_CACHE_DIR": str(self.config.state_dir.resolve() / "compile_cache"),
            # idle OpenMP threads spin by default: under CPU contention that made a forward pass 2-3x slower
            "OMP_WAIT_POLICY": "PASSIVE",
            **job.env,
            **extra,
        }
        return scrubbed_env(env)

    async def prepare(self, job: Job) -> None:
        job.out_dir.mkdir(parents=True, exist_ok=True)

    async def train(self, job: Job, on_line: LineCallback) -> TrainOutcome:
        assert self.node is not None, "setup() first"
        env = self._env(
            job,
            job.work_dir,
            {
                "SWARM_MODE": "runner",
                "SWARM_DATA_DIR": str(self.node.train_view),
                "SWARM_OUT_DIR": str(job.out_dir),
            },
        )
        iso = Isolation(
            hidden=[*self.node.hidden],
            readonly=self._readonly(),
            writable=[job.work_dir.resolve(), (self.config.state_dir / "compile_cache").resolve()],
        )
        cmd = self._wrap([self.python, "-s", "-u", "train.py"], iso)
        res = await run_step(
            cmd,
            cwd=job.work_dir,
            env=env,
            timeout=job.train_timeout,
            log_path=job.log_path,
            on_line=on_line,
            limits=self._limits(job.train_timeout),
            header=f"[runner] training {job.hypothesis_id} attempt {job.attempt} (isolation={self.isolation})",
        )
        return _train_outcome(res)

    async def evaluate(self, job: Job) -> EvalOutcome:
        assert self.node is not None, "setup() first"
        result = job.eval_dir / "result.json"
        env = self._env(
            job,
            job.eval_dir,
            {
                "SWARM_DATA_DIR": str(self.node.train_view),
                "SWARM_VAL_DIR": str(self.node.val_dir),
                "SWARM_CACHE_DIR": str(self.node.cache_dir),
            },
        )
        iso = Isolation(hidden=(), readonly=self._readonly(), writable=[job.eval_dir.resolve()])
        cmd = self._wrap(
            [
                self.python, "-s", "-u", "prepare.py", "evaluate",
                "--train-py", str((job.eval_dir / "train.py").resolve()),
                "--model-dir", str(job.out_dir.resolve()),
                "--val-dir", str(self.node.val_dir),
                "--json-out", str(result.resolve()),
            ],
            iso,
        )  # fmt: skip
        res = await run_step(
            cmd,
            cwd=job.eval_dir,
            env=env,
            timeout=job.eval_timeout,
            log_path=job.log_path,
            limits=self._limits(job.eval_timeout),
            header="[runner] trusted evaluation",
        )
        if res.timed_out:
            return EvalOutcome(
                "error", reason=f"evaluation exceeded {job.eval_timeout:.0f} s", output=res.output
            )
        if res.exit_code != 0:
            return EvalOutcome(
                "error",
                reason=f"evaluation exited with {res.exit_code}",
                output=res.output,
                seconds=res.seconds,
            )
        return EvalOutcome.from_json_file(result, res.output, res.seconds)

    async def cleanup(self, job: Job) -> None:
        return None

    async def close(self) -> None:
        return None


def _train_outcome(res: StepResult) -> TrainOutcome:
    # SIGKILL not sent by us (the kernel's OOM killer) is the usual sign of memory exhaustion
    oom = (not res.timed_out) and res.signal == signal.SIGKILL
    return TrainOutcome(
        exit_code=res.exit_code,
        seconds=res.seconds,
        timed_out=res.timed_out,
        oom_killed=oom,
        output=res.output,
        pids=[res.pid],
    )

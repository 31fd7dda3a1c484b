"""The default executor: each step a child process on this machine, isolated by namespaces where possible.

``isolation``: ``auto`` uses the namespace sandbox (:mod:`runner.executors.sandbox`) when it works here (as
root, or with unprivileged user namespaces) and falls back to ``none`` with a warning; ``namespace``
insists on it; ``none`` never uses it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from runner.errors import ExecutorUnavailable
from runner.executors.sandbox import namespace_available, run_step, wrap_namespace
from runner.executors.steps import LineCallback, Step, StepResult

log = logging.getLogger("swarm.runner.process")


class ProcessExecutor:
    name = "process"

    def __init__(self, isolation: str, sandbox_root: Path) -> None:
        self.mode = isolation
        self.root = sandbox_root
        self.isolation = "none"
        self.user_ns = os.geteuid() != 0

    async def setup(self) -> None:
        if self.mode in ("auto", "namespace"):
            if namespace_available(self.user_ns, self.root):
                self.isolation = "namespace"
            elif self.mode == "namespace":
                raise ExecutorUnavailable(
                    "isolation=namespace: `unshare --mount --net --pid`, `pivot_root` and `setpriv` do not work "
                    "here (need root or unprivileged user namespaces, util-linux); use isolation=auto/none or "
                    "the docker executor"
                )
            else:
                log.warning(
                    "namespace isolation unavailable: steps run without a private file system (the validation "
                    "files are only not passed to them); use the docker executor or run the runner as root"
                )

    async def run(self, step: Step, on_line: LineCallback | None = None) -> StepResult:
        cmd = step.argv
        if self.isolation == "namespace":
            cmd = wrap_namespace(cmd, root=self.root, cwd=step.cwd, mounts=step.mounts, hidden=step.hidden,
                                 user_ns=self.user_ns, tmp_mb=step.limits.tmp_mb, gpu=step.gpu is not None)
        return await run_step(
            cmd,
            cwd=step.cwd,
            env=step.env,
            timeout=step.timeout,
            log_path=step.log_path,
            on_line=on_line,
            limits=step.limits,
            header=(step.header or f"[runner] step {step.name}") + f" (isolation={self.isolation})",
            # CUDA maps a huge address space: the memory limit is for CPU steps only
            address_space_limit=step.gpu is None,
        )

    async def close(self) -> None:
        return None

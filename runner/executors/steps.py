"""A step: one untrusted process, described completely by the runner (:mod:`runner.jobs` builds them).

An isolating executor (process, docker) turns a :class:`Step` into an isolated process and reports how it
ended; it adds nothing of its own to what the step may see or do. What a step sees of the host is an
allowlist: the :attr:`Step.mounts` (read-only unless marked writable) plus the system's own directories
(``/usr``, the dynamic linker's files), with :attr:`Step.hidden` covered even inside those. Its ``/tmp`` and
``/dev/shm`` are private and empty, it has no network, and everything it starts dies with it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

LineCallback = Callable[[str], None]


@dataclass(frozen=True)
class Mount:
    """A host path the step sees at the same path; read-only unless ``writable``."""

    path: Path
    writable: bool = False


@dataclass(frozen=True)
class Limits:
    """Resource limits (None: unlimited). ``memory_mb``: address space in the process executor, the
    container's memory in Docker. ``tmp_mb``: size of the private /tmp and of /dev/shm."""

    memory_mb: int | None = None
    cpu_seconds: int | None = None
    nproc: int | None = None
    file_size_mb: int | None = None
    tmp_mb: int = 1024
    threads: int | None = None  # CPU share (Docker's cpus; the process executor relies on the thread env)


@dataclass
class Step:
    """Everything about one untrusted process. ``name`` is for logs (train, model, calibration)."""

    name: str
    argv: list[str]
    cwd: Path
    env: dict[str, str]
    mounts: list[Mount]
    timeout: float  # hard limit; the executor kills the whole step at it
    log_path: Path
    limits: Limits = field(default_factory=Limits)
    hidden: list[Path] = field(default_factory=list)
    gpu: str | None = None  # the one GPU it may use (index or UUID, as CUDA_VISIBLE_DEVICES); None: none
    header: str = ""


@dataclass
class StepResult:
    """How a step ended, in the runner's clock (``time.monotonic``). ``exit_code`` None: killed."""

    exit_code: int | None
    started: float
    ended: float
    timed_out: bool = False
    oom_killed: bool = False
    output: str = ""  # the end of stdout+stderr (the whole log is in the step's log file)
    pid: int = 0

    @property
    def seconds(self) -> float:
        return self.ended - self.started


@runtime_checkable
class Isolator(Protocol):
    """Runs steps in isolation. Implementations: ``process`` (namespaces), ``docker`` (containers)."""

    name: str

    async def setup(self) -> None:
        """Once per runner: check that the isolation works here (raise ExecutorUnavailable if not)."""

    async def run(self, step: Step, on_line: LineCallback | None = None) -> StepResult:
        """Run ``step`` to its end or its timeout. Cancelling the call kills the step (and waits)."""

    async def close(self) -> None:
        """Release the executor's resources."""

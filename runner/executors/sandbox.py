"""Running one untrusted step as a child process: scrubbed environment, resource limits, its own process
group (and, with namespace isolation, its own mount/network/pid namespaces), a hard time limit after which
everything it started is killed, and its output streamed to a log file.

Namespace isolation (``unshare`` + ``setpriv``, Linux) guarantees, for the step it wraps:

* ``hidden`` paths are covered by an empty, unreadable tmpfs (the validation split and the prepare cache
  during training): the files are not reachable by any path, even by a root process;
* the whole file system is read-only (the root is re-bound read-only; /dev, /proc and /dev/shm keep
  their own mounts), so train.py cannot write to /tmp or anywhere else outside its work dir;
* ``readonly`` paths (the runner's state dir with its pristine prepare.py and other jobs, the repo, the
  interpreter's prefixes, the runner user's home) are bind-mounted read-only, ``writable`` paths (the job's
  work dir) are bound writable;
* no network (an empty network namespace: only a down loopback);
* a pid namespace whose init is the step: when it dies or is killed, every process it started dies too,
  including ones that called setsid;
* all capabilities dropped (bounding set emptied, no_new_privs), so the mounts cannot be undone.

Without it (``isolation="none"``, or where unprivileged user namespaces are off and the runner is not root)
the step still gets the scrubbed environment, the limits and its own process group, and is simply not
told where the validation files are: a hostile train.py could still look for them. Use the docker
executor, or run the runner as root, where that matters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import shlex
import shutil
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from runner.executors.base import LineCallback

log = logging.getLogger("swarm.runner.sandbox")

# What a step may inherit from the runner's environment. Everything else (API keys, NATS credentials,
# cloud tokens, PYTHONPATH...) is dropped.
ENV_ALLOW = (
    "PATH",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "LD_LIBRARY_PATH",
    "CUDA_HOME",
    "CUDA_PATH",
    "NVIDIA_VISIBLE_DEVICES",
    "NVIDIA_DRIVER_CAPABILITIES",
    "PYTORCH_CUDA_ALLOC_CONF",
    "VIRTUAL_ENV",
)

MAX_OUTPUT_CHARS = 256_000  # kept in memory for parsing (the whole log goes to the file)


def scrubbed_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: os.environ[k] for k in ENV_ALLOW if k in os.environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env.update(extra)
    return env


@dataclass
class Limits:
    """Resource limits set with setrlimit in the child before it runs anything (None: unlimited)."""

    address_space_mb: int | None = None
    cpu_seconds: int | None = None
    nproc: int | None = None
    file_size_mb: int | None = None

    def preexec(self) -> Callable[[], None]:
        def apply() -> None:
            if self.address_space_mb:
                b = self.address_space_mb * 1024 * 1024
                resource.setrlimit(resource.RLIMIT_AS, (b, b))
            if self.cpu_seconds:
                resource.setrlimit(resource.RLIMIT_CPU, (self.cpu_seconds, self.cpu_seconds + 5))
            if self.nproc:
                resource.setrlimit(resource.RLIMIT_NPROC, (self.nproc, self.nproc))
            if self.file_size_mb:
                b = self.file_size_mb * 1024 * 1024
                resource.setrlimit(resource.RLIMIT_FSIZE, (b, b))
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

        return apply


@dataclass
class Isolation:
    """What the namespace wrapper does (see the module docstring)."""

    hidden: Sequence[Path] = ()
    readonly: Sequence[Path] = ()
    writable: Sequence[Path] = ()


def namespace_available(user_ns: bool) -> bool:
    """Whether the unshare/setpriv wrapper works here (probes it once with `true`)."""
    if not (shutil.which("unshare") and shutil.which("setpriv")):
        return False
    import subprocess

    cmd = wrap_namespace(["true"], Isolation(), user_ns=user_ns)
    try:
        return subprocess.run(cmd, capture_output=True, timeout=10, check=False).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def wrap_namespace(cmd: Sequence[str], iso: Isolation, *, user_ns: bool) -> list[str]:
    """``cmd`` wrapped in unshare (mount, net, pid namespaces) + mounts + setpriv (no capabilities)."""
    q = shlex.quote
    lines = ["set -e", "mount --rbind / /", "mount -o remount,bind,ro /"]
    for p in iso.readonly:
        if Path(p).exists():
            lines.append(f"mount --bind {q(str(p))} {q(str(p))}")
            lines.append(f"mount -o remount,bind,ro {q(str(p))}")
    for p in iso.writable:
        if Path(p).exists():
            lines.append(f"mount --bind {q(str(p))} {q(str(p))}")
            lines.append(f"mount -o remount,bind,rw {q(str(p))}")
    for p in iso.hidden:
        if Path(p).exists():
            lines.append(f"mount -t tmpfs -o ro,size=4k,mode=000 swarm-hidden {q(str(p))}")
    # the working directory was entered before these mounts: re-enter it through them, or paths relative
    # to it would still reach the file system as it was (writable, validation files visible)
    lines.append('cd "$(pwd)"')
    lines.append('exec setpriv --bounding-set=-all --no-new-privs -- "$@"')
    unshare = ["unshare", "--mount", "--net", "--pid", "--fork", "--kill-child", "--mount-proc"]
    unshare += ["--propagation", "private"]
    if user_ns:
        unshare.insert(1, "--map-root-user")
        unshare.insert(1, "--user")
    return [*unshare, "--", "/bin/sh", "-c", "\n".join(lines), "swarm-sandbox", *cmd]


@dataclass
class StepResult:
    exit_code: int | None  # None: killed at the time limit
    seconds: float
    timed_out: bool
    output: str
    pid: int
    signal: int | None = None
    extra: dict[str, str] = field(default_factory=dict)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def kill_group(pgid: int, *, timeout: float = 10.0) -> None:
    """SIGKILL the whole process group and wait (bounded) until no member is left."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while _group_alive(pgid) and time.monotonic() < deadline:  # noqa: ASYNC110 (polling the kernel)
        await asyncio.sleep(0.02)


async def run_step(
    cmd: Sequence[str],
    *,
    cwd: Path,
    env: dict[str, str],
    timeout: float,
    log_path: Path,
    on_line: LineCallback | None = None,
    limits: Limits | None = None,
    header: str = "",
) -> StepResult:
    """Run ``cmd`` in its own session; stream merged stdout/stderr to ``log_path`` (appended) and
    ``on_line``; after ``timeout`` seconds kill its whole process group. The group is killed at the end
    in every case, so nothing it started outlives the step."""
    start = time.monotonic()
    chunks: list[str] = []
    size = 0
    with log_path.open("a", encoding="utf-8", errors="replace") as logf:
        if header:
            logf.write(header + "\n")
            logf.flush()
        proc = await asyncio.create_subprocess_exec(
            *cmd,
            cwd=str(cwd),
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=(limits or Limits()).preexec(),
            limit=1 << 20,
        )
        pgid = proc.pid
        assert proc.stdout is not None
        stdout = proc.stdout

        async def pump() -> None:
            nonlocal size
            while True:
                try:
                    raw = await stdout.readline()
                except ValueError:  # a line over the limit: take what is there
                    raw = await stdout.read(1 << 16)
                if not raw:
                    return
                line = raw.decode(errors="replace")
                logf.write(line)
                logf.flush()
                chunks.append(line)
                size += len(line)
                while size > MAX_OUTPUT_CHARS and len(chunks) > 1:
                    size -= len(chunks.pop(0))
                if on_line is not None:
                    try:
                        on_line(line.rstrip("\n"))
                    except Exception:  # a progress callback must never kill the step's reader
                        log.exception("progress callback failed")

        timed_out = False
        pump_task = asyncio.create_task(pump())
        try:
            await asyncio.wait_for(asyncio.shield(proc.wait()), timeout)
        except TimeoutError:
            timed_out = True
        finally:
            # also on cancellation (graceful stop) and after a normal exit (leftover children)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()  # reap the leader, then wait for the rest of the group to go
            await kill_group(pgid)
            try:
                await asyncio.wait_for(pump_task, 5.0)
            except TimeoutError:
                pump_task.cancel()
        seconds = time.monotonic() - start
        rc = proc.returncode
        if timed_out:
            logf.write(f"\n[runner] killed: hard time limit of {timeout:.0f} s reached\n")
    return StepResult(
        exit_code=None if timed_out else rc,
        seconds=seconds,
        timed_out=timed_out,
        output="".join(chunks),
        pid=pgid,
        signal=-rc if (rc is not None and rc < 0) else None,
    )

"""Running one untrusted step as a child process: scrubbed environment, resource limits, its own process
group (and, with namespace isolation, its own root file system, pid and network namespaces), a hard time
limit after which everything it started is killed, and its output streamed to a log file.

Namespace isolation (``unshare`` + ``pivot_root`` + ``setpriv``, Linux) gives the step, in a new mount
namespace, a new root that holds only:

* the system's own directories (:data:`SYSTEM_PATHS`: ``/usr``, the dynamic linker's files, ``/sys``),
  read-only, and the step's :class:`~runner.executors.steps.Mount` s (the interpreter, the venv, the
  harness, its work dir...), read-only unless marked writable — an allowlist: a copy of the validation
  split anywhere else on the host (the cache, ``/tmp``, another job) is not reachable by any path;
* its :attr:`~runner.executors.steps.Step.hidden` directories covered by an empty unreadable tmpfs (the
  offline corpus's validation packages inside every Python installation it can see);
* a private, empty ``/tmp`` and ``/dev/shm`` (tmpfs, size-limited), a minimal ``/dev``, its own ``/proc``;
* no network (an empty network namespace), a pid namespace whose init is the step (when it dies every
  process it started dies too, including ones that called setsid), and — as root — the uid ``nobody`` with
  no capabilities (bounding set emptied, no_new_privs), so the mounts cannot be undone and root-owned
  files stay closed.

Without it (``isolation="none"``, or where unprivileged user namespaces are off and the runner is not root)
the step still gets the scrubbed environment, the limits and its own process group, and is simply not
told where anything is: use the docker executor, or run the runner as root, where that matters.
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
from pathlib import Path

from runner.executors.steps import Limits, LineCallback, Mount, StepResult

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
)

# The host's system directories and files every step sees read-only (where they exist). Nothing of /root,
# /home, /tmp, /var, /opt, /srv or the runner's state: what a step needs beyond these comes as a Mount.
SYSTEM_PATHS = (
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
    "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/passwd", "/etc/group",
    "/etc/nsswitch.conf", "/etc/localtime", "/etc/hosts", "/etc/alternatives", "/sys",
)  # fmt: skip
DEV_NODES = ("null", "zero", "full", "random", "urandom")
NOBODY = 65534

MAX_OUTPUT_CHARS = 256_000  # kept in memory for parsing (the whole log goes to the file)


def scrubbed_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: os.environ[k] for k in ENV_ALLOW if k in os.environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env.update(extra)
    return env


def preexec(limits: Limits, *, address_space: bool = True) -> Callable[[], None]:
    """setrlimit in the child before it runs anything."""

    def apply() -> None:
        if limits.memory_mb and address_space:
            b = limits.memory_mb * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (b, b))
        if limits.cpu_seconds:
            resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 5))
        if limits.nproc:
            resource.setrlimit(resource.RLIMIT_NPROC, (limits.nproc, limits.nproc))
        if limits.file_size_mb:
            b = limits.file_size_mb * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_FSIZE, (b, b))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


# where util-linux keeps its tools: a PATH without the sbin directories (a minimal environment, a user's
# shell) must not silently turn the sandbox off
_SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/local/bin", "/usr/bin", "/bin")


def tool(name: str) -> str | None:
    """The absolute path of a sandbox tool: on PATH, else in the usual system directories."""
    return shutil.which(name) or shutil.which(name, path=os.pathsep.join(_SBIN))


def namespace_available(user_ns: bool, root: Path) -> bool:
    """Whether the namespace wrapper works here (probes it once with `true`)."""
    if not all(tool(t) for t in ("unshare", "setpriv", "pivot_root")):
        return False
    import subprocess

    root.mkdir(parents=True, exist_ok=True)
    cmd = wrap_namespace(["true"], root=root, cwd=Path("/"), mounts=[], hidden=[], user_ns=user_ns)
    try:
        res = subprocess.run(cmd, capture_output=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    if res.returncode != 0:
        log.warning("namespace sandbox probe failed: %s", res.stderr.decode(errors="replace")[-500:])
    return res.returncode == 0


def wrap_namespace(cmd: Sequence[str], *, root: Path, cwd: Path, mounts: Sequence[Mount], hidden: Sequence[Path],
                   user_ns: bool, tmp_mb: int = 1024, gpu: bool = False) -> list[str]:
    """``cmd`` wrapped in unshare (mount, net, pid namespaces), a new root (see the module docstring) and
    setpriv. ``root`` is an empty host directory the new root is mounted on (privately)."""
    q = shlex.quote
    r = str(root)
    # the tools by absolute path: the step's PATH (its own environment) need not hold /usr/sbin
    tools = {t: q(tool(t) or t) for t in ("mount", "umount", "pivot_root", "setpriv")}
    lines = ["set -e", f"R={q(r)}", f"mount() {{ {tools['mount']} \"$@\"; }}", f"umount() {{ {tools['umount']} \"$@\"; }}",
             'mount -t tmpfs -o size=16m,mode=755 swarm-root "$R"']

    def bind(path: str, writable: bool) -> None:
        if os.path.isdir(path):
            lines.append(f'mkdir -p "$R"{q(path)}')
        else:
            lines.append(f'mkdir -p "$R"{q(os.path.dirname(path))} && touch "$R"{q(path)}')
        lines.append(f'mount --rbind {q(path)} "$R"{q(path)}')
        lines.append(f'mount -o remount,bind,{"rw" if writable else "ro"} "$R"{q(path)}')

    for p in SYSTEM_PATHS:
        if os.path.islink(p):
            lines.append(f'ln -s {q(os.readlink(p))} "$R"{q(p)}')
        elif os.path.exists(p):
            bind(p, False)
    lines += [
        'mkdir -p "$R/dev" "$R/proc" "$R/tmp"',
        'mount -t tmpfs -o size=256k,mode=755 swarm-dev "$R/dev"',
        *(f'touch "$R/dev/{d}" && mount --bind /dev/{d} "$R/dev/{d}"' for d in DEV_NODES),
        'mkdir "$R/dev/shm" && ln -s /proc/self/fd "$R/dev/fd"',
        f'mount -t tmpfs -o size={tmp_mb}m,mode=1777 swarm-shm "$R/dev/shm"',
        f'mount -t tmpfs -o size={tmp_mb}m,mode=1777 swarm-tmp "$R/tmp"',
        'mount -t proc proc "$R/proc"',
    ]
    if gpu:
        lines.append('for d in /dev/nvidia*; do [ -e "$d" ] && touch "$R$d" && mount --bind "$d" "$R$d"; done || true')
    # the step's own mounts after the private /tmp, parents before children, so a job dir under the host's
    # /tmp appears inside the private one
    for m in sorted(mounts, key=lambda m: len(m.path.parts)):
        if m.path.exists():
            bind(str(m.path), m.writable)
    for h in hidden:
        lines.append(f'[ -d "$R"{q(str(h))} ] && mount -t tmpfs -o ro,size=4k,mode=000 swarm-hidden "$R"{q(str(h))} || true')
    lines += ['cd "$R"', "mkdir .old", f"{tools['pivot_root']} . .old", "umount -l /.old", "rmdir /.old",
              f"cd {q(str(cwd))}"]
    drop = "" if user_ns else f"--reuid={NOBODY} --regid={NOBODY} --clear-groups "
    lines.append(f'exec {tools["setpriv"]} {drop}--bounding-set=-all --no-new-privs -- "$@"')
    unshare = [tool("unshare") or "unshare", "--mount", "--net", "--pid", "--fork", "--kill-child", "--propagation",
               "private"]
    if user_ns:
        unshare[1:1] = ["--user", "--map-root-user"]
    return [*unshare, "--", "/bin/sh", "-c", "\n".join(lines), "swarm-sandbox", *cmd]


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
    address_space_limit: bool = True,
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
            preexec_fn=preexec(limits or Limits(), address_space=address_space_limit),
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
        ended = time.monotonic()
        rc = proc.returncode
        if timed_out:
            logf.write(f"\n[runner] killed: hard time limit of {timeout:.0f} s reached\n")
    # a SIGKILL we did not send (the kernel's OOM killer) is the usual sign of memory exhaustion
    oom = not timed_out and rc == -signal.SIGKILL
    return StepResult(exit_code=None if timed_out else rc, started=start, ended=ended, timed_out=timed_out,
                      oom_killed=oom, output="".join(chunks), pid=pgid)

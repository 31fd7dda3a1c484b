"""Running the README's commands the way a newcomer does: a fresh clone of the working tree, a clean
environment (HOME an empty directory, no virtualenv active, no SWARM_* variables), the clone as the working
directory with the default relative state dir, stdin closed, no terminal.

The clone reuses the venv that `make test` built (symlinked as the clone's .venv), so setup is paid once;
PYTHONPATH points at the clone, so the code that runs is the clone's, not the checkout's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def clone_working_tree(dest: Path) -> Path:
    """``git clone`` of this checkout plus its uncommitted changes and untracked (not ignored) files, so the
    clone is what a commit of the working tree would give a newcomer."""
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(REPO), str(dest)], check=True)
    diff = subprocess.run(["git", "diff", "HEAD", "--binary"], cwd=REPO, check=True, capture_output=True).stdout
    if diff.strip():
        subprocess.run(["git", "apply", "--whitespace=nowarn"], cwd=dest, input=diff, check=True)
    others = subprocess.run(["git", "ls-files", "--others", "--exclude-standard", "-z"], cwd=REPO, check=True,
                            capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, others):
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, dest / rel)
    venv = Path(sys.prefix)
    (dest / ".venv").symlink_to(venv, target_is_directory=True)
    return dest


@dataclass
class Newcomer:
    """A clone and a clean environment to run commands in."""

    clone: Path
    home: Path
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        venv_bin = str(self.clone / ".venv" / "bin")
        return {"PATH": f"{venv_bin}:/usr/local/bin:/usr/bin:/bin", "HOME": str(self.home), "LANG": "C.UTF-8",
                "PYTHONPATH": str(self.clone), **self.extra_env}

    def swarm(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``.venv/bin/swarm ARGS`` in the clone, to completion."""
        res = subprocess.run([str(self.clone / ".venv" / "bin" / "swarm"), *args], cwd=self.clone, env=self.env,
                             stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
        if check and res.returncode != 0:
            raise AssertionError(f"swarm {' '.join(args)} exited {res.returncode}:\n{res.stdout[-4000:]}\n"
                                 f"{res.stderr[-4000:]}")
        return res

    def start(self, *args: str, log: str) -> subprocess.Popen[bytes]:
        """``args`` (a command in the clone's .venv/bin, or an absolute path) in the background, output to
        ``<clone>/<log>``."""
        exe = args[0] if os.path.isabs(args[0]) else str(self.clone / ".venv" / "bin" / args[0])
        with open(self.clone / log, "wb") as out:  # the child keeps its own descriptor
            return subprocess.Popen([exe, *args[1:]], cwd=self.clone, env=self.env, stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.STDOUT)

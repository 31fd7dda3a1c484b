"""Once per node (per runner start): the pristine prepare.py copy, prepare.py's ``ensure_prepared`` run as
its own process, and the world-readable training view that training gets instead of the cache."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import shutil
import sys
from pathlib import Path

from runner.config import RunnerConfig
from runner.errors import ExecutorUnavailable, PrepareFailed
from runner.executors.base import NodeData
from runner.executors.sandbox import scrubbed_env

log = logging.getLogger("swarm.runner.node")

_PREPARE_SNIPPET = """
import dataclasses, json, sys
sys.path.insert(0, ".")
import prepare
p = prepare.ensure_prepared(profile=sys.argv[1])
d = dataclasses.asdict(p) if dataclasses.is_dataclass(p) else dict(vars(p))
print("SWARM_PREPARED " + json.dumps({k: (v if isinstance(v, (int, float)) else str(v)) for k, v in d.items()}))
"""


def default_cache_dir(config: RunnerConfig) -> Path:
    if config.cache_dir is not None:
        return Path(config.cache_dir)
    env = os.environ.get("SWARM_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "swarm"


def install_pristine(config: RunnerConfig) -> tuple[Path, str]:
    """Copy the runner's own prepare.py into ``state_dir/pristine`` (read-only). Returns (dir, sha256)."""
    src = Path(config.prepare_py)
    if not src.is_file():
        raise ExecutorUnavailable(
            f"no pristine prepare.py at {src}: the runner needs its own copy of the harness "
            "(set RunnerConfig.prepare_py / --prepare-py)"
        )
    data = src.read_bytes()
    pristine = config.state_dir / "pristine"
    if pristine.exists():
        for f in pristine.iterdir():
            f.chmod(0o644)
    pristine.mkdir(parents=True, exist_ok=True)
    dst = pristine / "prepare.py"
    dst.write_bytes(data)
    dst.chmod(0o444)
    return pristine, hashlib.sha256(data).hexdigest()


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def build_train_view(data_dir: Path, view: Path) -> None:
    """A world-readable copy (hard links where possible) of the training data directory."""
    if view.exists():
        shutil.rmtree(view)
    shutil.copytree(data_dir, view, symlinks=False, copy_function=_link_or_copy)
    for root, dirs, files in os.walk(view):
        os.chmod(root, 0o755)
        for f in files:
            p = os.path.join(root, f)
            os.chmod(p, os.stat(p).st_mode | 0o444)
        del dirs  # walked anyway


def _contains(parent: Path, child: Path) -> bool:
    try:
        child.resolve().relative_to(parent.resolve())
    except ValueError:
        return False
    return True


async def prepare_node(config: RunnerConfig, profile: str) -> NodeData:
    """Run the pristine prepare.py's ``ensure_prepared`` (data + tokenizer, cached per node)."""
    pristine, _ = install_pristine(config)
    cache = default_cache_dir(config)
    cache.mkdir(parents=True, exist_ok=True)
    env = scrubbed_env({"SWARM_CACHE_DIR": str(cache), "SWARM_PROFILE": profile, "HOME": str(Path.home())})
    proc = await asyncio.create_subprocess_exec(
        config.python or sys.executable,
        "-c",
        _PREPARE_SNIPPET,
        profile,
        cwd=str(pristine),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out_b, _ = await proc.communicate()
    out = out_b.decode(errors="replace")
    lines = [ln for ln in out.splitlines() if ln.startswith("SWARM_PREPARED ")]
    if proc.returncode != 0 or not lines:
        raise PrepareFailed(
            f"prepare.py ensure_prepared(profile={profile!r}) failed (exit {proc.returncode}):\n{out[-3000:]}"
        )
    info = json.loads(lines[-1].split(" ", 1)[1])
    data_dir, val_dir = Path(info["data_dir"]), Path(info["val_dir"])
    view = config.state_dir / "train_view"
    build_train_view(data_dir, view)
    hidden: list[Path] = []
    for p in (Path(info.get("root", "")) if info.get("root") else None, val_dir, cache):
        if p is None or not p.exists() or any(_contains(h, p) or _contains(p, h) for h in hidden):
            if p is not None and p.exists():  # nested: hide the outermost one only
                hidden = [h for h in hidden if not _contains(p, h)]
                if not any(_contains(h, p) for h in hidden):
                    hidden.append(p)
            continue
        if _contains(p, config.state_dir) or _contains(p, view):
            log.warning("cannot hide %s during training: it contains the runner's state dir", p)
            continue
        hidden.append(p)
    return _node_data(profile, view, val_dir, hidden, pristine, cache, info)


def _node_data(
    profile: str,
    view: Path,
    val_dir: Path,
    hidden: list[Path],
    pristine: Path,
    cache: Path,
    info: dict[str, object],
) -> NodeData:
    return NodeData(
        profile=profile,
        train_view=view.resolve(),
        val_dir=val_dir.resolve(),
        hidden=tuple(h.resolve() for h in hidden),
        pristine_dir=pristine.resolve(),
        cache_dir=cache.resolve(),
        dataset_fingerprint=str(info.get("dataset_fingerprint", "")),
        tokenizer_fingerprint=str(info.get("tokenizer_fingerprint", "")),
        vocab_size=int(str(info.get("vocab_size") or 0)),
    )


def simulated_node(config: RunnerConfig, profile: str) -> NodeData:
    base = config.state_dir / "simulated"
    for d in ("train", "val", "pristine"):
        (base / d).mkdir(parents=True, exist_ok=True)
    return NodeData(
        profile=profile,
        train_view=base / "train",
        val_dir=base / "val",
        hidden=(),
        pristine_dir=base / "pristine",
        cache_dir=base,
        dataset_fingerprint="simulated",
        tokenizer_fingerprint="simulated",
    )

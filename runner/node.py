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


def build_data_view(data_dir: Path, view: Path) -> None:
    """A world-readable copy of what a step may read of the prepared data: tokenizer, token byte lengths
    and meta. No token files: training data comes from the runner's feed, batch by batch."""
    if view.exists():
        shutil.rmtree(view)
    view.mkdir(parents=True)
    for name in ("tokenizer.json", "token_bytes.npy", "meta.json"):
        if (data_dir / name).exists():
            shutil.copyfile(data_dir / name, view / name)
            (view / name).chmod(0o444)
    view.chmod(0o755)


def python_lib_dirs() -> list[Path]:
    """The standard-library directories of every Python installation a step can see (its own interpreter's
    and the system's), where the offline corpus's validation packages live."""
    roots = {Path(sys.base_prefix), Path(sys.prefix), Path("/usr"), Path("/usr/local")}
    found: list[Path] = []
    for root in roots:
        for lib in ("lib", "lib64"):
            found.extend(p for p in sorted((root / lib).glob("python3*")) if p.is_dir())
    return sorted({p.resolve() for p in found})


# Where an image's Python keeps its standard library (the docker executor covers these paths in every
# container: the host cannot look inside the image, and covering a path that does not exist is harmless).
IMAGE_PYTHON_LIBS = tuple(f"{root}/python3.{minor}" for root in ("/usr/lib", "/usr/local/lib", "/opt/conda/lib")
                          for minor in range(8, 16))


def hidden_val_sources(meta: dict[str, object]) -> list[Path]:
    """Directories to cover in every step: for the offline corpus, its validation packages in each Python
    installation (see prepare.OFFLINE_VAL_DIRS) on this host and where an image would keep them. Other
    corpora live in the cache, which no step sees."""
    identity = meta.get("source_identity")
    val_dirs = identity.get("val_dirs", []) if isinstance(identity, dict) else []
    host = [lib / str(d) for lib in python_lib_dirs() for d in val_dirs if (lib / str(d)).is_dir()]
    image = [Path(lib) / str(d) for lib in IMAGE_PYTHON_LIBS for d in val_dirs]
    return host + [p for p in image if p not in host]


async def prepare_node(config: RunnerConfig, profile: str, hw_class: str = "") -> NodeData:
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
    return await asyncio.to_thread(_node_data, config, profile, hw_class, info, pristine, cache)


def _node_data(config: RunnerConfig, profile: str, hw_class: str, info: dict[str, str], pristine: Path,
               cache: Path) -> NodeData:
    data_dir, val_dir = Path(info["data_dir"]).resolve(), Path(info["val_dir"]).resolve()
    meta = json.loads((data_dir / "meta.json").read_text())
    view = config.state_dir / "data_view"
    build_data_view(data_dir, view)
    return NodeData(
        profile=profile,
        train_view=view.resolve(),
        val_dir=val_dir,
        hidden=tuple(hidden_val_sources(meta)),
        pristine_dir=pristine.resolve(),
        cache_dir=cache.resolve(),
        dataset_fingerprint=str(meta.get("dataset_fingerprint", "")),
        tokenizer_fingerprint=str(meta.get("tokenizer_fingerprint", "")),
        vocab_size=int(meta.get("vocab_size") or 0),
        hw_class=hw_class,
        data_view=view.resolve(),
        train_dir=(data_dir / "train").resolve(),
        bos_id=int(meta.get("bos_id") or 0),
    )


def simulated_node(config: RunnerConfig, profile: str, hw_class: str = "") -> NodeData:
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
        hw_class=hw_class,
    )

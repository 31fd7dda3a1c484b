"""Shared helpers for the harness tests (prepare.py / train.py): variants, subprocess runs, parsing."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from bus.trainpy import parse_progress as parse_one_progress
from bus.trainpy import parse_summary

REPO = Path(__file__).resolve().parent.parent
TRAIN_PY = REPO / "train.py"
CORPUS_MAX_BYTES = "400000"  # a small offline corpus keeps tokenizer training to about a second

# A tiny cpu model so a few seconds of training means dozens of steps; edited the way the runner edits knobs.
SMALL_KNOBS = {
    "CPU_DEPTH": "2",
    "CPU_ASPECT_RATIO": "64",
    "CPU_HEAD_DIM": "32",
    "CPU_DEVICE_BATCH_SIZE": "8",
    "CPU_TOTAL_BATCH_SIZE": "1024",
}
SMALL_ENV = {"SWARM_MAX_SEQ_LEN": "128", "SWARM_EVAL_TOKENS": "4096"}


def set_knobs(source: str, knobs: dict[str, str]) -> str:
    """Replace `NAME = literal  # comment` lines, as a runner's knob editor does."""
    for name, value in knobs.items():
        source, n = re.subn(rf"^{name} = [^#\n]*?(\s*#.*)?$", rf"{name} = {value}\1", source, count=1, flags=re.M)
        assert n == 1, f"knob {name} not found"
    return source


def make_variant(dst: Path, knobs: dict[str, str] | None = None,
                 replace: list[tuple[str, str]] | None = None) -> Path:
    """Write a train.py variant: the small knobs, extra knobs, then literal replacements."""
    src = set_knobs(TRAIN_PY.read_text(), {**SMALL_KNOBS, **(knobs or {})})
    for old, new in replace or []:
        assert old in src, f"{old!r} not in train.py"
        src = src.replace(old, new)
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text(src)
    return dst


def harness_env(cache: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWARM_")}
    env.update(SWARM_CACHE_DIR=str(cache), SWARM_PROFILE="cpu", SWARM_CORPUS_MAX_BYTES=CORPUS_MAX_BYTES,
               PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", **SMALL_ENV)
    env.update(extra)
    return env


def run_py(script: Path | str, env: dict[str, str], cwd: Path, *args: str,
           timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(script), *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def parse_block(stdout: str) -> dict[str, str]:
    """The `key: value` lines after the final `---` line (bus.trainpy.parse_summary, as text)."""
    summary = parse_summary(stdout)
    assert summary.text, stdout
    return summary.text


def parse_progress(stdout: str) -> list[tuple[int, float, float, int]]:
    """Every progress line (bus.trainpy.parse_progress)."""
    lines = [p for line in stdout.splitlines() if (p := parse_one_progress(line)) is not None]
    return [(p.step, p.progress, p.loss, p.tok_per_s) for p in lines]

"""The runner's configuration: one dataclass, passed in explicitly (no globals, no hidden env reads
beyond the defaults documented here)."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

from bus.client import DEFAULT_URL
from bus.events import check_token

REPO_ROOT = Path(__file__).resolve().parents[1]

# Allowances per profile (seconds), before calibration tightens them (runner/lab.py). The budget itself is
# prepare.py's profile's (its one owner); these bound what happens around it: process start to the first
# batch, the declared warm-up (compile), the evaluation.
STARTUP_SECONDS = {"cpu": 60.0, "gpu": 180.0}
WARMUP_SECONDS = {"cpu": 0.0, "gpu": 180.0}
EVAL_SECONDS = {"cpu": 120.0, "gpu": 180.0}


def absolute(path: str | Path) -> Path:
    """``~`` expanded, relative to the current directory, symlinks resolved: the one form of a path that
    means the same in every process and on every log line."""
    return Path(path).expanduser().resolve()


def default_runner_id(gpu: int | None = None) -> str:
    host = "".join(c if c.isalnum() or c in "-_" else "-" for c in socket.gethostname())[:40] or "host"
    suffix = f"gpu{gpu}" if gpu is not None else f"p{os.getpid()}"
    return f"{host}-{suffix}"


@dataclass
class RunnerConfig:
    """Everything one runner needs.

    ``classes``: the hardware classes it serves, most specific first; default ``(hw_class, "any")``.
    ``executor``: ``process`` (default), ``docker`` or ``simulated``.
    ``state_dir``: the runner's own directory (workdirs, full logs, train view, pristine harness copy).
    ``cache_dir``: where prepare.py keeps prepared data and tokenizers (once per node; SWARM_CACHE_DIR).
    ``dataset`` / ``corpus`` / ``dataset_url`` / ``num_shards``: the data this runner prepares and trains on
    (prepare.py's ``ensure_prepared``): a dataset by name (climbmix, fineweb-edu, or ``offline``) with an
    optional mirror and shard count, or a directory of one's own files; none of them: the profile's default
    (gpu: climbmix where it downloads, else the offline corpus with a message; cpu: the offline corpus).
    Every runner of a hardware class in a run must train on the same data (a runner on other data does not
    join).
    ``max_budget``: the most this runner gives one experiment, in the profile's budget unit (a hypothesis
    asking for more gets this much, and its result records what it got); None: the profile's budget.
    ``ack_wait`` / ``max_deliver``: the work consumers' lease and delivery bound (must match every
    runner of the run: they configure one shared durable consumer).
    ``gpu``: the GPU index (CUDA_VISIBLE_DEVICES) of a one-per-GPU runner; ``threads``: thread limit of a
    CPU runner (OMP_NUM_THREADS and friends).
    ``time_scale``: simulated executor only, wall seconds per simulated second (0.01: a 300 s budget takes 3 s).
    ``burst``: exit when the queue is empty (tests, benchmarks). ``max_experiments``: exit after that many.
    """

    nats_urls: tuple[str, ...] = (DEFAULT_URL,)
    run: str = "default"
    runner_id: str = ""
    classes: tuple[str, ...] = ()
    hw_class: str = ""  # "" = detect from the hardware
    executor: str = "process"
    state_dir: Path = field(default_factory=lambda: Path(".swarm") / "runner")
    cache_dir: Path | None = None
    dataset: str = ""
    corpus: Path | None = None
    dataset_url: str = ""
    num_shards: int | None = None
    profile: str = ""  # cpu | gpu; "" = gpu when a GPU is visible, else cpu
    max_budget: float | None = None
    startup_seconds: float | None = None
    eval_seconds: float | None = None
    grace_seconds: float = 10.0  # the budget window's fixed tolerance (plus 5 % of the window)
    eval_tokens: int | None = None  # scored validation tokens (None: the profile's; tests use fewer)
    ack_wait: float = 120.0
    max_deliver: int = 5
    gpu: int | None = None
    threads: int | None = None
    time_scale: float = 1.0
    burst: bool = False
    max_experiments: int | None = None
    calibrate: bool = True
    calibration_budget: float | None = None  # None: the profile's budget (seconds: 20 s at most)
    prefetch: bool = True
    stop_grace_seconds: float = 30.0
    fetch_timeout: float = 5.0
    memory_limit_mb: int | None = None  # process: RLIMIT_AS (off on GPU: CUDA maps huge address space)
    file_size_limit_mb: int = 4096
    nproc_limit: int = 4096
    isolation: str = "auto"  # process executor: auto | namespace | none (see executors/process.py)
    docker_image: str = "swarm-runner:latest"
    docker_mounts: tuple[str, ...] = ()  # extra read-only host paths for the docker executor (e.g. a venv)
    docker_python: str = "python"  # interpreter inside the image
    prepare_py: Path = field(default_factory=lambda: REPO_ROOT / "prepare.py")
    baseline_train_py: Path = field(default_factory=lambda: REPO_ROOT / "train.py")
    python: str = ""  # interpreter for train.py / prepare.py; "" = this one
    progress_interval: float = 0.5
    log_tail_chars: int = 4000
    seed: int | None = None  # overrides the hypothesis's seed (SWARM_SEED)

    def __post_init__(self) -> None:
        check_token("run", self.run)
        if not self.runner_id:
            self.runner_id = default_runner_id(self.gpu)
        check_token("runner id", self.runner_id)
        for c in self.classes:
            check_token("hardware class", c)
        if self.executor not in ("process", "docker", "simulated"):
            raise ValueError(f"unknown executor {self.executor!r}: use process, docker or simulated")
        if self.isolation not in ("auto", "namespace", "none"):
            raise ValueError(f"unknown isolation {self.isolation!r}: use auto, namespace or none")
        if self.profile not in ("", "cpu", "gpu"):
            raise ValueError(f"unknown profile {self.profile!r}: use cpu or gpu")
        # every path is absolute from here on: they cross process boundaries (a child's cwd is its work dir,
        # a container sees host paths) and are stored in events, where a relative path means nothing
        self.state_dir = absolute(self.state_dir)
        self.cache_dir = absolute(self.cache_dir) if self.cache_dir is not None else None
        self.corpus = absolute(self.corpus) if self.corpus is not None else None
        if self.dataset or self.corpus or self.dataset_url or self.num_shards is not None:
            import prepare  # the one home of what a request for data may be

            try:
                prepare.check_data_request(self.dataset or None, str(self.corpus) if self.corpus else None,
                                           self.num_shards, self.dataset_url or None, self.profile or None)
            except prepare.PrepareError as e:
                raise ValueError(str(e)) from e
        self.prepare_py = absolute(self.prepare_py)
        self.baseline_train_py = absolute(self.baseline_train_py)
        if self.time_scale <= 0:
            raise ValueError("time_scale must be > 0")

"""The executor port: how a runner trains a train.py and evaluates its weights. One Protocol, three
implementations (process, docker, simulated), one contract test suite (tests/test_runner_executors.py).

The daemon prepares the job directory (see :class:`Job`) and classifies outcomes; an executor only runs the
two steps with the isolation it promises and reports what happened.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

LineCallback = Callable[[str], None]


@dataclass(frozen=True)
class NodeData:
    """What prepare.py made once for this node, as the runner exposes it.

    ``data_view``: tokenizer, token byte lengths and meta, world-readable: what a step gets as
    SWARM_DATA_DIR (no token files: training data comes from the runner's feed). ``train_dir``: the training
    shards the feed reads. ``val_dir``: the validation split, read only by the trusted evaluator.
    ``hidden``: directories a step must not see even inside what it may see (the offline corpus's validation
    packages in every Python installation). ``pristine_dir``: the runner's own copy of prepare.py.
    ``train_view``: the old name of the data directory (simulated runs).
    """

    profile: str
    train_view: Path
    val_dir: Path
    hidden: tuple[Path, ...]
    pristine_dir: Path
    cache_dir: Path
    dataset_fingerprint: str = ""
    tokenizer_fingerprint: str = ""
    vocab_size: int = 0
    hw_class: str = ""  # the runner's hardware class (its detected Hardware); "" = not known
    data_view: Path = Path()  # tokenizer.json, token_bytes.npy, meta.json: what SWARM_DATA_DIR shows a step
    train_dir: Path = Path()  # the training token shards, read only by the runner's feed
    bos_id: int = 0


@dataclass
class Job:
    """One attempt at one hypothesis, laid out on disk by the daemon::

    job_dir/            runner-private
      work/             training cwd (writable by training): train.py, prepare.py (pristine copy), out/
      eval/             the evaluation's cwd: the verified train.py and the pristine prepare.py
      train.log         full log of both steps (what log_ref points at)
    """

    hypothesis_id: str
    attempt: int
    train_py: str  # verified source (sha256 checked)
    job_dir: Path
    budget_seconds: float  # the budget's amount, in budget_unit
    train_timeout: float  # hard limit of the training step (budget + startup + grace)
    eval_timeout: float  # hard limit of the evaluation step (evaluation + grace)
    seed: int = 0
    budget_unit: str = "seconds"
    env: dict[str, str] = field(default_factory=dict)  # extra environment (CUDA_VISIBLE_DEVICES, threads)
    state: dict[str, Any] = field(default_factory=dict)  # executor-private (container ids...)

    @property
    def work_dir(self) -> Path:
        return self.job_dir / "work"

    @property
    def out_dir(self) -> Path:
        return self.job_dir / "work" / "out"

    @property
    def eval_dir(self) -> Path:
        return self.job_dir / "eval"

    @property
    def sock_dir(self) -> Path:
        """Where the feed's and the evaluation's Unix sockets live: a short path (a socket's path is limited
        to 107 bytes, which a job dir under a deep state dir exceeds), set by runner.jobs.make_job."""
        return Path(self.state.get("sock_dir") or self.job_dir / "sock")

    @property
    def log_path(self) -> Path:
        return self.job_dir / "train.log"


@dataclass
class TrainOutcome:
    """What the training step did. ``exit_code`` None: killed by the hard limit (``timed_out``)."""

    exit_code: int | None
    seconds: float
    timed_out: bool = False
    oom_killed: bool = False
    output: str = ""  # stdout+stderr (also in the log file)
    pids: list[int] = field(default_factory=list)  # process executor: the group leader, for tests


@dataclass
class EvalOutcome:
    """The trusted evaluation's verdict: prepare.py's EvalResult as a dict, or an error."""

    status: str  # ok | noncausal | error
    val_bpb: float | None = None
    reason: str = ""
    seconds: float = 0.0
    num_params: int = 0
    eval_tokens: int = 0
    output: str = ""

    @classmethod
    def from_json_file(cls, path: Path, output: str, seconds: float) -> EvalOutcome:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            return cls("error", reason=f"evaluation wrote no result ({e})", output=output, seconds=seconds)
        status = str(data.get("status", "error"))
        if status not in ("ok", "noncausal", "error"):
            status = "error"
        vb = data.get("val_bpb")
        return cls(
            status=status,
            val_bpb=float(vb) if isinstance(vb, int | float) else None,
            reason=str(data.get("reason") or ""),
            seconds=float(data.get("eval_seconds") or seconds),
            num_params=int(data.get("num_params") or 0),
            eval_tokens=int(data.get("eval_tokens") or 0),
            output=output,
        )


@runtime_checkable
class Executor(Protocol):
    """Runs the two steps of an experiment. Implementations: process, docker, simulated."""

    name: str

    async def setup(self, node: NodeData) -> None:
        """Once per runner, after the node's data is prepared."""

    async def prepare(self, job: Job) -> None:
        """Ready a job whose directory the daemon made (pipelined: may run while another job trains)."""

    async def train(self, job: Job, on_line: LineCallback) -> TrainOutcome:
        """Run train.py with only the training split reachable; kill everything at ``job.train_timeout``."""

    async def evaluate(self, job: Job) -> EvalOutcome:
        """Run the pristine prepare.py's evaluation of ``job.out_dir`` (the only step that sees val)."""

    async def cleanup(self, job: Job) -> None:
        """Remove what prepare/train/evaluate left (containers, processes); keep the log."""

    async def close(self) -> None:
        """Release the executor's resources."""

"""One experiment's job directory and the two untrusted steps the runner builds for it (the one home of
the step environment: what each step sees, its variables, its limits).

    job_dir/            the runner's (0700): nothing here is mounted whole
      work/             training's cwd and only writable place: train.py, prepare.py (pristine), out/, tmp/,
                        cache/ (this job's copy of the runner's compile cache: warm, but whatever the job
                        writes into it dies with the job, so no experiment can plant code another loads)
      eval/             the model process's cwd, read-only to it: the verified train.py, pristine prepare.py
      train.log         the full log of every step
    /tmp/swarm-XXXX/    feed.sock (training data), eval-<k>.sock (the trusted evaluation), read-only mount:
                        a socket's path must stay under 108 bytes, whatever the state dir

The training step sees: the interpreter, the venv, the harness package, the data view (tokenizer and meta,
no token files: the data comes from the feed), its work dir (writable), the sockets. The model step sees the
same minus the feed, plus the saved weights read-only. Neither sees the cache, the validation split, the
runner's state, other jobs or the network; both have a private /tmp and /dev/shm.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import harness
from harness.feed import Budget
from runner.config import RunnerConfig
from runner.executors.base import Job, NodeData
from runner.executors.sandbox import scrubbed_env
from runner.executors.steps import Limits, Mount, Step

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TORCH_NUM_THREADS")


@dataclass(frozen=True)
class Deadlines:
    """How long a training step may take, in parts (seconds; see :mod:`runner.lab` for how each is used)."""

    startup: float  # process start -> first batch asked for (imports, model build)
    warmup: float  # first batch -> first counted batch (declared warm-up: compile)
    window: float  # first counted batch -> process end: the budget (seconds) or its wall cap (tokens)
    tolerance: float  # grace on the window: the last step, saving the weights, exiting

    @property
    def total(self) -> float:
        return self.startup + self.warmup + self.window + self.tolerance


def make_job(config: RunnerConfig, node: NodeData, hid: str, attempt: int, source: str, budget: Budget,
             seed: int, deadlines: Deadlines, eval_timeout: float) -> Job:
    """Lay out a job directory for one attempt (see the module docstring)."""
    job_dir = config.state_dir / "jobs" / f"{hid}-a{attempt}-{uuid.uuid4().hex[:6]}"
    job = Job(hypothesis_id=hid, attempt=attempt, train_py=source, job_dir=job_dir, budget_seconds=budget.amount,
              budget_unit=budget.unit, train_timeout=deadlines.total, eval_timeout=eval_timeout, seed=seed)
    job_dir.mkdir(parents=True)
    job_dir.chmod(0o700)
    job.state["sock_dir"] = tempfile.mkdtemp(prefix="swarm-", dir="/tmp" if os.path.isdir("/tmp") else None)
    pristine = node.pristine_dir / "prepare.py"
    for d in (job.work_dir, job.eval_dir):
        d.mkdir()
    for d in (job.work_dir, job.eval_dir):
        (d / "train.py").write_text(source)
        if pristine.is_file():
            shutil.copyfile(pristine, d / "prepare.py")
    (job.work_dir / "out").mkdir()
    (job.work_dir / "tmp").mkdir()
    cache = compile_cache(config)
    if cache.is_dir():
        shutil.copytree(cache, job.work_dir / "cache", symlinks=True)
    else:
        (job.work_dir / "cache").mkdir()
    for d in (job.work_dir, job.work_dir / "out", job.work_dir / "tmp"):
        d.chmod(0o777)  # steps run as nobody where the sandbox can switch users
    for root, dirs, _ in os.walk(job.work_dir / "cache"):
        os.chmod(root, 0o777)
        del dirs
    for d in (job.eval_dir, job.sock_dir):
        d.chmod(0o755)
    job.log_path.touch()
    return job


def compile_cache(config: RunnerConfig) -> Path:
    """The runner's persistent torch.compile cache (inductor + triton). Only the calibration run — the
    runner's own train.py — writes it (:func:`keep_compile_cache`); every experiment gets a copy."""
    return config.state_dir / "compile_cache"


def keep_compile_cache(config: RunnerConfig, job: Job) -> None:
    """After a trusted run (calibration), its compile cache becomes the runner's."""
    src, dst = job.work_dir / "cache", compile_cache(config)
    if src.is_dir():
        tmp = dst.with_name(dst.name + ".new")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp, symlinks=True)
        shutil.rmtree(dst, ignore_errors=True)
        tmp.rename(dst)


def remove_job(job: Job) -> None:
    """Delete the job's directory and its socket directory (the log was copied out before)."""
    shutil.rmtree(job.job_dir, ignore_errors=True)
    if "sock_dir" in job.state:
        shutil.rmtree(job.state["sock_dir"], ignore_errors=True)


def harness_env(config: RunnerConfig) -> dict[str, str]:
    """Where a step imports the harness from: the runner's own copy (the directory holding the ``harness``
    package this runner imported). Only that package is mounted from there, so nothing else of it imports."""
    if config.executor == "docker" and not Path(config.docker_python).is_absolute():
        return {}  # the image's own installation
    return {"PYTHONPATH": str(Path(harness.__file__).resolve().parent.parent)}


def interpreter(config: RunnerConfig) -> tuple[str, list[Mount]]:
    """The interpreter a step runs and what must be mounted for it: for the process executor (or a docker
    executor told to use this host's interpreter, as the tests do) the interpreter's installation, the venv
    and the harness package (editable installs import it from the repo) — what `import torch, prepare,
    harness` needs, and nothing else of the repo or the home; for the docker executor with the image's own
    interpreter, nothing (the image holds the project)."""
    if config.executor == "docker" and not Path(config.docker_python).is_absolute():
        return config.docker_python, []
    python = config.docker_python if config.executor == "docker" else (config.python or sys.executable)
    paths = [Path(sys.base_prefix), Path(sys.prefix), Path(python).resolve().parent.parent,
             Path(harness.__file__).resolve().parent]
    out: list[Mount] = []
    for p in paths:
        p = p.resolve()
        if p != Path("/") and all(m.path != p for m in out):
            out.append(Mount(p))
    return python, out


def _base_env(config: RunnerConfig, node: NodeData, job: Job, gpu: str | None, peak_flops: float | None) -> dict[str, str]:
    env = {
        "HOME": str(job.work_dir),
        "TMPDIR": str(job.work_dir / "tmp"),
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONNOUSERSITE": "1",
        # idle OpenMP threads spin by default: under CPU contention that made a forward pass 2-3x slower
        "OMP_WAIT_POLICY": "PASSIVE",
        "SWARM_MODE": "runner",
        "SWARM_PROFILE": node.profile,
        "SWARM_DATA_DIR": str(node.data_view),
        "CUDA_VISIBLE_DEVICES": gpu or "",
        **harness_env(config),
    }
    if config.threads:
        env.update(dict.fromkeys(THREAD_VARS, str(config.threads)))
    if peak_flops:
        env["SWARM_PEAK_FLOPS"] = f"{peak_flops:g}"
    if config.eval_tokens:
        env["SWARM_EVAL_TOKENS"] = str(config.eval_tokens)
    return scrubbed_env(env)


def _limits(config: RunnerConfig, timeout: float) -> Limits:
    cpus = config.threads or os.cpu_count() or 1
    return Limits(memory_mb=config.memory_limit_mb, cpu_seconds=int(timeout * (cpus + 1)) + 30,
                  nproc=config.nproc_limit, file_size_mb=config.file_size_limit_mb, threads=config.threads)


def train_step(config: RunnerConfig, node: NodeData, job: Job, *, gpu: str | None = None,
               peak_flops: float | None = None, name: str = "train") -> Step:
    """train.py under the budget: data from the feed, weights to work/out."""
    env = _base_env(config, node, job, gpu, peak_flops)
    env.update({
        "SWARM_FEED": str(job.sock_dir / "feed.sock"),
        "SWARM_OUT_DIR": str(job.work_dir / "out"),
        "SWARM_BUDGET": f"{job.budget_seconds:g}",
        "SWARM_BUDGET_UNIT": job.budget_unit,
        "SWARM_SEED": str(job.seed),
        # compiled kernels: this job's copy of the runner's warm cache (see make_job)
        "TORCHINDUCTOR_CACHE_DIR": str(job.work_dir / "cache" / "inductor"),
        "TRITON_CACHE_DIR": str(job.work_dir / "cache" / "triton"),
    })
    python, mounts = interpreter(config)
    mounts += [Mount(node.data_view), Mount(job.sock_dir), Mount(job.work_dir, writable=True)]
    return Step(name=name, argv=[python, "-s", "-u", "train.py"], cwd=job.work_dir, env=env,
                mounts=mounts, timeout=job.train_timeout, log_path=job.log_path,
                limits=_limits(config, job.train_timeout), hidden=list(node.hidden), gpu=gpu,
                header=f"[runner] {name} {job.hypothesis_id} attempt {job.attempt}, budget "
                       f"{Budget(job.budget_unit, job.budget_seconds)}, seed {job.seed}")


def model_step(config: RunnerConfig, node: NodeData, job: Job, shard: int, *, gpu: str | None = None) -> Step:
    """One model process of the trusted evaluation (``shard`` of them run, each in its own sandbox):
    train.py's model answers input rows with logits on the socket eval-<shard>.sock."""
    env = _base_env(config, node, job, gpu, None)
    out = job.work_dir / "out"
    python, mounts = interpreter(config)
    mounts += [Mount(node.data_view), Mount(job.sock_dir), Mount(job.eval_dir), Mount(out)]
    argv = [python, "-s", "-u", "-m", "harness.model_server",
            "--train-py", str(job.eval_dir / "train.py"), "--model-dir", str(out),
            "--socket", str(job.sock_dir / f"eval-{shard}.sock")]  # fmt: skip
    env["TMPDIR"] = env["HOME"] = "/tmp"  # its cwd is read-only; in the sandbox /tmp is private
    return Step(name="model", argv=argv, cwd=job.eval_dir, env=env, mounts=mounts, timeout=job.eval_timeout,
                log_path=job.log_path, limits=_limits(config, job.eval_timeout), hidden=list(node.hidden), gpu=gpu,
                header=f"[runner] trusted evaluation: model process {shard}")

"""``python -m runner``: one runner process (the ``swarm runner`` CLI wires the same config).

SIGTERM / SIGINT set the stop event: stop claiming, finish or give back the running item, leave, drain.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from runner.config import RunnerConfig
from runner.daemon import run_runner
from runner.errors import RunnerError


def parse_args(argv: list[str] | None = None) -> RunnerConfig:
    prog = "swarm runner" if sys.argv[0] == "swarm runner" else "python -m runner"  # how it was started
    p = argparse.ArgumentParser(prog=prog, description="swarm runner daemon")
    p.add_argument("--nats", default="nats://127.0.0.1:4222", help="comma-separated server URLs")
    p.add_argument("--run", default="default", help="the swarm run to serve (one subject token)")
    p.add_argument("--id", default="", help="runner id (default: host-gpuN or host-pPID)")
    p.add_argument("--classes", default="", help="comma-separated hardware classes, most specific first")
    p.add_argument("--hw-class", default="",
                   help="this runner's hardware class (default: detected: cpu, h100-sxm, h200, a100-sxm-80gb...)")
    p.add_argument("--executor", default="process", choices=["process", "docker", "simulated"],
                   help="process: child processes in a namespace sandbox (default); docker: a container per "
                        "step; simulated: the calibrated landscape in compressed time (no training)")
    p.add_argument("--state-dir", default=".swarm/runner",
                   help="the runner's own directory: jobs, full logs, the data view, the compile cache")
    p.add_argument("--cache-dir", default=None,
                   help="prepared data and tokenizers, once per node (default: SWARM_CACHE_DIR or ~/.cache/swarm)")
    p.add_argument("--profile", default="", choices=["", "cpu", "gpu"],
                   help="which half of train.py's knobs and which budget (default: gpu when a GPU is visible)")
    # the data (deployment files set them through the environment); every runner of a class in a run must
    # train on the same data
    env = os.environ.get
    p.add_argument("--dataset", default=env("SWARM_DATASET", ""), metavar="NAME",
                   help="climbmix | fineweb-edu | offline (SWARM_DATASET); default: the profile's (gpu: climbmix "
                        "where it downloads, else the offline corpus, with a message; cpu: offline)")
    p.add_argument("--corpus", default=env("SWARM_CORPUS") or None, metavar="DIR",
                   help="train on your own .txt/.md/.py/.parquet files instead of a dataset (SWARM_CORPUS)")
    p.add_argument("--dataset-url", default=env("SWARM_DATASET_URL", ""), metavar="URL",
                   help="a mirror serving the dataset's shards (SWARM_DATASET_URL)")
    p.add_argument("--num-shards", type=int, default=env("SWARM_NUM_SHARDS") or None, metavar="N",
                   help="training shards to download (SWARM_NUM_SHARDS; default 10); the validation shard is pinned")
    p.add_argument("--budget", type=float, default=None,
                   help="most a hypothesis may get, in the profile's unit (cpu: tokens, gpu: seconds); "
                        "default: the profile's budget (prepare.py)")
    p.add_argument("--startup-seconds", type=float, default=None,
                   help="most a step may take to ask for its first batch (default: 60 cpu / 180 gpu, tightened "
                        "by calibration)")
    p.add_argument("--eval-seconds", type=float, default=None,
                   help="most the trusted evaluation may take (default: 120 cpu / 180 gpu)")
    p.add_argument("--ack-wait", type=float, default=120.0,
                   help="the work lease in seconds, renewed while an experiment runs (same for every runner of a run)")
    p.add_argument("--max-deliver", type=int, default=5,
                   help="deliveries of a work item before it is dead-lettered as lost")
    p.add_argument("--gpu", type=int, default=None,
                   help="the GPU this runner owns (nvidia-smi index; one runner per GPU)")
    p.add_argument("--threads", type=int, default=None, help="threads of a CPU runner's steps (OMP_NUM_THREADS)")
    p.add_argument("--time-scale", type=float, default=1.0,
                   help="simulated executor: wall seconds per simulated second")
    p.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    p.add_argument("--max-experiments", type=int, default=None, help="exit after this many results")
    p.add_argument("--no-calibrate", action="store_true",
                   help="skip the calibration run of the unmodified train.py (looser allowances; tests)")
    p.add_argument("--no-prefetch", action="store_true",
                   help="do not claim and prepare the next item while one runs")
    p.add_argument("--stop-grace", type=float, default=30.0,
                   help="on SIGTERM, seconds to let the running experiment finish before giving it back")
    p.add_argument("--fetch-timeout", type=float, default=5.0, help="seconds of one long-poll for work")
    p.add_argument("--isolation", default="auto", choices=["auto", "namespace", "none"],
                   help="process executor: the namespace sandbox where it works (auto), always, or never")
    p.add_argument("--docker-image", default="swarm-runner:latest", help="docker executor: the steps' image")
    p.add_argument("--docker-python", default="python",
                   help="docker executor: the interpreter inside the image (an absolute host path mounts this host's)")
    p.add_argument("--memory-mb", type=int, default=None,
                   help="memory limit of a step (address space in the process executor, the container's in docker)")
    p.add_argument("--prepare-py", default=None, help="the runner's own prepare.py (default: the installed one)")
    p.add_argument("--baseline-train-py", default=None,
                   help="the unmodified train.py it calibrates with (default: the installed one)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    a = p.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if a.verbose else logging.INFO, format="%(asctime)s %(name)s %(message)s"
    )
    extra: dict[str, object] = {}
    if a.prepare_py:
        extra["prepare_py"] = Path(a.prepare_py)
    if a.baseline_train_py:
        extra["baseline_train_py"] = Path(a.baseline_train_py)
    try:
        return _config(a, extra)
    except ValueError as e:  # a value the config refuses (the data asked for, a token): say it as usage
        p.error(str(e))


def _config(a: argparse.Namespace, extra: dict[str, object]) -> RunnerConfig:
    return RunnerConfig(
        nats_urls=tuple(u.strip() for u in a.nats.split(",") if u.strip()),
        run=a.run,
        runner_id=a.id,
        classes=tuple(c for c in a.classes.split(",") if c),
        hw_class=a.hw_class,
        executor=a.executor,
        state_dir=Path(a.state_dir),
        cache_dir=Path(a.cache_dir) if a.cache_dir else None,
        dataset=a.dataset,
        corpus=Path(a.corpus) if a.corpus else None,
        dataset_url=a.dataset_url,
        num_shards=a.num_shards,
        profile=a.profile,
        max_budget=a.budget,
        startup_seconds=a.startup_seconds,
        eval_seconds=a.eval_seconds,
        ack_wait=a.ack_wait,
        max_deliver=a.max_deliver,
        gpu=a.gpu,
        threads=a.threads,
        time_scale=a.time_scale,
        burst=a.burst,
        max_experiments=a.max_experiments,
        calibrate=not a.no_calibrate,
        prefetch=not a.no_prefetch,
        stop_grace_seconds=a.stop_grace,
        fetch_timeout=a.fetch_timeout,
        isolation=a.isolation,
        docker_image=a.docker_image,
        docker_python=a.docker_python,
        memory_limit_mb=a.memory_mb,
        **extra,  # type: ignore[arg-type]
    )


async def _main(config: RunnerConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await run_runner(config, stop=stop)


def main(argv: list[str] | None = None) -> None:
    try:
        asyncio.run(_main(parse_args(argv)))
    except RunnerError as e:  # it could not start (data, calibration, executor): the message says what to do
        print(f"runner: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()

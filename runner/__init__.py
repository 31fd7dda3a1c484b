"""The runner: claims work items from the bus, executes train.py through an executor (process, Docker or
simulated), runs the trusted evaluation, renews its lease while it works and publishes fenced results.

Entry point for the CLI: :func:`runner.daemon.run_runner` with a :class:`runner.config.RunnerConfig`.
"""

from runner.config import RunnerConfig
from runner.daemon import Runner, run_runner

__all__ = ["Runner", "RunnerConfig", "run_runner"]

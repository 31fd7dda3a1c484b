"""Executors behind one Protocol: ``process`` (default), ``docker``, ``simulated``."""

from __future__ import annotations

from runner.config import RunnerConfig
from runner.executors.base import EvalOutcome, Executor, Job, LineCallback, NodeData, TrainOutcome


def make_executor(config: RunnerConfig) -> Executor:
    """The executor named by ``config.executor``."""
    if config.executor == "process":
        from runner.executors.process import ProcessExecutor

        return ProcessExecutor(config)
    if config.executor == "docker":
        from runner.executors.docker import DockerExecutor

        return DockerExecutor(config)
    from runner.executors.simulated import SimulatedExecutor

    return SimulatedExecutor(config)


__all__ = [
    "EvalOutcome",
    "Executor",
    "Job",
    "LineCallback",
    "NodeData",
    "TrainOutcome",
    "make_executor",
]

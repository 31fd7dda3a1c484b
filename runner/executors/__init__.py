"""Executors. Isolating ones (``process``, ``docker``) run :class:`~runner.executors.steps.Step` s that the
runner describes (runner/jobs.py); the ``simulated`` one answers from a landscape in compressed time."""

from __future__ import annotations

from runner.executors.base import EvalOutcome, Executor, Job, LineCallback, NodeData, TrainOutcome
from runner.executors.steps import Isolator, Limits, Mount, Step, StepResult

__all__ = [
    "EvalOutcome",
    "Executor",
    "Isolator",
    "Job",
    "Limits",
    "LineCallback",
    "Mount",
    "NodeData",
    "Step",
    "StepResult",
    "TrainOutcome",
]

"""Errors of the runner package. Each message says what was wrong and what to do."""

from __future__ import annotations


class RunnerError(Exception):
    """Base class of runner errors."""


class ContractViolation(RunnerError):
    """A train.py breaks the experiment contract (module-level side effects, bad sha256, unparsable)."""


class ExecutorUnavailable(RunnerError):
    """The chosen executor cannot run here (no Docker engine, no image, no pristine prepare.py...)."""


class PrepareFailed(RunnerError):
    """The node's data and tokenizer could not be prepared (prepare.py's ensure_prepared failed)."""


class CalibrationFailed(RunnerError):
    """The unmodified train.py did not run to a trusted result on this runner: it must not take work."""


class DataMismatch(RunnerError):
    """The run's runners of this hardware class train on other data (dataset or tokenizer fingerprint) than
    this runner prepared: its results would compare nothing, so it does not join."""

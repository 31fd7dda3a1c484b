"""Errors of the agents package."""

from __future__ import annotations


class AgentError(Exception):
    """Base class of every error raised by the agents package."""


class ValidationError(AgentError):
    """A proposed train.py (or edit) is not acceptable; the message is shown to the model next turn."""


class SpecError(AgentError):
    """An agent spec string (``optuna``, ``claude:<model>``, ...) could not be parsed."""


class ProposerError(AgentError):
    """A proposer could not produce proposals (API down after retries, bad configuration)."""

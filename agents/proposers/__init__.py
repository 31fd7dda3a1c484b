"""Proposers: where a wave of hypotheses comes from. One :class:`~agents.proposers.base.Proposer` protocol,
four implementations (Claude, OpenAI-compatible, Optuna TPE, random search)."""

from agents.proposers.base import (
    AgentContext,
    LlmCall,
    NoteDraft,
    ProposalBatch,
    ProposalDraft,
    Proposer,
    Rejection,
    Result,
)

__all__ = [
    "AgentContext",
    "LlmCall",
    "NoteDraft",
    "ProposalBatch",
    "ProposalDraft",
    "Proposer",
    "Rejection",
    "Result",
]

"""Errors of the ledger package. Each message says what was wrong and what to do."""

from __future__ import annotations


class LedgerError(Exception):
    """Base class of ledger errors."""


class ProjectorError(LedgerError):
    """The projector could not make progress (e.g. did not catch up in time)."""


class QueryError(LedgerError):
    """A read-API request that cannot be answered (bad SQL, not read-only, timed out, too big)."""


class ArchiveError(LedgerError):
    """An export directory that is missing tables or does not look like a ledger archive."""

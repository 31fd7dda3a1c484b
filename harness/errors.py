"""The harness's one error: preparation or download failed; the message says what and what to do."""

from __future__ import annotations


class PrepareError(RuntimeError):
    """Preparation or download failed; the message says what and what to do."""

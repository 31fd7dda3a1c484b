"""Researcher agents: the research loop (:mod:`agents.loop`) and its proposers (:mod:`agents.proposers`).

Agents meet the ledger and the runners only through bus messages; they never import ``ledger`` or ``runner``.
"""

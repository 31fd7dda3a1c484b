"""The live web dashboard of a swarm (``swarm dashboard``): served from the ledger's read API over the bus,
so it runs on any machine that can reach the swarm. Stands on ``bus/`` only."""

from dashboard.server import DashboardConfig, DashboardError, run_dashboard

__all__ = ["DashboardConfig", "DashboardError", "run_dashboard"]

"""The ledger: the DuckDB projection of the events stream, its read API, replay and export."""

from ledger.api import LedgerApi, LedgerClient
from ledger.errors import ArchiveError, LedgerError, ProjectorError, QueryError
from ledger.export import export_parquet
from ledger.projector import Projector
from ledger.replay import replay_archive, replay_stream
from ledger.schema import connect_db
from ledger.service import run_ledger

__all__ = [
    "ArchiveError",
    "LedgerApi",
    "LedgerClient",
    "LedgerError",
    "Projector",
    "ProjectorError",
    "QueryError",
    "connect_db",
    "export_parquet",
    "replay_archive",
    "replay_stream",
    "run_ledger",
]

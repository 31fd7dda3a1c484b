"""Opening a ledger file for analysis while a projector may be writing it."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

import duckdb

from ledger.schema import connect_db


def open_ledger(path: str | Path) -> duckdb.DuckDBPyConnection:
    """Open a ledger DuckDB file read-only. When a running projector holds its lock (DuckDB lets no other
    process open it, not even read-only), copy the file and its ``.wal`` to a temporary directory
    (removed at exit) and open the copy: a snapshot as of the copy."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(
            f"no ledger at {p}: pass the DuckDB file the projector writes (swarm ledger --db)"
        )
    try:
        return connect_db(str(p), read_only=True)
    except duckdb.IOException as e:
        if "lock" not in str(e).lower():
            raise
    tmp = Path(tempfile.mkdtemp(prefix="swarm-ledger-"))
    atexit.register(shutil.rmtree, tmp, True)
    copy = tmp / p.name
    shutil.copyfile(p, copy)
    wal = p.with_name(p.name + ".wal")
    if wal.exists():
        shutil.copyfile(wal, copy.with_name(copy.name + ".wal"))
    return connect_db(str(copy))  # writable copy, so DuckDB can replay the copied WAL

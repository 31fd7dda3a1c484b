"""Export every ledger table (raw events with their bytes included) to Parquet files, via pyarrow.

One ``<table>.parquet`` per table in a directory, plus ``manifest.json``; readable by the DuckDB CLI
(``SELECT * FROM 'dir/experiments.parquet'``), pandas and polars. Files are written under a temporary
name and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import duckdb
import pyarrow.parquet as pq

from ledger.schema import DATA_TABLES

EXPORT_TABLES = [*DATA_TABLES, "projector_state"]
EXPORT_VIEWS = ["experiments", "frontier", "leaderboard", "class_stats"]


def export_parquet(
    con: duckdb.DuckDBPyConnection, out_dir: str | Path, *, views: bool = True
) -> dict[str, int]:
    """Write every table (and, with ``views``, the computed views) to ``out_dir``. Returns row counts.

    Runs on a cursor, so it may be called while the projector writes (it sees one committed snapshot
    per table).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cur = con.cursor()
    counts: dict[str, int] = {}
    try:
        names = EXPORT_TABLES + (EXPORT_VIEWS if views else [])
        for name in names:
            order = " ORDER BY seq" if name in DATA_TABLES else ""
            table = cur.sql(f"SELECT * FROM {name}{order}").to_arrow_table()
            tmp = out / f".{name}.parquet.tmp"
            pq.write_table(table, tmp, compression="zstd")
            os.replace(tmp, out / f"{name}.parquet")
            counts[name] = table.num_rows
    finally:
        cur.close()
    manifest = {"exported_at": time.time(), "tables": EXPORT_TABLES, "views": EXPORT_VIEWS if views else [],
                "rows": counts}  # fmt: skip
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return counts

"""Writing a projected batch's column lists into DuckDB tables: Python lists become an Arrow table (converted
in C) written with one statement, in the table's own column order and types."""

from __future__ import annotations

from typing import Any

import duckdb
import pyarrow as pa

from ledger.schema import DISPOSITION_SQL


def _arrow(con: duckdb.DuckDBPyConnection, table: str, cols: dict[str, list[Any]]) -> pa.Table:
    # Python lists -> an Arrow table (converted in C) -> one INSERT ... SELECT: far faster than
    # executemany, and faster than unnest($1) over lists for wide tables.
    types = arrow_types(con, table)
    return pa.table({n: pa.array(v, type=types[n]) for n, v in cols.items()})


def append(con: duckdb.DuckDBPyConnection, table: str, cols: dict[str, Any]) -> None:
    """Insert the rows of ``cols`` (Python lists or Arrow arrays) into ``table`` in one statement: an Arrow
    table in the table's column order (absent columns NULL) appended as a relation. Each DuckDB statement
    costs about a millisecond here, whatever its size, and registering a view and dropping it are two
    more; a batch makes a dozen inserts, so this is most of what a small batch costs."""
    types = arrow_types(con, table)
    unknown = cols.keys() - types.keys()
    if unknown:
        raise ValueError(f"no columns {sorted(unknown)} in table {table}")
    n = len(next(iter(cols.values())))
    arrays = []
    for name, typ in types.items():
        values = cols.get(name)
        if values is None:
            arrays.append(pa.nulls(n, typ))
        elif isinstance(values, pa.Array | pa.ChunkedArray):
            arrays.append(values)
        else:
            arrays.append(pa.array(values, type=typ))
    con.from_arrow(pa.Table.from_arrays(arrays, names=list(types))).insert_into(table)


def insert(con: duckdb.DuckDBPyConnection, table: str, cols: dict[str, list[Any]], *, returning: str = "",
            or_ignore: bool = False) -> list[Any]:  # fmt: skip
    if not returning and not or_ignore:
        append(con, table, cols)
        return []
    quoted = ", ".join(f'"{n}"' for n in cols)
    view = f"_batch_{table}"
    con.register(view, _arrow(con, table, cols))
    try:
        sql = f"INSERT {'OR IGNORE ' if or_ignore else ''}INTO {table} ({quoted}) SELECT {quoted} FROM {view}"
        if returning:
            return con.execute(sql + f" RETURNING {returning}").fetchall()
        con.execute(sql)
        return []
    finally:
        try:
            con.unregister(view)
        except duckdb.TransactionException:  # the statement aborted the transaction: apply unregisters it
            pass


def insert_results(con: duckdb.DuckDBPyConnection, cols: dict[str, list[Any]]) -> None:
    """Insert the batch's finishes with their dispositions (:data:`DISPOSITION_SQL`, which reads them as
    ``_batch_results``), decided before they are written: no UPDATE of rows just inserted."""
    quoted = ", ".join(f'b."{n}"' for n in cols)
    names = ", ".join(f'"{n}"' for n in cols)
    con.register("_batch_results", _arrow(con, "results", cols))
    try:
        con.execute(
            f"INSERT INTO results ({names}, disposition) SELECT {quoted}, d.disposition "
            f"FROM _batch_results b JOIN ({DISPOSITION_SQL}) d ON d.event_id = b.event_id"
        )
    finally:
        con.unregister("_batch_results")


_arrow_cache: dict[str, dict[str, pa.DataType]] = {}


def arrow_types(con: duckdb.DuckDBPyConnection, table: str) -> dict[str, pa.DataType]:
    """The table's columns in order, with the Arrow types DuckDB itself gives them (nested ones included,
    such as ``experiment_state.claims``), read once per table."""
    if table not in _arrow_cache:
        schema = con.sql(f"SELECT * FROM {table} LIMIT 0").to_arrow_table().schema
        _arrow_cache[table] = {f.name: f.type for f in schema}
    return _arrow_cache[table]

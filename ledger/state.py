"""``experiment_state`` kept up to date batch by batch: one row per hypothesis (its proposal, claims, result
and decision folded together), merged in Python from the batch and the previous rows where the stream's
usual order holds, recomputed in SQL (:data:`ledger.schema.EXPERIMENT_STATE_SQL`) where it does not. The
dispositions of the batch's finishes follow the one rule of :mod:`bus.results`."""

from __future__ import annotations

from typing import Any

import duckdb
import pyarrow as pa

from bus.results import disposition
from ledger.schema import EXPERIMENT_COLUMNS, delete_experiments, refresh_experiments
from ledger.writes import append, insert, insert_results

# Tables whose rows change a hypothesis's row of ``experiment_state``.
_EXPERIMENT_SOURCES = ("hypotheses", "claims", "results", "decisions")
STATE_COLUMNS = [*EXPERIMENT_COLUMNS, "proposals", "claims", "result_hw_class", "touched_seq"]
_S = {c: i for i, c in enumerate(STATE_COLUMNS)}
_H_FIELDS = [("agent", "agent"), ("model", "model"), ("parent", "parent"), ("description", "description"),
             ("tier", "tier"), ("hw_class", "hw_class"), ("proposed_ts", "ts"), ("proposed_seq", "seq"),
             ("train_py_sha256", "train_py_sha256"), ("ast_sha256", "ast_sha256"), ("tags", "tags"),
             ("knobs", "knobs"), ("seed", "seed")]  # fmt: skip
_R_FIELDS = [("status", "status"), ("val_bpb", "val_bpb"), ("finished_ts", "ts"), ("finished_seq", "seq"),
             ("runner", "runner"), ("attempt", "attempt"), ("training_seconds", "training_seconds"),
             ("total_seconds", "total_seconds"), ("reason", "reason"), ("log_tail", "log_tail"),
             ("log_ref", "log_ref"), ("result_hw_class", "hw_class")]  # fmt: skip


_H_IDX = [(_S[col], src) for col, src in _H_FIELDS]
_R_IDX = [(_S[col], src) for col, src in _R_FIELDS]
_TOUCHED, _CLAIMS, _PROPOSALS, _STATUS = _S["touched_seq"], _S["claims"], _S["proposals"], _S["status"]
_DECISION, _ATTEMPTS, _RAN_ON = _S["decision"], _S["attempts"], _S["ran_on"]


def _blank(key: tuple[str, str]) -> list[Any]:
    row: list[Any] = [None] * len(STATE_COLUMNS)
    row[_S["run"]], row[_S["hypothesis_id"]] = key
    row[_S["attempts"]], row[_S["proposals"]], row[_S["claims"]] = 0, 0, []
    row[_S["reason"]] = row[_S["log_tail"]] = row[_S["log_ref"]] = ""
    return row


def _ran_on(row: list[Any]) -> str | None:
    """``ran_on`` as :data:`ledger.schema.EXPERIMENT_STATE_SQL` computes it."""
    if row[_S["status"]] is None:
        return None
    if row[_S["result_hw_class"]]:
        return str(row[_S["result_hw_class"]])
    attempt, runner = row[_S["attempt"]], row[_S["runner"]]
    for c in row[_S["claims"]]:  # in stream order: the first claim of that attempt and runner
        if c["attempt"] == attempt and c["runner"] == runner and c["hw_class"] is not None:
            return str(c["hw_class"])
    hw = row[_S["hw_class"]]
    return None if hw is None else str(hw)


def _merge_experiments(
    prev: dict[tuple[str, str], list[Any]], tables: dict[str, dict[str, list[Any]]]
) -> tuple[list[str], dict[tuple[str, str], list[Any]]] | None:
    """The batch's effect on ``experiment_state`` from the batch and the previous state rows alone:
    the dispositions of its finishes (in the order of ``tables['results']``) and the new state rows of
    the keys it touches. Gives the rows :data:`ledger.schema.EXPERIMENT_STATE_SQL` would and the
    dispositions :data:`ledger.schema.DISPOSITION_SQL` would, when every row of a key comes after its
    ``touched_seq``; returns None where that or the stream's usual order does not hold (a row older than
    the state, a first proposal after other rows of its hypothesis), and the caller recomputes in SQL."""
    # (mechanics only: the rule is bus.results.disposition; column indices and lists are looked up once
    # per batch, not per event, which made this loop the projector's largest Python cost)
    per_key: dict[tuple[str, str], list[tuple[int, int, int]]] = {}
    get = per_key.get
    for kind, table in enumerate(_EXPERIMENT_SOURCES):
        cols = tables.get(table)
        if not cols:
            continue
        seqs = cols["seq"]
        for key, i in zip(zip(cols["run"], cols["hypothesis_id"], strict=True), range(len(seqs)), strict=True):
            group = get(key)
            if group is None:
                per_key[key] = [(seqs[i], kind, i)]
            else:
                group.append((seqs[i], kind, i))
    h, c, r, d = (tables.get(t, {}) for t in _EXPERIMENT_SOURCES)
    h_cols = [(idx, h[src]) for idx, src in _H_IDX] if h else []
    r_cols = [(idx, r[src]) for idx, src in _R_IDX] if r else []
    c_attempt, c_runner, c_hw = (c["attempt"], c["runner"], c["hw_class"]) if c else ([], [], [])
    r_attempt, r_runner, r_status, r_late = (r["attempt"], r["runner"], r["status"], r["late"]) if r else ([],) * 4
    d_decision = d["decision"] if d else []
    dispositions: list[str] = [""] * len(r.get("event_id", ()))
    out: dict[tuple[str, str], list[Any]] = {}
    for key, evs in per_key.items():
        if len(evs) > 1:
            evs.sort()
        old = prev.get(key)
        if old is not None and evs[0][0] <= old[_TOUCHED]:
            return None
        row: list[Any] | None = None
        if old is not None:
            row = list(old)
            row[_CLAIMS] = list(old[_CLAIMS] or [])
        for seq, kind, i in evs:
            if kind == 0:  # HypothesisProposed: the first one defines the hypothesis
                if row is None:
                    row = _blank(key)
                    for idx, col in h_cols:
                        row[idx] = col[i]
                    row[_PROPOSALS] = 1
                elif row[_PROPOSALS] == 0:
                    return None  # proposed after its claims/finishes/decisions: recompute in SQL
                else:
                    row[_PROPOSALS] += 1
            else:
                if row is None:
                    row = _blank(key)
                if kind == 1:
                    row[_CLAIMS].append({"attempt": c_attempt[i], "runner": c_runner[i], "seq": seq, "hw_class": c_hw[i]})
                elif kind == 2:
                    seen = [(x["attempt"], x["runner"]) for x in row[_CLAIMS] if x["seq"] < seq]
                    dispositions[i] = disposition(r_attempt[i], r_runner[i], r_status[i], r_late[i],
                                                  seen, row[_STATUS] is not None)  # fmt: skip
                    if dispositions[i] == "result":
                        for idx, col in r_cols:
                            row[idx] = col[i]
                else:
                    row[_DECISION] = d_decision[i]
            row[_TOUCHED] = seq
        assert row is not None
        claims = row[_CLAIMS]
        row[_ATTEMPTS] = len({x["attempt"] for x in claims}) if claims else 0
        row[_RAN_ON] = _ran_on(row)
        out[key] = row
    return dispositions, out


def update_experiments(con: duckdb.DuckDBPyConnection, tables: dict[str, dict[str, list[Any]]]) -> None:
    """Insert the batch's finishes with their dispositions and bring ``experiment_state`` up to date for
    the hypotheses the batch touches, inside the batch's transaction (its other rows are inserted)."""
    runs: list[str] = []
    hids: list[str] = []
    for table in _EXPERIMENT_SOURCES:
        if table in tables:
            runs += tables[table]["run"]
            hids += tables[table]["hypothesis_id"]
    if not runs:
        return
    keys = pa.table({"run": pa.array(runs, pa.string()), "hypothesis_id": pa.array(hids, pa.string())})
    con.register("_batch_keys", keys)
    try:
        got = con.execute(
            f"SELECT {', '.join(f'e.{c}' for c in STATE_COLUMNS)} FROM experiment_state e SEMI JOIN _batch_keys k "
            "ON e.run = k.run AND e.hypothesis_id = k.hypothesis_id"
        ).fetchall()
        merged = _merge_experiments({(g[0], g[1]): list(g) for g in got}, tables)
        results = tables.get("results")
        if merged is None:  # the general path: dispositions and state rows recomputed in SQL
            if results:
                insert_results(con, results)
            refresh_experiments(con, "_batch_keys")
            return
        dispositions, state = merged
        if results:
            insert(con, "results", {**results, "disposition": dispositions})
        if got:  # rows to replace (none for a batch of new hypotheses only)
            delete_experiments(con, "_batch_keys")
        cols = list(zip(*state.values(), strict=True))
        append(con, "experiment_state", dict(zip(STATE_COLUMNS, cols, strict=True)))
    finally:
        con.unregister("_batch_keys")

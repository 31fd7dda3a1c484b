"""Git export of the ledger: each kept hypothesis is a commit of ``train.py`` on a per-agent branch
``<run>/<agent>``, like autoresearch's branches.

The root commit of a run is its baseline ``train.py`` (a baseline-tagged hypothesis, else the parent of the
first kept hypothesis) on the branch ``<run>/baseline``. Val_bpb is only comparable within a hardware class,
so an agent's lineage is kept per class: a kept hypothesis is committed on top of the agent's previous kept
commit on the same class, else on the commit of its parent hypothesis when that was kept (an agent building
on another's result), else on the root. ``<run>/<agent>`` points at the agent's latest kept commit; an agent
that kept hypotheses on several classes also gets ``<run>/<agent>-<class>`` for the tip of each lineage. A kept hypothesis is committed on top of its parent
hypothesis's commit when that parent was kept (the lineage, even across agents), else on top of the agent's
previous kept commit, else on the root. Commits are built with git plumbing (``hash-object``, ``mktree``,
``commit-tree``, ``update-ref``), with a fixed author/committer identity per agent, dates from the events'
``ts`` and git's user/system configuration ignored, so exporting the same ledger twice gives the same shas.
The working tree is never touched.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import duckdb

from bus.events import BASELINE_TAG

COMMITTER = ("swarm export", "export@swarm.invalid")


def _git(repo: Path, *args: str, stdin: str | None = None, env: dict[str, str] | None = None) -> str:
    base = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    base.update({"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull, "LC_ALL": "C"})
    base.update(env or {})
    proc = subprocess.run(
        ["git", "-c", "commit.gpgsign=false", "-c", "core.autocrlf=false", *args],
        cwd=repo, input=stdin, capture_output=True, text=True, env=base, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed in {repo}: {proc.stderr.strip()}")
    return proc.stdout.strip()


def ref_name(text: str) -> str:
    """A string made safe as one component of a git ref name (see ``git check-ref-format``)."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "unnamed"
    s = re.sub(r"\.{2,}", ".", s)
    return s[:-5] + "-lock" if s.endswith(".lock") else s


def _date(ts: float) -> str:
    return f"@{int(ts)} +0000"


def _clean(text: str | None) -> str:
    return (text or "").replace("\x00", "")


def _commit(repo: Path, train_py: str, parent: str | None, message: str, author: str, ts: float) -> str:
    blob = _git(repo, "hash-object", "-w", "--stdin", stdin=train_py)
    tree = _git(repo, "mktree", stdin=f"100644 blob {blob}\ttrain.py\n")
    name = ref_name(author)
    env = {
        "GIT_AUTHOR_NAME": name, "GIT_AUTHOR_EMAIL": f"{name}@swarm.invalid", "GIT_AUTHOR_DATE": _date(ts),
        "GIT_COMMITTER_NAME": COMMITTER[0], "GIT_COMMITTER_EMAIL": COMMITTER[1], "GIT_COMMITTER_DATE": _date(ts),
    }  # fmt: skip
    args = ["commit-tree", tree, *(["-p", parent] if parent else []), "-F", "-"]
    return _git(repo, *args, stdin=message, env=env)


def _message(h: dict[str, Any]) -> str:
    desc = _clean(h["description"]).strip() or f"hypothesis {h['hypothesis_id']}"
    first, _, rest = desc.partition("\n")
    lines = [first[:200], ""]
    if rest.strip():
        lines += [rest.strip(), ""]
    val = "n/a" if h["val_bpb"] is None else f"{h['val_bpb']:.6f}"
    lines += [
        f"val_bpb: {val} on {h['ran_on'] or h['hw_class'] or '?'}",
        f"hypothesis: {h['hypothesis_id']}",
        f"parent: {h['parent'] or 'baseline'}",
        f"agent: {h['agent']}" + (f" ({h['model']})" if h["model"] else ""),
    ]
    rationale = _clean(h["rationale"]).strip()
    if rationale:
        lines += ["", rationale]
    return "\n".join(lines) + "\n"


def export_git(con: duckdb.DuckDBPyConnection, repo_dir: Path, *, run: str | None = None) -> dict[str, str]:
    """Write the kept hypotheses of ``run`` (default: every run) as commits into the git repository at
    ``repo_dir`` (created if missing). Returns branch name → head commit sha. Idempotent."""
    repo = Path(repo_dir)
    repo.mkdir(parents=True, exist_ok=True)
    if not (repo / ".git").exists() and not (repo / "HEAD").exists():
        _git(repo, "init", "-q", "-b", "main")
    runs = [run] if run else [r[0] for r in con.execute(
        "SELECT run FROM events GROUP BY run ORDER BY min(seq)").fetchall()]  # fmt: skip
    heads: dict[str, str] = {}
    for r in runs:
        heads.update(_export_run(con, repo, r))
    return heads


def _export_run(con: duckdb.DuckDBPyConnection, repo: Path, run: str) -> dict[str, str]:
    cur = con.execute(
        """
        WITH h AS (SELECT * FROM hypotheses WHERE run = $1
                   QUALIFY row_number() OVER (PARTITION BY hypothesis_id ORDER BY seq) = 1),
        d AS (SELECT hypothesis_id, decision, ts, seq FROM decisions WHERE run = $1
              QUALIFY row_number() OVER (PARTITION BY hypothesis_id ORDER BY seq DESC) = 1)
        SELECT h.hypothesis_id, h.agent, h.model, h.parent, h.train_py, h.description, h.rationale,
            h.hw_class, h.ts AS proposed_ts, coalesce(h.tags, []) AS tags, e.val_bpb, e.ran_on,
            d.decision, d.ts AS decided_ts, d.seq AS decided_seq
        FROM h LEFT JOIN d USING (hypothesis_id)
        LEFT JOIN experiments e ON e.run = $1 AND e.hypothesis_id = h.hypothesis_id
        ORDER BY h.seq
        """,
        [run],
    )
    names = [c[0] for c in cur.description]
    hyps = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
    by_id = {h["hypothesis_id"]: h for h in hyps}
    kept = sorted((h for h in hyps if h["decision"] == "keep" and h["train_py"] is not None),
                  key=lambda h: h["decided_seq"])  # fmt: skip
    heads: dict[str, str] = {}
    root: str | None = None
    base = next((h for h in hyps if BASELINE_TAG in h["tags"] and h["train_py"] is not None), None)
    if base is None and kept:
        p = by_id.get(kept[0]["parent"] or "")
        base = p if p is not None and p["train_py"] is not None else None
    if base is not None:
        msg = f"baseline train.py\n\nrun: {run}\nhypothesis: {base['hypothesis_id']}\n"
        root = _commit(repo, base["train_py"], None, msg, "baseline", base["proposed_ts"])
        heads[f"{ref_name(run)}/baseline"] = root
    commits: dict[str, str] = {}
    last_on: dict[tuple[str, str], str] = {}
    for h in kept:
        cls = h["ran_on"] or h["hw_class"] or "any"
        parent = last_on.get((h["agent"], cls)) or commits.get(h["parent"] or "") or root
        sha = _commit(repo, h["train_py"], parent, _message(h), h["agent"], h["decided_ts"])
        commits[h["hypothesis_id"]] = sha
        last_on[(h["agent"], cls)] = sha
        heads[f"{ref_name(run)}/{ref_name(h['agent'])}"] = sha
    for agent in sorted({a for a, _ in last_on}):
        mine = {c: sha for (a, c), sha in last_on.items() if a == agent}
        if len(mine) > 1:  # one lineage per hardware class: a branch for the tip of each as well
            for cls, sha in sorted(mine.items()):
                heads[f"{ref_name(run)}/{ref_name(agent)}-{ref_name(cls)}"] = sha
    for branch, sha in heads.items():
        _git(repo, "update-ref", f"refs/heads/{branch}", sha)
    return heads

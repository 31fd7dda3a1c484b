"""git export: each kept hypothesis a commit of train.py on <run>/<agent>; branch heads hold the kept files."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import duckdb
import pytest
from ledger_fixtures import BASE_TRAIN_PY, Fixture, write_fixture_ledger

from bus import events as ev
from ledger.analysis.gitexport import export_git, ref_name


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="module")
def fx(tmp_path_factory: pytest.TempPathFactory) -> Fixture:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    return write_fixture_ledger(tmp_path_factory.mktemp("ledger") / "ledger.duckdb")


def test_branch_heads_hold_kept_train_py(fx: Fixture, tmp_path: Path) -> None:
    con = duckdb.connect(str(fx.path), read_only=True)
    repo = tmp_path / "export"
    heads = export_git(con, repo, run="run-a")
    again = export_git(con, repo, run="run-a")
    con.close()
    assert heads == again  # idempotent: same shas on a re-run
    evs = fx.runs["run-a"].events
    hyp = {e.hypothesis_id: e for e in evs if isinstance(e, ev.HypothesisProposed)}
    kept = [e.hypothesis_id for e in evs if isinstance(e, ev.HypothesisDecided) and e.decision == "keep"]
    for agent in ("optuna", "random", "claude-some-model"):
        mine = [h for h in kept if hyp[h].agent == agent]
        assert mine, agent
        branch = f"run-a/{agent}"
        assert heads[branch] == git(repo, "rev-parse", branch).strip()
        assert git(repo, "show", f"{branch}:train.py") == hyp[mine[-1]].train_py
        # every kept hypothesis of the agent is a commit holding its train.py, found by its message
        for h in mine:
            sha = git(repo, "log", "--all", "--format=%H", f"--grep=^hypothesis: {h}$").split()
            assert len(sha) == 1, h
            assert git(repo, "show", f"{sha[0]}:train.py") == hyp[h].train_py
        for cls in ("cpu", "h100"):
            on = [h for h in mine if hyp[h].hw_class == cls]
            if on:
                assert git(repo, "show", f"{branch}-{cls}:train.py") == hyp[on[-1]].train_py
    root = heads["run-a/baseline"]
    assert git(repo, "show", f"{root}:train.py") == BASE_TRAIN_PY
    assert git(repo, "rev-list", "--max-parents=0", "--all").split() == [root]
    # lineage per agent and class: each kept commit sits on the previous kept commit of the same agent on
    # the same class, the first one on the baseline root
    def commit_of(h: str) -> str:
        return git(repo, "log", "--all", "--format=%H", f"--grep=^hypothesis: {h}$").split()[0]

    for agent in ("optuna", "claude-some-model"):
        for cls in ("cpu", "h100"):
            chain = [h for h in kept if hyp[h].agent == agent and hyp[h].hw_class == cls]
            for prev, h in zip([None, *chain], chain, strict=False):
                want = root if prev is None else commit_of(prev)
                assert git(repo, "rev-parse", f"{commit_of(h)}^").strip() == want
    h = kept[-1]
    msg = git(repo, "log", "-1", "--format=%B", commit_of(h))
    assert hyp[h].description in msg and "val_bpb: " in msg and hyp[h].rationale in msg
    assert f"parent: {hyp[h].parent}" in msg
    assert git(repo, "log", "-1", "--format=%an", commit_of(h)).strip() == hyp[h].agent


def test_fresh_repo_gives_same_shas_and_all_runs(fx: Fixture, tmp_path: Path) -> None:
    con = duckdb.connect(str(fx.path), read_only=True)
    a = export_git(con, tmp_path / "one")
    b = export_git(con, tmp_path / "two")
    con.close()
    assert a == b and "run-b/optuna" in a and "run-a/optuna" in a


def test_ref_name() -> None:
    assert ref_name("claude:some model") == "claude-some-model"
    assert ref_name("..x.lock") == "x-lock" and ref_name("::") == "unnamed"

"""The README's main command, as a newcomer runs it: `swarm up` with the defaults, only fewer experiments and
a smaller budget so it fits in CI. Every baseline must succeed; every other experiment is ok or a failure
its own edit explains; the report is written; the exit status says whether anything worked."""

from __future__ import annotations

import os
import statistics

import duckdb
import pytest

from tests.acceptance.newcomer import Newcomer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

EXPLAINED = {"ok", "over_budget", "oom", "nan", "rejected"}  # a crash must come with its edit's traceback


def test_swarm_up_as_a_newcomer_runs_it(newcomer: Newcomer) -> None:
    res = newcomer.swarm("up", "--max-experiments", "4", "--budget", "8192", "--run", "first", timeout=1500)
    out = res.stdout + res.stderr
    report = newcomer.clone / ".swarm" / "first" / "report.html"
    assert "report: " in out and report.is_file() and report.stat().st_size > 10_000, out[-3000:]
    # closed whatever an assertion says: the next test's `swarm up` opens this ledger for writing
    with duckdb.connect(str(newcomer.clone / ".swarm" / "ledger.duckdb"), read_only=True) as con:
        rows = con.execute("SELECT hypothesis_id, tags, status, val_bpb, reason, log_tail FROM experiments "
                           "WHERE status IS NOT NULL").fetchall()
        baselines = [r for r in rows if "baseline" in r[1]]
        # every other experiment (a confirming repeat counts: the agents spend --max-experiments on them when a
        # result looks better than the baselines' noise, which depends on the values this machine trains to)
        others = [r for r in rows if "baseline" not in r[1]]
        assert len(baselines) == 3, rows
        assert all(r[2] == "ok" for r in baselines), [(r[0], r[2], r[4], r[5][-800:]) for r in baselines]
        vals = [r[3] for r in baselines]
        assert all(2.0 < v < 8.0 for v in vals), vals
        assert statistics.stdev(vals) > 0  # three seeds, three values: σ is measured, not assumed
        assert len(others) >= 3, rows
        for hid, _, status, val, reason, tail in others:
            assert status in EXPLAINED or (status == "crash" and "Traceback" in tail), (hid, status, reason, tail[-800:])
            if status == "ok":
                assert 2.0 < val < 8.0, (hid, val)
        [(n_ok,)] = con.execute("SELECT count(*) FROM results WHERE status = 'ok' AND disposition = 'result'").fetchall()
        assert n_ok >= 4
        [(budget, unit)] = con.execute("SELECT DISTINCT budget, budget_unit FROM results WHERE status = 'ok'").fetchall()
        assert (budget, unit) == (8192, "tokens")
    if os.geteuid() == 0:  # as root the sandbox always works, even with a PATH that lacks the sbin directories
        [cal] = list((newcomer.clone / ".swarm" / "first").glob("runner*/logs/calibration.log"))
        assert "(isolation=namespace)" in cal.read_text() and "isolation unavailable" not in out, out[-2000:]


def test_swarm_up_exits_non_zero_and_says_why_when_the_baseline_cannot_run(newcomer: Newcomer) -> None:
    """A train.py that cannot start on this machine: nothing could work, and the user is told so."""
    train = newcomer.clone / "train.py"
    good = train.read_text()
    try:
        train.write_text(good.replace("def main():\n", "def main():\n    raise SystemExit('broken on purpose')\n", 1))
        res = newcomer.swarm("up", "--max-experiments", "2", "--budget", "4096", "--run", "broken", timeout=900,
                             check=False)
    finally:
        train.write_text(good)
    out = res.stdout + res.stderr
    assert res.returncode != 0, out[-3000:]
    assert "calibration run of the unmodified train.py ended crash" in out, out[-3000:]
    assert "calibration.log" in out

"""swarm compare: numbers on the fixture ledger against expectations computed by hand from the events."""

from __future__ import annotations

import json
import math
from pathlib import Path

import duckdb
import pytest
from ledger_fixtures import BASE_TRAIN_PY, Fixture, build_ledger, sha256, write_fixture_ledger
from rich.console import Console

from bus import events as ev
from ledger.analysis.compare import compare, render_table, t_critical, t_interval


@pytest.fixture(scope="module")
def fx(tmp_path_factory: pytest.TempPathFactory) -> Fixture:
    return write_fixture_ledger(tmp_path_factory.mktemp("ledger") / "ledger.duckdb")


@pytest.fixture
def con(fx: Fixture) -> duckdb.DuckDBPyConnection:
    c = duckdb.connect(str(fx.path), read_only=True)
    yield c  # type: ignore[misc]
    c.close()


def expected(fx: Fixture, run: str) -> dict[str, dict[str, float]]:
    """Per agent, straight from the events: GPU-seconds, crash rate, LLM cost, improving keeps."""
    evs = fx.runs[run].events
    hyp = {e.hypothesis_id: e for e in evs if isinstance(e, ev.HypothesisProposed)}
    keep = {e.hypothesis_id for e in evs if isinstance(e, ev.HypothesisDecided) and e.decision == "keep"}
    out: dict[str, dict[str, float]] = {}
    best: dict[tuple[str, str], float] = {}
    for e in evs:
        if isinstance(e, ev.ExperimentFinished):
            h = hyp[e.hypothesis_id]
            if h.agent == "baseline":
                continue
            a = out.setdefault(h.agent, {"gpu": 0.0, "fin": 0, "bad": 0, "usd": 0.0, "impr": 0})
            a["gpu"] += e.total_seconds
            a["fin"] += 1
            a["bad"] += e.status != "ok"
            if e.status == "ok" and e.val_bpb is not None:
                k = (h.agent, e.hw_class)
                if e.val_bpb < best.get(k, math.inf):
                    best[k] = e.val_bpb
                    a["impr"] += e.hypothesis_id in keep
        elif isinstance(e, ev.LlmUsage):
            out.setdefault(e.agent, {"gpu": 0.0, "fin": 0, "bad": 0, "usd": 0.0, "impr": 0})["usd"] += e.cost_usd
    return out


def test_one_run_matches_hand_computed(fx: Fixture, con: duckdb.DuckDBPyConnection) -> None:
    res = compare(con, runs=["run-a"])
    want = expected(fx, "run-a")
    got = {g.name: g for g in res.groups}
    assert set(got) == {"optuna", "random", "claude-some-model"}  # baselines are no competitor
    total = sum(w["gpu"] for w in want.values())
    assert res.total_gpu_seconds == pytest.approx(total)
    for name, w in want.items():
        g = got[name]
        assert g.gpu_seconds == pytest.approx(w["gpu"])
        assert g.gpu_share == pytest.approx(w["gpu"] / total)
        assert g.finished == w["fin"] and g.crashes == w["bad"]
        assert g.crash_rate == pytest.approx(w["bad"] / w["fin"])
        assert g.cost_usd == pytest.approx(w["usd"])
        assert g.improvements == w["impr"]
        if w["impr"]:
            assert g.usd_per_improvement == pytest.approx(w["usd"] / w["impr"])
    assert got["claude-some-model"].cost_usd > 0.1 and got["optuna"].cost_usd == 0
    assert sum(g.gpu_share or 0 for g in res.groups) == pytest.approx(1.0)
    # the claude agent's best on h100 has 2 validate-tier repeats: n=3, a t-interval
    c = got["claude-some-model"].classes["h100"]
    assert c.n == 3 and c.ci_source == "repeats" and c.ci_low is not None and c.ci_high is not None
    assert c.ci_low < c.mean < c.ci_high  # type: ignore[operator]
    ci = t_interval(c.samples)
    assert ci is not None and ci[1] == pytest.approx(c.ci_low)
    # random has no repeats: n=1, no interval
    r = got["random"].classes["h100"]
    assert r.n == 1 and r.ci_low is None and r.ci_source is None
    assert r.improvement_per_gpu_hour is not None and r.improvement_per_gpu_hour > 0


def test_across_runs_and_by_model(fx: Fixture, con: duckdb.DuckDBPyConnection) -> None:
    res = compare(con)
    assert res.runs == ["run-a", "run-b"]
    for g in res.groups:
        for cls in ("cpu", "h100"):
            c = g.classes[cls]
            assert c.n == 2 and c.ci_source == "runs" and c.ci_low is not None, (g.name, cls)
            assert c.best == min(c.samples)
    a, b = expected(fx, "run-a"), expected(fx, "run-b")
    got = {g.name: g for g in res.groups}
    assert got["optuna"].gpu_seconds == pytest.approx(a["optuna"]["gpu"] + b["optuna"]["gpu"])
    by_model = {g.name: g for g in compare(con, by="model").groups}
    assert set(by_model) == {"optuna", "random", "some-model"}
    assert by_model["some-model"].cost_usd == pytest.approx(got["claude-some-model"].cost_usd)
    doc = json.loads(json.dumps(res.to_dict()))
    assert doc["by"] == "agent" and len(doc["groups"]) == 3 and "h100" in doc["groups"][0]["classes"]
    text = Console(width=300, record=True)
    text.print(render_table(res))
    out = text.export_text()
    assert "claude-some-model" in out and "n=2 runs" in out and "GPU-s" in out


def test_tiny_ledger_exact_numbers(tmp_path: Path) -> None:
    """Two agents, hand-picked numbers: A 100 s ok + 50 s crash, B 150 s ok; A spent $1.50 on one improvement."""
    hw = ev.Hardware(hw_class="h100")
    evs: list[ev.Event] = []
    for hid, agent, status, val, secs in [("b0", "baseline", "ok", 1.0, 10.0), ("a1", "A", "ok", 0.98, 100.0),
                                          ("a2", "A", "crash", None, 50.0), ("b1", "B", "ok", 0.99, 150.0)]:
        evs += [
            ev.HypothesisProposed(run="t", source=agent, hypothesis_id=hid, agent=agent, train_py=BASE_TRAIN_PY,
                                  train_py_sha256=sha256(BASE_TRAIN_PY), hw_class="h100",
                                  tags=["baseline"] if agent == "baseline" else []),
            ev.ExperimentClaimed(run="t", source="w", hypothesis_id=hid, attempt=1, runner="w", hardware=hw),
            ev.ExperimentFinished(run="t", source="w", hypothesis_id=hid, attempt=1, runner="w", status=status,
                                  val_bpb=val, total_seconds=secs, hw_class="h100"),
        ]  # fmt: skip
    evs.append(ev.HypothesisDecided(run="t", source="A", hypothesis_id="a1", decision="keep", by="A"))
    evs.append(ev.LlmUsage(run="t", source="A", agent="A", provider="anthropic", model="m", cost_usd=1.5))
    path = tmp_path / "tiny.duckdb"
    build_ledger(path, evs)
    con = duckdb.connect(str(path), read_only=True)
    res = compare(con)
    con.close()
    a, b = res.groups
    assert (a.name, a.gpu_seconds, a.gpu_share, a.crash_rate) == ("A", 150.0, 0.5, 0.5)
    assert (b.name, b.gpu_seconds, b.gpu_share, b.crash_rate) == ("B", 150.0, 0.5, 0.0)
    assert a.usd_per_improvement == 1.5 and a.improvements == 1 and b.usd_per_improvement is None
    assert a.classes["h100"].best == 0.98 and a.classes["h100"].n == 1
    # baseline 1.0 (one run) - 0.98 over 100 s + 50 s = 150 s on h100: 0.02 / (150 / 3600)
    assert a.classes["h100"].improvement_per_gpu_hour == pytest.approx(0.02 / (150 / 3600))


def test_t_interval() -> None:
    assert t_interval([1.0]) is None
    mean, _lo, hi = t_interval([1.0, 2.0, 3.0])  # type: ignore[misc]
    assert mean == 2.0 and hi - mean == pytest.approx(4.303 / math.sqrt(3))
    assert t_critical(1) == 12.706 and t_critical(100) == pytest.approx(1.984, abs=2e-3)


def test_empty_ledger(tmp_path: Path) -> None:
    build_ledger(tmp_path / "e.duckdb", [])
    con = duckdb.connect(str(tmp_path / "e.duckdb"), read_only=True)
    res = compare(con)
    con.close()
    assert res.groups == [] and res.to_dict()["runs"] == []
    render_table(res)

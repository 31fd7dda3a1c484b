"""swarm report: the HTML page from a fixture ledger, parsed, escaped, offline, and rendered by Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image
import pytest
from conftest import skip_or_fail
from ledger_fixtures import BASE_TRAIN_PY, HOSTILE, build_ledger, sha256, simulate_run, write_fixture_ledger

from bus import events as ev
from ledger.analysis.figures import write_pngs
from ledger.analysis.report import render_markdown, write_report
from ledger.analysis.rundata import load_run, summary
from ledger.analysis.snapshot import open_ledger

SECTIONS = ["progress", "agents", "rates", "runners", "baselines", "leaderboard", "llm", "notebook"]


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.ids: list[str] = []
        self.attrs: list[tuple[str, str]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        for k, v in attrs:
            self.attrs.append((k, v or ""))
            if k == "id":
                self.ids.append(v or "")

    def handle_data(self, data: str) -> None:
        self.text.append(data)


@pytest.fixture(scope="module")
def fixture_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ledger") / "ledger.duckdb"
    write_fixture_ledger(path)
    return path


@pytest.fixture(scope="module")
def report(fixture_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    con = open_ledger(fixture_db)
    try:
        return write_report(con, tmp_path_factory.mktemp("report") / "report.html", run="run-a")
    finally:
        con.close()


def test_sections_and_content(report: Path) -> None:
    page = report.read_text()
    p = _Collect()
    p.feed(page)
    for section in SECTIONS:
        assert section in p.ids, section
    assert p.tags.count("svg") >= 6  # 2 progress + 2 best-so-far + rates + duty
    text = " ".join(p.text)
    assert "Run run-a" in text
    for word in (
        "GPU-hours",
        "wall time",
        "claude-some-model",
        "optuna",
        "random",
        "runner-cpu-1",
        "runner-h100-1",
        "mean val_bpb ± σ",
        "some-model",
        "Kept changes",
    ):
        assert word in text, word
    assert page.count("<details>") >= 10  # one per kept change
    assert "+WEIGHT_DECAY" in text or "+LR" in text or "+DEPTH" in text  # diffs present


def test_offline_and_escaped(report: Path) -> None:
    page = report.read_text()
    p = _Collect()
    p.feed(page)
    for k, v in p.attrs:
        assert ("http:" not in v.lower() and "https:" not in v.lower()) or k == "content", (k, v)
    assert not re.search(r"url\(\s*['\"]?https?:", page)
    assert "@import" not in page
    assert p.tags.count("script") == 0 and p.tags.count("img") == 0 and p.tags.count("link") == 0
    assert HOSTILE not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # in a description, note titles and bodies
    assert HOSTILE in " ".join(p.text)  # shown as text


def test_markdown_is_escaped() -> None:
    out = render_markdown("# T <b>\n\n- **x** `<i>`\n\n```\n<script>\n```\n[a](javascript:alert(1))")
    assert "<h5>T &lt;b&gt;</h5>" in out and "<strong>x</strong>" in out and "<code>&lt;i&gt;</code>" in out
    assert "<script>" not in out and "<pre>&lt;script&gt;" in out and "<a" not in out


def test_empty_ledger_and_only_crashes(tmp_path: Path) -> None:
    empty = tmp_path / "empty.duckdb"
    build_ledger(empty, [])
    con = open_ledger(empty)
    out = write_report(con, tmp_path)
    con.close()
    assert out.name == "empty.html" and "no run to report" in out.read_text()

    crashes = tmp_path / "crashes.duckdb"
    evs: list[ev.Event] = [
        ev.RunnerJoined(run="r", source="w", runner="w", hardware=ev.Hardware(hw_class="cpu"))
    ]
    for i in range(4):
        hid = f"h{i}"
        evs += [
            ev.HypothesisProposed(run="r", source="a", hypothesis_id=hid, agent="a", train_py=BASE_TRAIN_PY,
                                  train_py_sha256=sha256(BASE_TRAIN_PY), hw_class="cpu", description=HOSTILE),
            ev.ExperimentClaimed(run="r", source="w", hypothesis_id=hid, attempt=1, runner="w",
                                 hardware=ev.Hardware(hw_class="cpu")),
            ev.ExperimentFinished(run="r", source="w", hypothesis_id=hid, attempt=1, runner="w", status="crash",
                                  total_seconds=3.0, hw_class="cpu"),
            ev.HypothesisDecided(run="r", source="a", hypothesis_id=hid, decision="discard", by="a"),
        ]  # fmt: skip
    build_ledger(crashes, evs)
    con = open_ledger(crashes)
    page = write_report(con, tmp_path / "c.html").read_text()
    con.close()
    assert "Run r" in page and HOSTILE not in page and page.count("<svg") >= 3


def test_open_ledger_copies_when_locked(fixture_db: Path, tmp_path: Path) -> None:
    locked = tmp_path / "locked.duckdb"
    shutil.copyfile(fixture_db, locked)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys; c = duckdb.connect(sys.argv[1]); print('ok', flush=True); "
         "sys.stdin.read()", str(locked)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ok"
        con = open_ledger(locked)
        files = [
            r[0] for r in con.execute("SELECT path FROM duckdb_databases() WHERE NOT internal").fetchall()
        ]
        assert files and all(f and Path(f) != locked for f in files)  # a copy, not the locked file
        n = con.execute("SELECT count(*) FROM hypotheses WHERE run = 'run-a'").fetchone()
        con.close()
        assert n is not None and n[0] > 60
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=10)
        if holder.stdout is not None:
            holder.stdout.close()


def _not_blank(png: Path) -> bool:
    """The screenshot has many colours (plots, text), not one flat page."""
    img = matplotlib.image.imread(png)
    assert img.ndim == 3 and img.shape[0] >= 1000
    colours = {tuple(px) for px in img[::7, ::7, :3].reshape(-1, 3).round(2).tolist()}
    return float(img[..., :3].std()) > 0.02 and len(colours) > 50


def test_chromium_screenshot(report: Path, tmp_path: Path) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        skip_or_fail("chromium is not installed (apt-get install chromium)")
        return
    shot = tmp_path / "shot.png"
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1400,4000",
           report.resolve().as_uri()]  # fmt: skip
    subprocess.run(cmd, capture_output=True, timeout=90, check=False)
    assert shot.exists() and shot.stat().st_size > 10_000
    assert _not_blank(shot)


def test_png_figures(fixture_db: Path, tmp_path: Path) -> None:
    con = open_ledger(fixture_db)
    try:
        paths = write_pngs(load_run(con, "run-a"), tmp_path / "png")
    finally:
        con.close()
    names = sorted(p.name for p in paths)
    assert names == sorted(f"run-a-{s}.png" for s in ("progress-cpu", "progress-h100", "best-so-far-wall",
                                                        "best-so-far-gpu", "rates", "duty-cycle"))  # fmt: skip
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        img = matplotlib.image.imread(p)
        assert img.shape[1] >= 1200 and float(img[..., :3].std()) > 0.02  # 11 in at 150 dpi, not a blank page
    assert not list((tmp_path / "png").glob(".*.tmp"))


def test_summary_matches_the_events(fixture_db: Path) -> None:
    fx_events = simulate_run(
        "run-a", seed=1, per_agent=20
    ).events  # what write_fixture_ledger wrote for run-a
    con = open_ledger(fixture_db)
    try:
        s = summary(load_run(con, "run-a"))
    finally:
        con.close()
    json.dumps(s)  # plain JSON values only
    hyps = [e for e in fx_events if isinstance(e, ev.HypothesisProposed)]
    fins = [e for e in fx_events if isinstance(e, ev.ExperimentFinished)]
    keeps = {
        e.hypothesis_id for e in fx_events if isinstance(e, ev.HypothesisDecided) and e.decision == "keep"
    }
    assert s["schema"] == "swarm.report/1" and s["run"] == "run-a"
    assert s["counts"]["hypotheses"] == len(hyps) and s["counts"]["finished"] == len(fins)
    assert s["counts"]["ok"] == sum(f.status == "ok" for f in fins) and s["counts"]["kept"] == len(keeps)
    assert abs(s["gpu_seconds"] - sum(f.total_seconds for f in fins)) < 1e-6
    for cls in ("cpu", "h100"):
        best = min((f.val_bpb for f in fins if f.hw_class == cls and f.val_bpb is not None), default=None)
        assert s["classes"][cls]["best_val_bpb"] == best
    assert {a["agent"] for a in s["agents"]} == {"optuna", "random", "claude-some-model"}
    assert {k["hypothesis_id"] for k in s["kept"]} == keeps


def test_cli_report_png_and_json(fixture_db: Path, tmp_path: Path) -> None:
    """`swarm report --png DIR --json`: the HTML, the PNG files and the summary, from the command line."""
    out = tmp_path / "r.html"
    r = subprocess.run([sys.executable, "-m", "swarmcli", "report", "--db", str(fixture_db), "--run", "run-b",
                        "--out", str(out), "--png", str(tmp_path / "png"), "--json"],
                       capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["schema"] == "swarm.report/1" and doc["run"] == "run-b" and doc["html"] == str(out)
    assert out.exists() and len(doc["png"]) == 6 and all(Path(p).exists() for p in doc["png"])
    assert doc["counts"]["hypotheses"] > 0 and set(doc["classes"]) == {"cpu", "h100"}


def test_promotions_show_whether_a_ranking_transferred(tmp_path: Path) -> None:
    """A screen win on h100 re-run on h200 (the validate class): the report says per promotion whether it
    was kept there, next to the per-class bests."""
    evs: list[ev.Event] = [
        ev.RunnerJoined(run="p", source=c, runner=c, hardware=ev.Hardware(hw_class=c)) for c in ("h100", "h200")
    ]

    def run(hid: str, cls: str, val: float, decision: str, *, parent: str = "", tags: list[str] | None = None,
            desc: str = "") -> list[ev.Event]:
        return [
            ev.HypothesisProposed(run="p", source="a", hypothesis_id=hid, agent="a", train_py=BASE_TRAIN_PY + f"# {hid}\n",
                                  train_py_sha256=sha256(BASE_TRAIN_PY + f"# {hid}\n"), hw_class=cls, parent=parent,
                                  tags=tags or [], description=desc, tier="validate" if tags else "screen"),
            ev.ExperimentClaimed(run="p", source=cls, hypothesis_id=hid, attempt=1, runner=cls,
                                 hardware=ev.Hardware(hw_class=cls)),
            ev.ExperimentFinished(run="p", source=cls, hypothesis_id=hid, attempt=1, runner=cls, status="ok",
                                  val_bpb=val, total_seconds=300.0, hw_class=cls),
            ev.HypothesisDecided(run="p", source="a", hypothesis_id=hid, decision=decision, by="a"),
        ]  # fmt: skip

    evs += run("wide", "h100", 0.990, "keep", desc="ASPECT_RATIO=96")
    evs += run("wide-v", "h200", 0.985, "keep", parent="wide", tags=[ev.PROMOTION_TAG])
    evs += run("lrfrac", "h100", 0.991, "keep", desc="FINAL_LR_FRAC=0.03")
    evs += run("lrfrac-v", "h200", 0.999, "discard", parent="lrfrac", tags=[ev.PROMOTION_TAG])
    db = tmp_path / "p.duckdb"
    build_ledger(db, evs)
    con = open_ledger(db)
    page = write_report(con, tmp_path / "p.html").read_text()
    con.close()
    section = page.split("Screen → validate promotions", 1)[1].split("<h2", 1)[0]
    rows = section.split("<tr>")[2:]
    assert len(rows) == 2, section
    wide = next(r for r in rows if "ASPECT_RATIO=96" in r)
    lrfrac = next(r for r in rows if "FINAL_LR_FRAC=0.03" in r)
    assert "h100 0.9900" in wide and "h200 0.9850" in wide and "transferred" in wide
    assert "h100 0.9910" in lrfrac and "h200 0.9990" in lrfrac and "did not transfer" in lrfrac
    assert "h200" in page.split("Screen → validate promotions", 1)[0]  # the per-class bests come first

"""swarm dashboard in a real browser: headless Chromium (Debian's, driven by Playwright) against a live swarm —
a real nats-server, `swarm ledger` and `swarm dashboard` processes, a runner with the simulated executor.

Screenshots go to the test's tmp dir, and to $SWARM_SCREENSHOTS when set (to look at them).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from conftest import skip_or_fail
from ledger_fixtures import AGENTS, simulate_run
from nats.js import JetStreamContext

from bus import events as ev
from bus import publish, publish_many
from bus.readapi import LedgerClient
from bus.server import EmbeddedServer
from bus.trainpy import sha256

REPO = Path(__file__).resolve().parents[1]
BASE = (REPO / "train.py").read_text()
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]  # fmt: skip
WAIT_MS = 90_000  # a bound on each wait for the page to reach a state (2 shared cores, loaded)


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        skip_or_fail("chromium is not installed (apt-get install chromium)")
    assert path is not None
    return path


@contextlib.asynccontextmanager
async def browser_page(tmp: Path) -> AsyncIterator[Any]:
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        skip_or_fail("playwright is not installed (pip install playwright; it drives the system chromium)")
        raise
    exe = _chromium()
    async with async_playwright() as p:
        # Playwright gives each launch a new, empty profile (its own --user-data-dir)
        browser = await p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        # bypass_csp: the page's CSP forbids eval, which Playwright's wait_for_function needs (tests only)
        context = await browser.new_context(viewport={"width": 1400, "height": 1000}, bypass_csp=True)
        page = await context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        try:
            yield page, errors
        finally:
            await browser.close()


async def shot(page: Any, tmp: Path, name: str) -> Path:
    path = tmp / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    if os.environ.get("SWARM_SCREENSHOTS"):
        await asyncio.to_thread(_keep, path, Path(os.environ["SWARM_SCREENSHOTS"]))
    return path


def _keep(path: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, out / path.name)


async def start(*args: str, cwd: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "swarmcli", *args, cwd=cwd, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip


async def stop_process(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def read_url(proc: asyncio.subprocess.Process) -> str:
    """The URL `swarm dashboard` prints once it serves (bounded: 200 lines)."""
    assert proc.stdout is not None
    lines = []
    for _ in range(200):
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        lines.append(line)
        m = re.search(r"(http://\S+)", line)
        if m:
            return m.group(1)
        if not line:
            break
    raise AssertionError("swarm dashboard printed no URL:\n" + "".join(lines))


async def ledger_answers(nc: Any, run: str) -> None:
    client = LedgerClient(nc, run, timeout=1.0)
    for _ in range(120):
        with contextlib.suppress(TimeoutError):
            await client.overview()
            return
        await asyncio.sleep(0.5)
    raise AssertionError("the ledger did not answer")


@contextlib.asynccontextmanager
async def live_swarm(
    server: EmbeddedServer, nc: Any, tmp: Path, run: str, *, ledger: bool = True
) -> AsyncIterator[Any]:
    """`swarm ledger` and `swarm dashboard` processes; yields (dashboard URL, dashboard process, ledger process)."""
    procs = []
    try:
        led = None
        if ledger:
            led = await start("ledger", "--nats", server.url, "--db", str(tmp / "ledger.duckdb"), cwd=tmp)
            procs.append(led)
            await ledger_answers(nc, run)
        dash = await start(
            "dashboard", "--nats", server.url, "--run", run, "--port", "0", "--poll", "0.5", cwd=tmp
        )
        procs.append(dash)
        yield await read_url(dash), dash, led
    finally:
        for p in reversed(procs):
            await stop_process(p)


def proposal(run: str, hid: str, source: str, description: str, **kw: Any) -> ev.HypothesisProposed:
    return ev.HypothesisProposed(run=run, source="tester", hypothesis_id=hid, agent="tester", model="test-model",
                                 train_py=source, train_py_sha256=sha256(source), description=description,
                                 hw_class="cpu", **kw)  # fmt: skip


@contextlib.asynccontextmanager
async def simulated_runner(url: str, tmp: Path, run: str) -> AsyncIterator[None]:
    from runner.config import RunnerConfig
    from runner.daemon import run_runner

    stop = asyncio.Event()
    cfg = RunnerConfig(nats_urls=(url,), run=run, runner_id="sim-1", hw_class="cpu", executor="simulated",
                       state_dir=tmp / "runner", cache_dir=tmp / "cache", calibrate=False, time_scale=0.003,
                       fetch_timeout=0.3)  # fmt: skip
    task = asyncio.create_task(run_runner(cfg, stop=stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)


async def results_at_least(page: Any, n: int) -> None:
    await page.wait_for_function(f"Number(document.body.dataset.results || 0) >= {n}", timeout=WAIT_MS)


# --------------------------------------------------------------------------------------------------


async def test_live_page_follows_the_swarm(nats_server: EmbeddedServer, nc: Any, js: JetStreamContext,
                                           tmp_path: Path) -> None:  # fmt: skip
    run = "live"
    edit = BASE.replace("MATRIX_LR = 0.04", "MATRIX_LR = 0.05", 1)
    crash = BASE.replace("CPU_HEAD_DIM = 64", "CPU_HEAD_DIM = 63", 1)
    assert edit != BASE and crash != BASE
    async with (
        live_swarm(nats_server, nc, tmp_path, run) as (url, _, _),
        simulated_runner(nats_server.url, tmp_path, run),
    ):
        for e in (proposal(run, "base-1", BASE, "baseline: unmodified train.py", tags=["baseline"]),
                  proposal(run, "lr-05", edit, "raise MATRIX_LR to 0.05", rationale="Muon likes a higher LR"),
                  proposal(run, "odd-head", crash, "odd head dim 63")):  # fmt: skip
            await publish(js, e)
        async with browser_page(tmp_path) as (page, errors):
            await page.goto(url)
            await results_at_least(page, 3)
            await page.evaluate("window.__sameDocument = 42")  # gone if the page reloads
            assert await page.locator("#progress canvas").count() >= 1
            await shot(page, tmp_path, "dashboard-3-results")

            # a new result appears without a reload: in the count, the recent table and the figure's data
            later = edit.replace("WEIGHT_DECAY = 0.0", "WEIGHT_DECAY = 0.01", 1)
            await publish(js, proposal(run, "wd-001", later, "a little weight decay", parent="lr-05"))
            await results_at_least(page, 4)
            await page.locator("#recent-table", has_text="wd-001").wait_for(timeout=WAIT_MS)
            assert await page.evaluate("window.__sameDocument") == 42
            await page.locator("#runners-body", has_text="sim-1").wait_for(timeout=WAIT_MS)
            await shot(page, tmp_path, "dashboard-4-results")

            # the hypothesis page: description, rationale, the diff against its parent, attempts, the log
            await page.goto(url.rstrip("/") + "/h/wd-001")
            diff = page.locator("#hyp-diff")
            await diff.wait_for(timeout=WAIT_MS)
            text = await diff.inner_text()
            assert (
                "-WEIGHT_DECAY = 0.0" in text and "+WEIGHT_DECAY = 0.01" in text and "MATRIX_LR" not in text
            )
            await page.locator("#log", has_text="step").wait_for(timeout=WAIT_MS)
            source = await page.locator("#log-source").inner_text()
            assert "attempt 1" in source, source
            await shot(page, tmp_path, "hypothesis-ok")

            # a crash explains itself: the status, the runner's reason, the traceback in the log
            await page.goto(url.rstrip("/") + "/h/odd-head")
            reason = page.locator("#hyp-reason")
            await reason.wait_for(timeout=WAIT_MS)
            assert "crash" in (await reason.inner_text())
            await page.locator("#log", has_text="HEAD_DIM").wait_for(timeout=WAIT_MS)
            await shot(page, tmp_path, "hypothesis-crash")

            await page.goto(url.rstrip("/") + "/h/no-such-id")
            await page.locator("main", has_text="no hypothesis 'no-such-id'").wait_for(timeout=WAIT_MS)
            assert errors == []


async def test_a_thousand_points(
    nats_server: EmbeddedServer, nc: Any, js: JetStreamContext, tmp_path: Path
) -> None:
    """The progress figure with ~1,000 finished experiments (the fixture swarm: 3 agents, 2 classes)."""
    run = "big"
    fx = simulate_run(run, seed=7, per_agent=340)
    n = sum(1 for e in fx.events if isinstance(e, ev.ExperimentFinished))
    async with live_swarm(nats_server, nc, tmp_path, run) as (url, _, _):
        await publish_many(js, fx.events)
        async with browser_page(tmp_path) as (page, errors):
            await page.goto(url)
            await results_at_least(page, n)
            title = await page.locator("#progress .chart-title").first.inner_text()
            assert re.search(r"\d{3} experiments, \d+ failed", title), title
            assert await page.locator("#progress canvas").count() >= 2
            # head to head: every agent of the run, as `swarm compare` ranks them
            await page.locator("#compare-body table").wait_for(timeout=WAIT_MS)
            table = await page.locator("#compare-body table").inner_text()
            assert all(agent in table for agent, _, _ in AGENTS), table
            await shot(page, tmp_path, "dashboard-1000")
            assert errors == []
    assert n >= 1000


async def test_no_ledger_explains_itself_then_recovers(nats_server: EmbeddedServer, nc: Any, js: JetStreamContext,
                                                       tmp_path: Path) -> None:  # fmt: skip
    run = "noledger"
    async with (
        live_swarm(nats_server, nc, tmp_path, run, ledger=False) as (url, _, _),
        browser_page(tmp_path) as (page, errors),
    ):
        await page.goto(url)
        banner = page.locator("#banner", has_text="no ledger answered")
        await banner.wait_for(timeout=WAIT_MS)
        assert "swarm ledger" in await banner.inner_text()
        await shot(page, tmp_path, "no-ledger")
        led = await start(
            "ledger", "--nats", nats_server.url, "--db", str(tmp_path / "l.duckdb"), cwd=tmp_path
        )
        try:
            await page.locator("#banner").wait_for(state="hidden", timeout=WAIT_MS)
        finally:
            await stop_process(led)
        assert errors == []


def _get(
    url: str, headers: dict[str, str] | None = None, method: str = "GET"
) -> tuple[int, dict[str, str], str]:
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *a: Any, **k: Any) -> None:
            return None

    req = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.build_opener(NoRedirect).open(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()


async def test_token_read_only_and_headers(nats_server: EmbeddedServer, nc: Any, js: JetStreamContext,
                                           tmp_path: Path) -> None:  # fmt: skip
    from dashboard import DashboardConfig, DashboardError, run_dashboard
    from dashboard.server import is_loopback, resolve_token, url_of

    # beyond loopback a token is required (a random one unless given); loopback needs none
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3") and not is_loopback("example.org")
    assert resolve_token("127.0.0.1", None) is None
    generated = resolve_token("0.0.0.0", None)
    assert generated is not None and len(generated) >= 24
    with pytest.raises(DashboardError, match="at least 16"):
        resolve_token("0.0.0.0", "short")
    import socket

    assert url_of("0.0.0.0", 8765, "tok") == f"http://{socket.gethostname()}:8765/?token=tok"
    assert url_of("::1", 80, None) == "http://[::1]:80/"

    token = "t" * 8 + "0123456789abcdef"
    stop = asyncio.Event()
    box: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    cfg = DashboardConfig(run="tok", host="127.0.0.1", port=0, token=token)
    task = asyncio.create_task(run_dashboard(nc, cfg, stop=stop, on_ready=box.set_result))
    try:
        url = await asyncio.wait_for(box, 30)
        assert url.endswith(f"?token={token}")
        base = url.split("?")[0]
        status, _, body = await asyncio.to_thread(_get, base + "api/state")
        assert status == 401 and "needs its token" in body
        status, headers, _ = await asyncio.to_thread(_get, url)
        assert (
            status == 303
            and headers["location"] == "/"
            and f"swarm_dashboard_token={token}" in headers["set-cookie"]
        )
        assert "HttpOnly" in headers["set-cookie"] and "SameSite=Strict" in headers["set-cookie"]
        cookie = {"Cookie": f"swarm_dashboard_token={token}"}
        status, headers, body = await asyncio.to_thread(_get, base, cookie)
        assert (
            status == 200 and "uPlot" in body and "default-src 'none'" in headers["content-security-policy"]
        )
        status, _, _ = await asyncio.to_thread(_get, base + "api/state", {"Authorization": f"Bearer {token}"})
        assert status == 200
        status, _, _ = await asyncio.to_thread(_get, base + "api/state", {"Authorization": "Bearer wrong"})
        assert status == 401
        status, _, body = await asyncio.to_thread(_get, base + "api/state", cookie, "POST")
        assert status == 405 and "read-only" in body
        # every asset ships in the package: the page asks for nothing outside the dashboard
        html = await asyncio.to_thread((REPO / "dashboard" / "static" / "index.html").read_text)
        assert not re.search(r"(src|href)=\"(https?:)?//", html)
        for asset in ("static/app.js", "static/style.css", "static/vendor/uPlot.iife.min.js"):
            status, _, body = await asyncio.to_thread(_get, base + asset, cookie)
            assert status == 200 and "https://cdn" not in body
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def test_swarm_up_dashboard(tmp_path: Path) -> None:
    """`swarm up --dashboard` prints the URL of a live page of its own run."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        nats_port = s.getsockname()[1]
    up = await start("up", "--executor", "simulated", "--time-scale", "0.05", "--max-experiments", "6", "--no-live",
                     "--run", "upd", "--state-dir", str(tmp_path / "state"), "--port", str(nats_port),
                     "--baseline-repeats", "1", "--agents", "random", "--dashboard", "0", cwd=tmp_path)  # fmt: skip
    try:
        url = await read_url(up)
        async with browser_page(tmp_path) as (page, errors):
            await page.goto(url)
            await page.locator("#run", has_text="run upd").wait_for(timeout=WAIT_MS)
            await results_at_least(page, 2)
            await shot(page, tmp_path, "swarm-up-dashboard")
            assert errors == []
        assert up.stdout is not None
        rest = (await asyncio.wait_for(up.stdout.read(), 600)).decode()
        assert await up.wait() == 0, rest
    finally:
        await stop_process(up)

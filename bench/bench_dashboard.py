"""Dashboard benchmarks (run by hand): what one open dashboard costs the ledger, at a given size of run.

    .venv/bin/python bench/bench_dashboard.py [--experiments N] [--smoke]

The dashboard asks the ledger every second for the hypotheses changed since the last stream position it
saw (``timeline``), and, when the run moved, for the ``overview`` and (every 10 s at most) ``compare``; a
hypothesis page asks for ``hypothesis``. Prints one ``key: value`` line per figure: each request's latency
in process and over NATS (median and max of the runs), and the size of the state a browser loads first.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_ledger import synthetic  # noqa: E402  (the ledger bench's synthetic run: one home for it)

from bus import EmbeddedServer, connect, subjects  # noqa: E402
from bus import events as ev  # noqa: E402
from bus.readapi import LedgerClient  # noqa: E402
from ledger import watch  # noqa: E402
from ledger.api import LedgerApi  # noqa: E402
from ledger.projection import RawMessage, apply, project  # noqa: E402
from ledger.schema import connect_db  # noqa: E402

RUN = "bench"


def _figures(times: list[float]) -> str:
    return f"{statistics.median(times):.1f} median, {max(times):.1f} max"


async def _timed(fn: Callable[[], Awaitable[Any]], reps: int) -> list[float]:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        await fn()
        times.append((time.perf_counter() - t) * 1000)
    return times


async def run(n_exp: int, reps: int, tmp: Path) -> None:
    con = connect_db(str(tmp / "dash.duckdb"))
    events = synthetic(int(n_exp * 3.12), run=RUN)
    t0 = time.perf_counter()
    msgs = [RawMessage(i + 1, subjects.event_subject(e), ev.encode(e)) for i, e in enumerate(events)]
    for i in range(0, len(msgs), 20_000):
        apply(con, project(msgs[i : i + 20_000]), consumer="bench")
    n = con.execute("SELECT count(*) FROM experiments").fetchone()
    print(
        f"dashboard_db: {n[0] if n else 0} experiments from {len(events)} events, built in {time.perf_counter() - t0:.1f} s"
    )
    cur = con.cursor()
    last = watch.timeline(cur, ev.TimelineRequest(run=RUN, limit=10_000)).last_seq
    hid = "h7"

    async def in_process(fn: Callable[[], Any]) -> Any:
        return fn()

    cases: list[tuple[str, Callable[[], Any]]] = [
        ("timeline_first_page", lambda: watch.timeline(cur, ev.TimelineRequest(run=RUN))),
        ("timeline_nothing_new", lambda: watch.timeline(cur, ev.TimelineRequest(run=RUN, after_seq=last))),
        ("overview", lambda: watch.overview(cur, ev.OverviewRequest(run=RUN))),
        ("hypothesis", lambda: watch.hypothesis(cur, RUN, hid)),
        ("compare", lambda: watch.compare(cur, ev.CompareRequest(run=RUN))),
    ]
    for name, fn in cases:
        times = await _timed(lambda fn=fn: in_process(fn), reps)  # type: ignore[misc]
        print(f"query_ms_{name}: {_figures(times)} (in process, {reps} runs)")

    server = EmbeddedServer(tmp / "js").start()
    try:
        nc = await connect(server.url, name="bench")
        api = LedgerApi(nc, con)
        await api.start()
        client = LedgerClient(nc, RUN, timeout=60)
        calls: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
            ("timeline_first_page", lambda: client.timeline()),
            ("timeline_nothing_new", lambda: client.timeline(after_seq=last)),
            ("overview", lambda: client.overview()),
            ("hypothesis", lambda: client.hypothesis(hid)),
            ("compare", lambda: client.compare()),
        ]
        for name, call in calls:
            print(f"api_ms_{name}: {_figures(await _timed(call, reps))} (over NATS, {reps} runs)")
        # what a browser loads when it opens the page: every hypothesis as the timeline gives it, as JSON
        rows, cursor = [], 0
        for _ in range(1000):
            page = await client.timeline(after_seq=cursor, limit=10_000)
            rows += page.items
            cursor = page.last_seq
            if not page.more:
                break
        size = len(msgspec.json.encode(rows))
        print(
            f"state_json_bytes: {size:,} for {len(rows)} hypotheses ({size / max(1, len(rows)):.0f} per hypothesis)"
        )
        await api.stop()
        await nc.close()
    finally:
        server.stop()
    con.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiments", type=int, default=100_000)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (seconds): CI runs this")
    args = ap.parse_args()
    n, reps = (2_000, 2) if args.smoke else (args.experiments, args.reps)
    with tempfile.TemporaryDirectory(prefix="bench-dashboard-") as d:
        asyncio.run(run(n, reps, Path(d)))


if __name__ == "__main__":
    main()

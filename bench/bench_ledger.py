"""Ledger benchmarks (run by hand): end-to-end projection rate and latency, replay, agent-context queries.

    .venv/bin/python bench/bench_ledger.py [--events N] [--replay-events N] [--experiments N]

Prints one ``key: value`` line per figure. Goals on a 2-core box: >= 20,000 events/s end to end,
replay of 1M events <= 30 s, each agent-context query <= 50 ms at 100k experiments.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bus import EmbeddedServer, connect, publish, publish_many, setup, subjects
from bus import events as ev
from ledger import queries as q
from ledger.api import LedgerApi, LedgerClient
from ledger.projection import RawMessage, apply, project
from ledger.projector import Projector
from ledger.replay import replay_stream
from ledger.schema import connect_db

HW = ev.Hardware(hw_class="cpu", cpu_count=2)


def synthetic(n_events: int, run: str = "bench") -> list[ev.Event]:
    """Proposal, claim, finish per hypothesis (plus a note every 50): about n_events events."""
    c: dict[str, Any] = {"run": run, "source": "bench"}
    out: list[ev.Event] = []
    i = 0
    while len(out) < n_events:
        hid, agent = f"h{i}", f"a{i % 8}"
        src = f"# hypothesis {i}\nLR = {i}\n"
        out.append(ev.HypothesisProposed(
            **c, hypothesis_id=hid, agent=agent, train_py=src, train_py_sha256=hashlib.sha256(src.encode()).hexdigest(),
            ast_sha256=f"ast{i}", hw_class="cpu", knobs={"LR": i}, tags=["baseline"] if i % 100 == 0 else []))  # fmt: skip
        out.append(ev.ExperimentClaimed(**c, hypothesis_id=hid, attempt=1, runner=f"w{i % 4}", hardware=HW))
        ok = i % 9 != 0
        out.append(ev.ExperimentFinished(**c, hypothesis_id=hid, attempt=1, runner=f"w{i % 4}", status="ok" if ok else "crash",
                                         val_bpb=1.0 + (i * 7919 % 1000) / 1000 if ok else None, hw_class="cpu"))  # fmt: skip
        if i % 10 == 0:
            out.append(ev.HypothesisDecided(**c, hypothesis_id=hid, decision="keep", by=agent))
        if i % 50 == 0:
            out.append(ev.NoteWritten(**c, note_id=f"n{i}", agent=agent, title="t", body="b" * 200, refs=[hid]))
        i += 1
    return out[:n_events]


async def bench_end_to_end(tmp: Path, n: int) -> None:
    server = EmbeddedServer(tmp / "js-e2e").start()
    try:
        nc = await connect(server.url, name="bench")
        js = nc.jetstream()
        await setup(js)
        con = connect_db(str(tmp / "e2e.duckdb"))
        projector = Projector(js, con, fetch_timeout=0.5)  # batch_size: the default (10,000)
        await projector.start()
        stop = asyncio.Event()
        task = asyncio.create_task(projector.run(stop))
        events = synthetic(n)
        t0 = time.perf_counter()
        acks = await publish_many(js, events)
        t_pub = time.perf_counter() - t0
        await projector.wait_for_seq(acks[-1].seq, timeout=600)
        dt = time.perf_counter() - t0
        print(f"e2e_events: {n}")
        print(f"e2e_publish_seconds: {t_pub:.2f}  ({n / t_pub:,.0f} events/s published)")
        print(f"e2e_events_per_second: {n / dt:,.0f}  (publish_many -> projected rows, {dt:.2f} s)")
        lat = []
        for e in synthetic(300, run="lat"):
            t = time.perf_counter()
            ack = await publish(js, e)
            await projector.wait_for_seq(ack.seq)
            lat.append((time.perf_counter() - t) * 1000)
        lat.sort()
        print(f"latency_ms_p50: {lat[len(lat) // 2]:.2f}")
        print(f"latency_ms_p99: {lat[int(len(lat) * 0.99) - 1]:.2f}  (one awaited publish at a time, 300 samples)")
        stop.set()
        await task
        await projector.close()
        con.close()
        await nc.close()
    finally:
        server.stop()


async def bench_replay(tmp: Path, n: int) -> None:
    server = EmbeddedServer(tmp / "js-replay").start()
    try:
        nc = await connect(server.url, name="bench")
        js = nc.jetstream()
        await setup(js)
        t0 = time.perf_counter()
        for start in range(0, n, 100_000):
            await publish_many(js, synthetic(min(100_000, n - start), run=f"r{start // 100_000}"))
        print(f"replay_fill_seconds: {time.perf_counter() - t0:.1f}  ({n} events into the stream)")
        con = connect_db(str(tmp / "replay.duckdb"))
        t0 = time.perf_counter()
        last = await replay_stream(js, con)
        dt = time.perf_counter() - t0
        rows = con.execute("SELECT count(*) FROM events").fetchone()
        print(f"replay_events: {rows[0] if rows else 0} (last seq {last})")
        print(f"replay_seconds: {dt:.1f}  ({n / dt:,.0f} events/s)")
        con.close()
        await nc.close()
    finally:
        server.stop()


def _timed(fn: Any, reps: int = 20) -> tuple[float, float]:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times), max(times)


async def bench_queries(tmp: Path, n_exp: int) -> None:
    con = connect_db(str(tmp / "queries.duckdb"))
    events = synthetic(int(n_exp * 3.12))
    t0 = time.perf_counter()
    msgs = [RawMessage(i + 1, subjects.event_subject(e), ev.encode(e)) for i, e in enumerate(events)]
    for i in range(0, len(msgs), 20_000):
        apply(con, project(msgs[i : i + 20_000]), consumer="bench")
    n_h = con.execute("SELECT count(*) FROM experiments").fetchone()
    print(f"query_db: {n_h[0] if n_h else 0} experiments from {len(events)} events, built in {time.perf_counter() - t0:.1f} s")
    cur = con.cursor()
    ctx = ev.ContextRequest(run="bench", agent="a3")
    shas = [hashlib.sha256(f"# hypothesis {i}\nLR = {i}\n".encode()).hexdigest() for i in range(0, 2000, 7)] + ["x" * 64]
    for name, fn in [
        ("context", lambda: q.context(cur, ctx)),
        ("best", lambda: q.best(cur, "bench")),
        ("recent", lambda: q.recent(cur, "bench", 30)),
        ("seen", lambda: q.seen(cur, "bench", shas)),
    ]:
        med, worst = _timed(fn)
        print(f"query_ms_{name}: {med:.1f} median, {worst:.1f} max (in process, 20 runs)")
    # the same through the bus (request/reply, msgpack, a worker thread)
    server = EmbeddedServer(tmp / "js-q").start()
    try:
        nc = await connect(server.url, name="bench")
        api = LedgerApi(nc, con)
        await api.start()
        client = LedgerClient(nc, "bench")
        for name, call in [("context", lambda: client.context("a3")), ("best", client.best),
                           ("recent", lambda: client.recent(30)), ("seen", lambda: client.seen(shas))]:  # fmt: skip
            times = []
            for _ in range(20):
                t = time.perf_counter()
                await call()
                times.append((time.perf_counter() - t) * 1000)
            print(f"api_ms_{name}: {statistics.median(times):.1f} median, {max(times):.1f} max (over NATS, 20 runs)")
        await api.stop()
        await nc.close()
    finally:
        server.stop()
    con.close()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=100_000, help="events for the end-to-end figure")
    ap.add_argument("--replay-events", type=int, default=1_000_000)
    ap.add_argument("--experiments", type=int, default=100_000)
    ap.add_argument("--only", choices=["e2e", "replay", "queries"], default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-ledger-") as d:
        tmp = Path(d)
        if args.only in (None, "e2e"):
            await bench_end_to_end(tmp, args.events)
        if args.only in (None, "queries"):
            await bench_queries(tmp, args.experiments)
        if args.only in (None, "replay"):
            await bench_replay(tmp, args.replay_events)


if __name__ == "__main__":
    asyncio.run(main())

"""bus/logstore.py against a real nats-server: logs round-trip, are bounded, expire cleanly, and travel."""

from __future__ import annotations

import asyncio
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy

from bus import connect
from bus.logstore import (
    LOG_STREAM,
    LogNotFound,
    LogStoreSpec,
    bound,
    ensure_log_store,
    get_log,
    is_log_key,
    log_key,
    put_log,
)
from bus.server import EmbeddedServer


def _cut(out: bytes) -> int:
    """The byte count the marker line reports."""
    return int(out.split(b"[... ")[1].split(b" bytes cut")[0])


def _kept(out: bytes) -> int:
    """Bytes of the original log left in ``out`` (all but the marker line)."""
    start = out.index(b"\n[... ")
    end = out.index(b"...]\n", start) + len(b"...]\n")
    return len(out) - (end - start)


async def test_round_trip_bytes_text_and_file(js: JetStreamContext, tmp_path: Path) -> None:
    key = await put_log(js, "r1", "h-abc", 1, b"step 1 loss 3.2\nstep 2 loss 3.1\n")
    assert key == "r1/h-abc/1.log" and is_log_key(key)
    assert await get_log(js, "r1", key) == b"step 1 loss 3.2\nstep 2 loss 3.1\n"

    key2 = await put_log(js, "r1", "h-abc", 2, "ünïcode ✓\n")
    assert key2 == "r1/h-abc/2.log"
    assert (await get_log(js, "r1", key2)).decode() == "ünïcode ✓\n"
    assert await get_log(js, "r1", key) == b"step 1 loss 3.2\nstep 2 loss 3.1\n"  # one key per attempt

    f = tmp_path / "run.log"
    f.write_bytes(b"x" * 300_000)  # bigger than one 128 KiB chunk
    key3 = await put_log(js, "r1", "h-def", 1, f)
    assert await get_log(js, "r1", key3) == b"x" * 300_000

    # storing the same attempt again replaces its log
    await put_log(js, "r1", "h-abc", 1, b"replaced\n")
    assert await get_log(js, "r1", key) == b"replaced\n"


async def test_a_second_client_reads_what_the_first_stored(
    nats_server: EmbeddedServer, js: JetStreamContext
) -> None:
    key = await put_log(js, "r1", "h-1", 3, b"from the runner's machine\n")
    other = await connect(nats_server.url, name="another-machine")
    try:
        assert await get_log(other.jetstream(), "r1", key) == b"from the runner's machine\n"
    finally:
        await other.close()


def test_bound_keeps_head_and_tail_and_says_what_was_cut() -> None:
    data = b"HEAD" + b"m" * 10_000 + b"TAIL"
    out = bound(data, 1000)
    assert len(out) <= 1000 and out.startswith(b"HEAD") and out.endswith(b"TAIL")
    assert b"bytes cut" in out
    assert _cut(out) == len(data) - _kept(out)
    assert bound(b"short", 1000) == b"short"


async def test_long_log_file_is_bounded_with_its_real_size(js: JetStreamContext, tmp_path: Path) -> None:
    f = tmp_path / "huge.log"
    with f.open("wb") as out:
        out.write(b"config: depth=8\n")
        out.write(b"." * 3_000_000)
        out.write(b"\nval_bpb: 0.99\n")
    spec = LogStoreSpec(max_log_bytes=64 * 1024)
    key = await put_log(js, "r1", "h-big", 1, f, spec=spec)
    got = await get_log(js, "r1", key)
    assert len(got) <= 64 * 1024
    assert got.startswith(b"config: depth=8") and got.endswith(b"val_bpb: 0.99\n")
    assert _cut(got) == f.stat().st_size - _kept(got)


async def test_missing_wrong_run_and_bad_keys(js: JetStreamContext, nc: NATS) -> None:
    with pytest.raises(LogNotFound, match="never stored"):
        await get_log(js, "r1", "r1/h-none/1.log")  # no bucket yet
    await put_log(js, "r1", "h-1", 1, b"x")
    with pytest.raises(LogNotFound, match="never stored"):
        await get_log(js, "r1", "r1/h-none/1.log")
    with pytest.raises(ValueError, match="belongs to run 'r1'"):
        await get_log(js, "r2", "r1/h-1/1.log")
    with pytest.raises(ValueError, match="not a log key"):
        await get_log(js, "r1", "/var/tmp/runner/h-1.log")
    assert not is_log_key("/var/tmp/runner/h-1.log")
    with pytest.raises(ValueError, match="without '/'"):
        log_key("r1", "a/b", 1)
    with pytest.raises(ValueError, match="invalid run"):
        log_key("r 1", "h", 1)


async def test_full_bucket_drops_the_oldest_logs_first(js: JetStreamContext) -> None:
    spec = LogStoreSpec(max_bytes=600_000)
    keys = [await put_log(js, "r1", f"h-{i}", 1, bytes([65 + i]) * 200_000, spec=spec) for i in range(6)]
    # the newest log is always readable; the oldest is gone and says so instead of hanging
    assert await get_log(js, "r1", keys[-1]) == bytes([65 + 5]) * 200_000
    with pytest.raises(LogNotFound):
        await get_log(js, "r1", keys[0])
    info = await js.stream_info(LOG_STREAM)
    assert info.state.bytes <= 600_000


async def test_an_existing_bucket_is_used_as_it_is(js: JetStreamContext) -> None:
    await ensure_log_store(js, LogStoreSpec(ttl_seconds=3600.0))
    # no conflict error: the operator's config stays
    await ensure_log_store(js, LogStoreSpec(ttl_seconds=7200.0))
    info = await js.stream_info(LOG_STREAM)
    assert info.config.max_age == 3600.0
    assert info.config.discard == DiscardPolicy.OLD


async def test_roles_store_and_read_logs_on_a_secured_server(tmp_path: Path) -> None:
    """`swarm creds` users: a runner stores logs (and creates the bucket), an agent reads them but cannot
    store one; the real server enforces it."""
    from bus import BusConfig, security, setup

    passwords = security.generate(tmp_path / "creds")
    server = EmbeddedServer(tmp_path / "js", config=(tmp_path / "creds" / "auth.conf").read_text()).start()
    clients: list[NATS] = []

    async def as_role(role: str) -> JetStreamContext:
        nc = await connect(BusConfig(servers=(server.url,), user=role, password=passwords[role]), name=role,
                           max_reconnect_attempts=0)  # fmt: skip
        clients.append(nc)
        return nc.jetstream()

    try:
        await setup(await as_role("admin"))
        runner, agent = await as_role("runner"), await as_role("agent")
        key = await put_log(runner, "r1", "h-1", 1, b"x" * 200_000 + b"\nval_bpb: 1.0\n")  # two chunks
        got = await get_log(agent, "r1", key)
        assert got.endswith(b"val_bpb: 1.0\n") and len(got) == 200_014
        # the server drops the agent's chunk publishes: no acknowledgement ever comes
        with pytest.raises((TimeoutError, nats.errors.Error)):
            await asyncio.wait_for(put_log(agent, "r1", "h-2", 1, b"forged"), 10)
        with pytest.raises(LogNotFound):
            await get_log(agent, "r1", "r1/h-2/1.log")
    finally:
        for nc in clients:
            await nc.close()
        server.stop()

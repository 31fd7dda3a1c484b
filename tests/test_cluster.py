"""The shipped 3-server cluster config (deploy/nats/cluster.conf) forms a cluster that keeps accepting
events at replicas 3 when one member is killed."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from bus import EmbeddedServer, StreamSpec, connect, ensure_stream, publish, subjects
from bus import events as ev

CONF = Path(__file__).resolve().parents[1] / "deploy" / "nats" / "cluster.conf"


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[list[EmbeddedServer]]:
    ports = free_ports(6)
    client, route = ports[:3], ports[3:]
    routes = {f"NATS_ROUTE_{i + 1}": f"nats-route://127.0.0.1:{p}" for i, p in enumerate(route)}
    servers = [
        EmbeddedServer(
            tmp_path / f"n{i}",
            port=client[i],
            config=CONF,
            env={
                "NATS_SERVER_NAME": f"nats-{i + 1}",
                "NATS_CLIENT_PORT": str(client[i]),
                "NATS_CLUSTER_PORT": str(route[i]),
                "NATS_STORE_DIR": str(tmp_path / f"n{i}"),
                **routes,
            },
        )
        for i in range(3)
    ]
    errors: list[Exception] = []

    def start(s: EmbeddedServer) -> None:
        try:
            s.start(timeout=60)
        except Exception as e:
            errors.append(e)

    # JetStream in a cluster waits for a meta leader, so members must start together
    threads = [threading.Thread(target=start, args=(s,)) for s in servers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        if errors:
            raise errors[0]
        yield servers
    finally:
        for s in servers:
            s.kill()


async def test_cluster_keeps_accepting_events_when_a_member_dies(cluster: list[EmbeddedServer]) -> None:
    nc = await connect([s.url for s in cluster], name="cluster-test", reconnect_time_wait=0.2)
    try:
        js = nc.jetstream(timeout=10)
        deadline = 30
        for attempt in range(deadline * 5):  # the meta leader is elected shortly after start
            try:
                await ensure_stream(js, StreamSpec(replicas=3))
                break
            except Exception:
                if attempt == deadline * 5 - 1:
                    raise
                await nc.flush()
                await asyncio.sleep(0.2)
        info = await js.stream_info(subjects.STREAM)
        assert info.config.num_replicas == 3
        sent = []
        for i in range(50):
            e = ev.NoteWritten(run="c", source="t", note_id=str(i), agent="a", title=str(i), body="")
            await publish(js, e, timeout=10)
            sent.append(e)
        # kill the member this client is connected to, or another one: either way the cluster goes on
        victim = (
            next(s for s in cluster if s.port == nc.connected_url.port) if nc.connected_url else cluster[0]
        )
        victim.kill()
        for i in range(50, 100):
            e = ev.NoteWritten(run="c", source="t", note_id=str(i), agent="a", title=str(i), body="")
            await publish(js, e, timeout=10, retries=20)
            sent.append(e)
        info = await js.stream_info(subjects.STREAM)
        assert info.state.messages == 100
        sub = await js.pull_subscribe("swarm.c.evt.note", durable="check", stream=subjects.STREAM)
        got = []
        while len(got) < 100:
            got += [ev.decode(m.data) for m in await sub.fetch(100, timeout=10)]
        assert got == sent
    finally:
        await nc.close()

"""Taking work with several consumers (runner.intake), against a real nats-server: a runner long-polls its
own class and ``any`` at once, so two items can reach it together. It runs one; the other must reach an
idle runner, not wait a whole experiment behind the first (the simulator measured 41 % of the fleet's
capacity used at 16 runners before, 86 % after)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from bus.events import Hardware
from runner.intake import Intake
from tests.support.bus import poll, propose
from tests.support.sim import sim_config

SRC = "def build_model(config):\n    return None\n"


async def intake(nc: NATS, tmp: Path, url: str, rid: str, **kw: float) -> Intake:
    cfg = sim_config(tmp, url, runner_id=rid, hw_class="h100", **kw)
    it = Intake(nc, cfg, rid, Hardware(hw_class="h100"), ["h100", "any"])
    await it.subscribe(nc.jetstream())
    return it


async def test_an_item_that_arrives_while_busy_goes_to_an_idle_runner(
    nc: NATS, js: JetStreamContext, nats_server, tmp_path: Path
) -> None:
    # long polls, so both of a's pull requests are still open when the items arrive
    a = await intake(nc, tmp_path, nats_server.url, "a", fetch_timeout=8.0, ack_wait=120.0)
    b = await intake(nc, tmp_path, nats_server.url, "b", fetch_timeout=8.0, ack_wait=120.0)
    got_a = asyncio.create_task(a.acquire())
    await asyncio.sleep(0.3)  # a's requests are first in line on both consumers
    got_b = asyncio.create_task(b.acquire())
    await asyncio.sleep(0.3)
    h1 = await propose(js, SRC, hw_class="h100")
    h2 = await propose(js, SRC + "# two\n", hw_class="any")
    # each returns as soon as its own claim lands, not when the other consumer's long-poll ends
    item_a = await asyncio.wait_for(got_a, 5.0)
    item_b = await asyncio.wait_for(got_b, 5.0)
    assert item_a is not None and item_b is not None
    assert {item_a.hyp.hypothesis_id, item_b.hyp.hypothesis_id} == {h1.hypothesis_id, h2.hypothesis_id}
    assert not a.buffer and not b.buffer  # nobody holds a second item while running one
    assert item_a.hyp.hypothesis_id == h1.hypothesis_id  # the own class first
    assert a.given_back == 1 and item_b.attempt == 2  # a handed the other back; b got its redelivery
    for it, item in ((a, item_a), (b, item_b)):
        await it.release(item, "ack")
        await it.drain()
        await it.unsubscribe()


async def test_an_item_on_its_last_delivery_is_held_not_given_back(
    nc: NATS, js: JetStreamContext, nats_server, tmp_path: Path
) -> None:
    # with max_deliver 2, a first delivery is already one short of the limit: giving it back could lose it
    a = await intake(nc, tmp_path, nats_server.url, "a", fetch_timeout=8.0, ack_wait=120.0, max_deliver=2)
    got = asyncio.create_task(a.acquire())
    await asyncio.sleep(0.3)
    h1 = await propose(js, SRC, hw_class="h100")
    h2 = await propose(js, SRC + "# two\n", hw_class="any")
    first = await asyncio.wait_for(got, 5.0)
    assert first is not None and first.hyp.hypothesis_id == h1.hypothesis_id
    # the any item arrives on the still-open long-poll: claimed and held (lease kept), given back to no one
    async def held() -> bool:
        return bool(a.buffer)

    await poll("the second item held", held, timeout=10.0)
    assert a.given_back == 0 and a.buffer[0].hyp.hypothesis_id == h2.hypothesis_id
    second = await a.acquire()
    assert second is not None and second.hyp.hypothesis_id == h2.hypothesis_id
    for item in (first, second):
        await a.release(item, "ack")
    await a.drain()
    await a.unsubscribe()


async def test_two_collects_at_once_take_each_delivery_once(
    nc: NATS, js: JetStreamContext, nats_server, tmp_path: Path
) -> None:
    """A fetch's callback and acquire() collect at the same time; each awaits (giving an item back) between
    classes. Both must go on without taking the same fetch twice (a KeyError ended runners under load)."""

    class Delivery:  # what a fetch returns, reduced to what _collect reads; giving it back takes a while
        def __init__(self) -> None:
            self.metadata = type("Md", (), {"num_delivered": 1})()
            self.naks = 0

        async def nak(self) -> None:
            self.naks += 1
            await asyncio.sleep(0.05)

    a = await intake(nc, tmp_path, nats_server.url, "a", max_deliver=5)
    msgs = {"h100": Delivery(), "any": Delivery()}

    async def fetched(cls: str) -> Delivery:
        return msgs[cls]

    a._fetches = {cls: asyncio.create_task(fetched(cls)) for cls in msgs}
    await asyncio.sleep(0)  # both fetches done
    await asyncio.wait_for(asyncio.gather(a._collect(), a._collect()), 5)
    assert [m.naks for m in msgs.values()] == [1, 1] and a.given_back == 2 and not a._fetches
    await a.unsubscribe()

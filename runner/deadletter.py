"""The dead-letter path: an item that exhausted ``max_deliver`` ends as ``ExperimentFinished(status=lost)``.

One runner of the queue group handles each advisory; a deterministic event id (the same for every runner
that sees the advisory) lets the server's Nats-Msg-Id dedup keep one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import uuid
from typing import Any

from nats.aio.client import Client as NATS

from bus import subjects
from bus.client import publish
from bus.events import ExperimentFinished, HypothesisProposed, decode

log = logging.getLogger("swarm.runner.deadletter")


def lost_event_id(consumer: str, stream_seq: int, proposed_ts: float) -> str:
    """A deterministic UUIDv7 for the dead-letter event of one exhausted item."""
    ms = int(proposed_ts * 1000) & ((1 << 48) - 1)
    h = int.from_bytes(hashlib.sha256(f"lost:{consumer}:{stream_seq}".encode()).digest()[:10], "big")
    rand_a, rand_b = h & 0xFFF, (h >> 12) & ((1 << 62) - 1)
    return str(uuid.UUID(int=(ms << 80) | (0x7 << 76) | (rand_a << 64) | (0b10 << 62) | rand_b))


class DeadLetters:
    def __init__(self, nc: NATS, run: str, runner_id: str) -> None:
        self.nc, self.js, self.run, self.id = nc, nc.jetstream(), run, runner_id
        self.subs: list[Any] = []
        self.published: list[ExperimentFinished] = []

    async def watch(self, classes: list[str]) -> None:
        for cls in classes:
            consumer = subjects.work_consumer(self.run, cls)
            subject = f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{subjects.STREAM}.{consumer}"
            self.subs.append(await self.nc.subscribe(subject, queue=f"deadletter_{consumer}", cb=self._on_advisory))

    async def close(self) -> None:
        for sub in self.subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _on_advisory(self, msg: Any) -> None:
        try:
            adv = json.loads(msg.data)
            seq, consumer, deliveries = int(adv["stream_seq"]), str(adv["consumer"]), int(adv.get("deliveries", 0))
            raw = await self.js.get_msg(subjects.STREAM, seq)
            event = decode(raw.data or b"")
            if not isinstance(event, HypothesisProposed):
                return
            lost = ExperimentFinished(
                event_id=lost_event_id(consumer, seq, event.ts), run=self.run, source=self.id,
                hypothesis_id=event.hypothesis_id, attempt=deliveries, runner=self.id, status="lost",
                reason=f"no runner finished it in {deliveries} deliveries (max_deliver): dead-lettered",
                hw_class=event.hw_class, train_py_sha256=event.train_py_sha256,
            )  # fmt: skip
            await publish(self.js, lost)
            self.published.append(lost)
        except Exception:  # an advisory we cannot act on must not kill the subscription
            log.exception("dead-letter advisory not handled: %r", msg.data[:300])

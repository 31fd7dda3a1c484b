"""A held work item's lease and the fence that keeps a runner that lost it from publishing as if it held it.

The server redelivers an unacked item exactly ``ack_wait`` after its last delivery or ``in_progress()``.
``in_progress()`` is a fire-and-forget publish, so a renewal only counts once a flush (PING/PONG round trip)
confirms the server has processed it, and the lease is measured from the moment the renewal was *sent*.
A lease is lost when a renewal failed (the connection was down, the flush timed out) for long enough that
``ack_wait`` has passed since the last confirmed one: from then on another runner may hold the item.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

log = logging.getLogger("swarm.runner.lease")


class Lease:
    def __init__(self, msg: Any, nc: Any, ack_wait: float, *, delivered_at: float | None = None) -> None:
        self.msg = msg
        self.nc = nc
        self.ack_wait = ack_wait
        self.renewed_at = delivered_at if delivered_at is not None else time.monotonic()
        self.failures = 0
        self.released = False  # acked or nak'd: nothing left to renew
        # margin against clock skew and the publish in flight: give up slightly before the server does
        self.margin = min(1.0, 0.1 * ack_wait)

    def age(self) -> float:
        return time.monotonic() - self.renewed_at

    def held(self) -> bool:
        """True while the server cannot have redelivered the item to someone else."""
        return not self.released and self.age() < self.ack_wait - self.margin

    async def renew(self) -> bool:
        """``in_progress()`` confirmed by a flush. Returns whether the lease is (still) held."""
        if self.released:
            return False
        if not self.held():
            return False  # too late: renewing now would extend someone else's delivery... or nothing
        sent = time.monotonic()
        try:
            if not self.nc.is_connected:
                raise ConnectionError("not connected")
            await self.msg.in_progress()
            await self._round_trip(timeout=max(0.5, min(5.0, self.ack_wait / 4)))
        except Exception as e:  # any failure means: not renewed; held() decides when it is lost
            self.failures += 1
            log.warning("lease renewal failed (%s); %.1f s since the last one", e, self.age())
            return self.held()
        self.renewed_at = sent
        return True

    async def _round_trip(self, timeout: float) -> None:
        """PING/PONG, like ``nc.flush(timeout)``, except that a PONG arriving after the timeout finds its
        future still pending. nats-py's flush cancels the future on timeout; the late PONG's
        ``set_result`` then raises InvalidStateError in the client's read loop, which ends it for good
        (the connection never reads again, so every later publish times out). A server paused past the
        flush timeout did exactly that to runners."""
        send_ping = getattr(self.nc, "_send_ping", None)
        if send_ping is None:  # not nats-py's client (or its internals changed)
            await self.nc.flush(timeout=timeout)
            return
        pong: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        await send_ping(pong)
        # asyncio.wait, not wait_for(shield(...)): on Python 3.11 wait_for returns the result when the PONG
        # lands in the same loop turn as a cancel, swallowing the cancel; the keeper then renewed a lease
        # forever while publish_result awaited it (the simulated fleet's drills hung on it). wait() leaves
        # the future alone on timeout and lets a cancel through.
        done, _ = await asyncio.wait({pong}, timeout=timeout)
        if not done:
            raise TimeoutError(f"no PONG within {timeout:g} s")

    async def keep(self) -> None:
        """Renew about every third of ack_wait until cancelled or released."""
        interval = max(0.05, self.ack_wait / 3)
        while not self.released:
            await asyncio.sleep(interval)
            await self.renew()

    async def ack(self) -> None:
        self.released = True
        await self.msg.ack()

    async def nak(self, delay: float | None = None) -> None:
        self.released = True
        await self.msg.nak(delay=delay)

    async def term(self) -> None:
        self.released = True
        await self.msg.term()

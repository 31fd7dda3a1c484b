"""Reading the events stream fast: JetStream pull requests whose messages are taken as raw frames.

nats-py spends about 10-13 µs of Python on every message it receives (a regex per protocol line, a
header dict, a ``Msg`` object, a queue put, a few awaits), which capped the projector near 75k
messages/s before any projection work. The ledger needs none of that: a stream message's sequence and
time are in its ack subject, and the event is its payload. So:

* :class:`FrameParser` is nats-py's protocol parser with a fast lane. ``MSG``/``HMSG`` frames of a
  subscription registered with :meth:`FrameParser.route` are appended, as ``(subject, reply, headers,
  payload)`` byte tuples, to that subscription's :class:`FrameSink` in one pass over the read buffer
  (headers only for a frame without a reply subject: a status).
  Every other frame (other subscriptions, PING, INFO, -ERR) goes through nats-py's own processing,
  unchanged, so the connection keeps working for everyone else on it (``swarm up`` shares one).
* :class:`PullFeed` keeps pull requests outstanding on a consumer (so the server streams while the
  projector works) and hands out batches of :class:`Batch` columns.

The parser is swapped into a connection that is already running (:func:`install`) only while nats-py's
parser holds no partial frame, so no byte is parsed twice or lost; reconnects reset it like nats-py's.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any, overload

from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription
from nats.errors import ProtocolError
from nats.protocol.parser import AWAITING_CONTROL_LINE, Parser

from ledger.errors import ProjectorError

log = logging.getLogger("swarm.ledger.fetch")

Frame = tuple[bytes, bytes, bytes | None, bytes]  # subject, reply, headers (or None), payload


class FrameSink:
    """Where :class:`FrameParser` puts the frames of one subscription; :meth:`wait` wakes on new ones."""

    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self.arrived = 0.0  # time.monotonic() of the last frames
        self._waiter: asyncio.Future[None] | None = None

    def notify(self) -> None:
        self.arrived = time.monotonic()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for frames; True if there are some."""
        if self.frames:
            return True
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(self._waiter, timeout)
        except TimeoutError:
            pass
        finally:
            self._waiter = None
        return bool(self.frames)

    def take(self, n: int) -> list[Frame]:
        """Up to ``n`` frames, oldest first."""
        if n <= 0:
            return []
        if len(self.frames) <= n:
            out, self.frames = self.frames, []
        else:
            out, self.frames = self.frames[:n], self.frames[n:]
        return out


class FrameParser(Parser):
    """nats-py's :class:`~nats.protocol.parser.Parser` with a fast lane for routed subscription ids."""

    def __init__(self, nc: NATS) -> None:
        super().__init__(nc)
        self.sinks: dict[int, FrameSink] = {}
        self._generation = 0

    def reset(self) -> None:
        super().reset()
        self._generation = getattr(self, "_generation", 0) + 1  # a reconnect: stop parsing the old buffer

    def route(self, sid: int, sink: FrameSink) -> None:
        self.sinks[sid] = sink

    def unroute(self, sid: int) -> None:
        self.sinks.pop(sid, None)

    async def parse(self, data: bytes = b"") -> None:
        self.buf.extend(data)
        if self.state != AWAITING_CONTROL_LINE:  # never the case unless nats-py's own lane left it so
            await super().parse()
            return
        buf = self.buf
        data = bytes(buf)  # one copy per read (32 KiB): slicing bytes copies once, a bytearray twice
        gen = self._generation
        sinks = self.sinks
        touched: list[FrameSink] = []
        pos, n = 0, len(data)
        find = data.find
        try:
            while pos < n:
                end = find(b"\r\n", pos)
                if end < 0:
                    break
                first = data[pos]
                if first == 72 or first == 77:  # "H"MSG / "M"SG: <subject> <sid> [reply] [hdr len] <len>
                    parts = data[pos:end].split()
                    op = parts[0]
                    hmsg = op == b"HMSG"
                    if (not hmsg and op != b"MSG") or len(parts) < (5 if hmsg else 4):
                        line = data[pos : end + 2]  # not a message after all: nats-py decides
                        pos = end + 2
                        if not await self._delegate(line, gen):
                            return
                        continue
                    try:
                        total = int(parts[-1])
                        hlen = int(parts[-2]) if hmsg else 0
                        sid = int(parts[2])
                    except ValueError as e:
                        raise ProtocolError("nats: malformed MSG") from e
                    start = end + 2
                    stop = start + total
                    if stop + 2 > n:
                        break  # the payload is not all here yet
                    reply = parts[3] if len(parts) == (6 if hmsg else 5) else b""
                    payload = data[start + hlen : stop]
                    pos = stop + 2
                    sink = sinks.get(sid)
                    if sink is not None:
                        # a stream message's headers (its Nats-Msg-Id) are of no use to the ledger: only a
                        # status (no reply subject) keeps them
                        sink.frames.append(
                            (
                                parts[1],
                                reply,
                                None if reply or not hlen else data[start : start + hlen],
                                payload,
                            )
                        )
                        if not touched or touched[-1] is not sink:
                            touched.append(sink)
                    else:
                        hdr = data[start : start + hlen] if hlen else None
                        await self.nc._process_msg(sid, parts[1], reply, payload, hdr)
                        if self._generation != gen:
                            return
                else:
                    line = data[pos : end + 2]
                    pos = end + 2
                    if not await self._delegate(line, gen):
                        return
        finally:
            if self._generation == gen:
                del buf[:pos]
            for sink in touched:
                sink.notify()

    async def _delegate(self, line: bytes, gen: int) -> bool:
        """Let nats-py's parser handle one complete control line (PING, PONG, +OK, -ERR, INFO, or
        something it will call a protocol error). False if that reset the parser (a reconnect)."""
        saved = self.buf
        self.buf = bytearray(line)
        try:
            await Parser.parse(self)
        finally:
            if self._generation == gen:
                self.buf = saved
        return self._generation == gen


async def install(nc: NATS, *, timeout: float = 30.0) -> FrameParser:
    """The connection's :class:`FrameParser`, swapping it in for nats-py's parser if needed.

    The swap waits for a moment when the old parser holds no partial frame: its state is then all in
    the (empty) buffer they share, and a parse of the old one that is still suspended on an await finds
    nothing left to do. nats-py parses each read as it arrives, so on a connection that is not in the
    middle of a burst that is at once. Raises ProjectorError if this nats-py does not have the parser
    this module extends, or if the moment never comes within ``timeout``.
    """
    deadline = time.monotonic() + timeout
    while True:
        current = getattr(nc, "_ps", None)
        if isinstance(current, FrameParser):
            return current
        if type(current) is not Parser:
            raise ProjectorError(
                f"this nats-py's connection has no standard protocol parser ({type(current).__name__}); "
                "the ledger's fast fetch needs nats-py >= 2.16, < 3"
            )
        if current.state == AWAITING_CONTROL_LINE and not current.buf:
            fp = FrameParser(nc)
            fp.buf = current.buf  # the same (empty) buffer: a parse still running on it sees no bytes
            nc._ps = fp
            return fp
        if time.monotonic() > deadline:
            raise ProjectorError("could not install the fast frame parser: nats-py's parser never idle")
        await asyncio.sleep(0.001)


# --------------------------------------------------------------------------------------------------
# pull consumer


def _ack_tokens(reply: bytes) -> tuple[bytes, bytes]:
    """(stream sequence, stored time in ns) from a JetStream ack subject:
    ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts_ns>.<pending>`` (9 tokens), or the v2 form
    with domain and account hash after ``$JS.ACK`` (12 or more tokens)."""
    tokens = reply.split(b".")
    if len(tokens) == 9:
        return tokens[5], tokens[7]
    if len(tokens) >= 12:
        return tokens[7], tokens[9]
    raise ProjectorError(f"not a JetStream message (reply subject {reply!r})")


class _StoredTimes(Sequence[float]):
    """The stored times of a batch's messages, read from their ack subjects only when asked (the
    projection needs them only for rejects)."""

    def __init__(self, replies: list[bytes]) -> None:
        self._replies = replies

    def __len__(self) -> int:
        return len(self._replies)

    @overload
    def __getitem__(self, i: int) -> float: ...
    @overload
    def __getitem__(self, i: slice) -> list[float]: ...
    def __getitem__(self, i: int | slice) -> float | list[float]:
        if isinstance(i, slice):
            return [int(_ack_tokens(r)[1]) / 1e9 for r in self._replies[i]]
        return int(_ack_tokens(self._replies[i])[1]) / 1e9


@dataclass
class Batch:
    """Stream messages as columns, in delivery order, with their ack subjects (the last acks them all
    under AckPolicy.ALL)."""

    seqs: list[int] = field(default_factory=list)
    subjects: list[str] = field(default_factory=list)
    datas: list[bytes] = field(default_factory=list)
    replies: list[bytes] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.seqs)

    @property
    def tss(self) -> Sequence[float]:
        """When the stream stored each message (unix seconds)."""
        return _StoredTimes(self.replies)

    @property
    def last_reply(self) -> bytes:
        return self.replies[-1] if self.replies else b""

    def extend(self, other: Batch) -> None:
        self.seqs += other.seqs
        self.subjects += other.subjects
        self.datas += other.datas
        self.replies += other.replies


_STATUS_PREFIX = b"NATS/1.0 "
_PENDING_HEADER = b"Nats-Pending-Messages:"


def _pending_of(hdr: bytes) -> int | None:
    """The ``Nats-Pending-Messages`` of a status frame: how many messages its pull request gave up."""
    i = hdr.find(_PENDING_HEADER)
    if i < 0:
        return None
    j = hdr.find(b"\r\n", i)
    try:
        return int(hdr[i + len(_PENDING_HEADER) : j if j >= 0 else None].strip())
    except ValueError:
        return None


class PullFeed:
    """Batches of messages from a JetStream pull consumer, with pull requests kept in flight.

    Up to ``window`` messages are requested at a time, in requests of ``request`` messages and at most
    ``request_bytes`` bytes that expire after ``expires`` seconds; messages are counted off as they
    arrive and the request statuses (408 expired, 409 max bytes) say how many a request gave up, so the
    server always has requests to fill while the caller works. The byte cap bounds what the server holds
    for this connection while the caller is busy (it cuts off a client more than 64 MiB behind as a slow
    consumer). A reconnect loses the requests in flight, so then they are made again. Messages a request
    delivered but the caller never took are the caller's to recover (a durable consumer redelivers them
    after ``ack_wait``; the projector and replay recover from their own position).
    """

    def __init__(
        self, nc: NATS, stream: str, consumer: str, *, request: int = 5000, window: int = 20_000,
        request_bytes: int = 4 << 20, expires: float = 5.0,
    ) -> None:  # fmt: skip
        self.nc = nc
        self.next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self.request = max(1, request)
        self.window = max(self.request, window)
        # at least two of the largest message the stream takes (1 MiB): a message bigger than a
        # request's max_bytes would never be delivered
        self.request_bytes = max(2 << 20, request_bytes)
        self.expires = expires
        self.sink = FrameSink()
        self._sub: Subscription | None = None
        self._parser: FrameParser | None = None
        self._inbox = ""
        self._outstanding = 0  # messages requested and not yet delivered or given up
        self._last_request = 0.0
        self._reconnects = 0
        self._subject_cache: dict[bytes, str] = {}

    async def start(self) -> None:
        self._parser = await install(self.nc)
        self._inbox = self.nc.new_inbox()
        self._sub = await self.nc.subscribe(self._inbox)
        self._parser.route(self._sub._id, self.sink)
        self._reconnects = self.nc.stats["reconnects"]

    async def close(self) -> None:
        if self._sub is not None:
            sub, self._sub = self._sub, None
            if self._parser is not None:
                self._parser.unroute(sub._id)
            await sub.unsubscribe()

    async def _top_up(self) -> None:
        """Keep ``window`` messages requested. A request stays outstanding until it is filled or its
        status says what it gave up; if the counts ever drift, a quiet spell past ``expires`` resets."""
        now = time.monotonic()
        reconnects = self.nc.stats["reconnects"]
        # every request ends in messages or a status within ``expires``: silence past that means the
        # requests were lost (a reconnect, a server restart), so the count is reset
        quiet = now - max(self._last_request, self.sink.arrived) > self.expires + 2
        if reconnects != self._reconnects or (self._outstanding and quiet and not self.sink.frames):
            self._reconnects = reconnects
            self._outstanding = 0
        while self._outstanding + self.request <= self.window:
            body = json.dumps(
                {"batch": self.request, "max_bytes": self.request_bytes, "expires": int(self.expires * 1e9)}
            ).encode()
            await self.nc.publish(self.next_subject, body, reply=self._inbox)
            self._outstanding += self.request
            self._last_request = now

    async def fetch(self, max_msgs: int, timeout: float, *, wake: asyncio.Future[Any] | None = None) -> Batch:
        """Up to ``max_msgs`` stream messages: at least one, or an empty batch after ``timeout`` (or as
        soon as ``wake`` is done). Safe to cancel: messages are taken only after the last await."""
        if self._sub is None:
            await self.start()
        deadline = time.monotonic() + timeout
        if wake is not None:
            wake.add_done_callback(lambda _: self.sink.notify())
        while True:
            await self._top_up()
            out = Batch()
            self._take(out, max_msgs)
            left = deadline - time.monotonic()
            if len(out) or left <= 0 or (wake is not None and wake.done()):
                return out
            await self.sink.wait(min(left, self.expires))

    def _take(self, out: Batch, max_msgs: int) -> None:
        frames = self.sink.take(max_msgs - len(out))
        if not frames:
            return
        subjects_b, replies, _, payloads = zip(*frames, strict=True)
        if b"" in replies:  # statuses of our pull requests among them (no reply subject)
            data_frames = []
            for frame in frames:
                if frame[1]:
                    data_frames.append(frame)
                else:
                    self._status(frame[2])
            if not data_frames:
                return
            subjects_b, replies, _, payloads = zip(*data_frames, strict=True)
        n = len(replies)
        if sum(map(bytes.count, replies, repeat(b".", n))) == 8 * n:  # the usual 9-token ack subjects
            seqs = [int(r.rsplit(b".", 4)[1]) for r in replies]
        else:
            seqs = [int(_ack_tokens(r)[0]) for r in replies]
        cache = self._subject_cache
        new = set(subjects_b) - cache.keys()
        if new:
            if len(cache) > 10_000:
                cache.clear()
                new = set(subjects_b)
            for subject in new:
                cache[subject] = subject.decode()
        out.seqs += seqs
        out.subjects += map(cache.__getitem__, subjects_b)
        out.datas += payloads
        out.replies += replies
        self._outstanding = max(0, self._outstanding - n)

    def _status(self, hdr: bytes | None) -> None:
        """A status of our pull requests: 404/408 no (more) messages, 409 (max bytes, ...), 100."""
        if hdr is None or not hdr.startswith(_STATUS_PREFIX):
            return
        pending = _pending_of(hdr)
        if pending is not None:
            self._outstanding = max(0, self._outstanding - pending)
        elif hdr[9:12] in (b"408", b"409"):
            self._outstanding = 0  # no count given: make fresh requests
        if pending == self.request and hdr.startswith(b"NATS/1.0 409 Message Size Exceeds"):
            # a request that carried nothing: the next message is larger than a request may carry (the
            # stream allows bigger messages than ours), so let requests carry more
            self.request_bytes = min(2 * self.request_bytes, 32 << 20)

    async def ack_reply(self, reply: bytes) -> None:
        """Ack every message up to the one ``reply`` came with (the consumer's AckPolicy.ALL)."""
        if reply:
            await self.nc.publish(reply.decode(), b"+ACK")

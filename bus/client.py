"""Connecting, stream and consumer setup, and publishing events.

Setup is idempotent: running it twice changes nothing, and an existing stream or consumer whose
configuration conflicts with what the swarm needs is an error that names the difference, never a
silent change.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgspec
import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as jsapi
from nats.js.errors import NotFoundError

from bus import subjects
from bus.errors import BusError, PublishError, StreamConfigConflict
from bus.events import Event, encode

log = logging.getLogger("swarm.bus")

DEFAULT_URL = "nats://127.0.0.1:4222"

T = TypeVar("T")

#: What a JetStream API request raises when the server is briefly away (paused, restarting, overloaded):
#: no answer in time, no responders (503), or "service unavailable". Worth asking again.
TRANSIENT = (nats.errors.NoRespondersError, nats.errors.TimeoutError, nats.js.errors.ServiceUnavailableError)


async def retrying(what: str, call: Callable[[], Awaitable[T]], attempts: int = 7) -> T:
    """``await call()``, asked again with jittered backoff (0.25 s doubling to 8 s, ~30 s in all) while it
    fails with a :data:`TRANSIENT` error; the last attempt's error is raised. ``call`` must be idempotent:
    a request whose answer was lost may have been carried out."""
    for attempt in range(attempts):
        try:
            return await call()
        except TRANSIENT as e:
            if attempt == attempts - 1:
                raise
            delay = min(8.0, 0.25 * 2**attempt) * (0.5 + random.random())
            log.warning("%s failed (%s); again in %.1f s", what, type(e).__name__, delay)
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class BusConfig:
    """Where and how to connect. Credentials come from the environment or files, never from logs.

    Environment: ``SWARM_NATS_URL`` (comma-separated), ``SWARM_NATS_USER``/``SWARM_NATS_PASSWORD``,
    ``SWARM_NATS_TOKEN``, ``SWARM_NATS_CREDS`` (a .creds file), ``SWARM_NATS_CA`` (TLS CA file).
    """

    servers: tuple[str, ...] = (DEFAULT_URL,)
    user: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    creds_file: str | None = None
    tls_ca_file: str | None = None
    name: str = "swarm"

    @classmethod
    def from_env(cls, servers: str | Sequence[str] | None = None, name: str = "swarm") -> BusConfig:
        env = os.environ
        urls = servers if servers is not None else env.get("SWARM_NATS_URL", DEFAULT_URL)
        if isinstance(urls, str):
            urls = [u.strip() for u in urls.split(",") if u.strip()]
        return cls(
            servers=tuple(urls),
            user=env.get("SWARM_NATS_USER") or None,
            password=env.get("SWARM_NATS_PASSWORD") or None,
            token=env.get("SWARM_NATS_TOKEN") or None,
            creds_file=env.get("SWARM_NATS_CREDS") or None,
            tls_ca_file=env.get("SWARM_NATS_CA") or None,
            name=name,
        )


async def connect(
    config: BusConfig | str | Sequence[str] | None = None,
    *,
    name: str | None = None,
    connect_timeout: float = 5.0,
    max_reconnect_attempts: int = -1,
    reconnect_time_wait: float = 0.5,
    initial_wait: float = 0.0,
) -> NATS:
    """Connect to NATS; once connected, reconnect forever (nats-py's jittered wait), logging state changes.

    ``config`` may be a :class:`BusConfig`, a URL, or a list of URLs (other settings from the environment).
    The first connection is retried with backoff for up to ``initial_wait`` seconds while no server answers;
    a refused login fails at once with the server's reason.
    """
    if config is None or isinstance(config, str | list | tuple):
        config = BusConfig.from_env(config)
    assert isinstance(config, BusConfig)
    label = name or config.name

    async def on_error(e: Exception) -> None:
        log.warning("nats %s: %s", label, e)

    async def on_disconnected() -> None:
        log.info("nats %s: disconnected", label)

    async def on_reconnected() -> None:
        log.info("nats %s: reconnected", label)

    opts: dict[str, Any] = dict(
        servers=list(config.servers),
        name=label,
        connect_timeout=connect_timeout,
        allow_reconnect=False,  # switched on once connected: see below
        max_reconnect_attempts=1,  # the first connection: try each server twice, then say so (set below)
        reconnect_time_wait=reconnect_time_wait,
        error_cb=on_error,
        disconnected_cb=on_disconnected,
        reconnected_cb=on_reconnected,
        pending_size=8 * 1024 * 1024,
    )
    if config.user:
        opts["user"], opts["password"] = config.user, config.password
    if config.token:
        opts["token"] = config.token
    if config.creds_file:
        opts["user_credentials"] = config.creds_file
    if config.tls_ca_file:
        import ssl

        opts["tls"] = ssl.create_default_context(cafile=config.tls_ca_file)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + initial_wait
    delay = 0.1
    while True:
        nc = NATS()
        try:
            try:
                await nc.connect(**opts)
            except BaseException:
                await nc.close()  # a failed first connect leaves its socket open otherwise
                raise
            break
        except nats.errors.Error as e:
            if "authorization" in str(e).lower() or "authentication" in str(e).lower():
                who = config.user or ("token/creds" if config.token or config.creds_file else "anonymous")
                raise BusError(
                    f"NATS refused the login as {who} "
                    f"({e}); check SWARM_NATS_USER/SWARM_NATS_PASSWORD or the credentials file"
                ) from e
            if loop.time() >= deadline:
                raise BusError(f"no NATS server answered at {', '.join(config.servers)}: {e}") from e
        except (OSError, TimeoutError) as e:
            if loop.time() >= deadline:
                raise BusError(f"no NATS server answered at {', '.join(config.servers)}: {e!r}") from e
        await asyncio.sleep(delay)
        delay = min(delay * 2, 2.0)
    # nats-py gives up on the first connection only when reconnecting is off; from here on it is on
    nc.options["allow_reconnect"] = True
    nc.options["max_reconnect_attempts"] = max_reconnect_attempts
    return nc


# --------------------------------------------------------------------------------------------------
# stream and consumers


@dataclass(frozen=True)
class StreamSpec:
    """What the swarm needs of the events stream. ``replicas`` is 3 on a 3-server cluster."""

    replicas: int = 1
    duplicate_window: float = 120.0
    max_msg_size: int = 1 << 20

    def config(self) -> jsapi.StreamConfig:
        return jsapi.StreamConfig(
            name=subjects.STREAM,
            subjects=list(subjects.STREAM_SUBJECTS),
            retention=jsapi.RetentionPolicy.LIMITS,
            storage=jsapi.StorageType.FILE,
            num_replicas=self.replicas,
            duplicate_window=self.duplicate_window,
            max_msg_size=self.max_msg_size,
            discard=jsapi.DiscardPolicy.OLD,
        )


def _diff(want: dict[str, Any], have: dict[str, Any]) -> list[str]:
    return [f"{k}: have {have.get(k)!r}, need {v!r}" for k, v in want.items() if have.get(k) != v]


async def ensure_stream(js: JetStreamContext, spec: StreamSpec | None = None) -> jsapi.StreamInfo:
    """Create the events stream, or check that the existing one matches. Idempotent, and retried while the
    server is briefly away (:func:`retrying`): a process starting during a server pause must not die."""
    return await retrying("setting up the events stream", lambda: _ensure_stream(js, spec or StreamSpec()))


async def _ensure_stream(js: JetStreamContext, spec: StreamSpec) -> jsapi.StreamInfo:
    want = spec.config()
    try:
        info = await js.stream_info(subjects.STREAM)
    except NotFoundError:
        return await js.add_stream(want)
    have = info.config
    problems = _diff(
        {
            "subjects": sorted(want.subjects or []),
            "retention": want.retention,
            "storage": want.storage,
            "num_replicas": want.num_replicas,
            "max_msg_size": want.max_msg_size,
        },
        {
            "subjects": sorted(have.subjects or []),
            "retention": have.retention,
            "storage": have.storage,
            "num_replicas": have.num_replicas,
            "max_msg_size": have.max_msg_size,
        },
    )
    if (have.duplicate_window or 0) < spec.duplicate_window:
        problems.append(f"duplicate_window: have {have.duplicate_window}, need >= {spec.duplicate_window}")
    if problems:
        raise StreamConfigConflict(
            f"stream {subjects.STREAM} exists with a conflicting config ({'; '.join(problems)}). "
            f"Nothing was changed. Fix or delete the stream (nats stream rm {subjects.STREAM}) or point "
            "the swarm at another server."
        )
    return info


async def ensure_consumer(js: JetStreamContext, config: jsapi.ConsumerConfig) -> jsapi.ConsumerInfo:
    """Create a durable consumer, or check that the existing one matches. Idempotent, and retried while
    the server is briefly away (:func:`retrying`)."""
    return await retrying(f"setting up consumer {config.durable_name}", lambda: _ensure_consumer(js, config))


async def _ensure_consumer(js: JetStreamContext, config: jsapi.ConsumerConfig) -> jsapi.ConsumerInfo:
    assert config.durable_name
    try:
        info = await js.consumer_info(subjects.STREAM, config.durable_name)
    except NotFoundError:
        return await js.add_consumer(subjects.STREAM, config)
    have = info.config
    keys = ("filter_subject", "ack_policy", "deliver_policy", "ack_wait", "max_deliver", "max_ack_pending")
    want_d = {k: getattr(config, k) for k in keys if getattr(config, k) is not None}
    have_d = {k: getattr(have, k) for k in keys}
    if want_d.get("filter_subject") is None and have.filter_subjects:
        have_d["filter_subject"] = have.filter_subjects
    problems = _diff(want_d, have_d)
    if problems:
        raise StreamConfigConflict(
            f"consumer {config.durable_name} on {subjects.STREAM} exists with a conflicting config "
            f"({'; '.join(problems)}). Nothing was changed; delete it (nats consumer rm {subjects.STREAM} "
            f"{config.durable_name}) to recreate it."
        )
    return info


def work_consumer_config(
    run: str, hw_class: str, *, ack_wait: float = 120.0, max_deliver: int = 5, max_waiting: int = 4096
) -> jsapi.ConsumerConfig:
    """The shared durable pull consumer of one run's work subject for one hardware class.

    Runners renew their lease with ``in_progress()`` about every ``ack_wait / 3``; after ``max_deliver``
    deliveries an item goes to the dead-letter path (ExperimentFinished status=lost). Every idle runner keeps
    a pull request waiting: ``max_waiting`` (JetStream's default is 512) bounds how many the server holds,
    beyond which it refuses them (409) and the refused runners would spin re-asking.
    """
    return jsapi.ConsumerConfig(
        durable_name=subjects.work_consumer(run, hw_class),
        filter_subject=subjects.work(run, hw_class),
        deliver_policy=jsapi.DeliverPolicy.ALL,
        ack_policy=jsapi.AckPolicy.EXPLICIT,
        ack_wait=ack_wait,
        max_deliver=max_deliver,
        max_ack_pending=10_000,
        max_waiting=max_waiting,
    )


def ledger_consumer_config(name: str = subjects.LEDGER_CONSUMER) -> jsapi.ConsumerConfig:
    """The projector's durable consumer: every event of every run, in stream order (acked per batch)."""
    return jsapi.ConsumerConfig(
        durable_name=name,
        deliver_policy=jsapi.DeliverPolicy.ALL,
        ack_policy=jsapi.AckPolicy.ALL,  # one ack per projected batch
        ack_wait=60.0,
        max_deliver=-1,
        max_ack_pending=50_000,
    )


# --------------------------------------------------------------------------------------------------
# publishing


def _check_ack(ack: jsapi.PubAck, event: Event) -> jsapi.PubAck:
    if ack.stream != subjects.STREAM:
        raise PublishError(
            f"{type(event).__name__} {event.event_id} stored in {ack.stream!r}, not {subjects.STREAM}"
        )
    return ack


async def publish(
    js: JetStreamContext, event: Event, *, timeout: float = 5.0, retries: int = 3
) -> jsapi.PubAck:
    """Publish one event and wait for JetStream's ack, retrying on timeouts.

    ``Nats-Msg-Id = event_id``, so a retry of a publish that did land is dropped by the server
    (the ack then says ``duplicate=True``).
    """
    data = encode(event)
    subject = subjects.event_subject(event)
    headers = {"Nats-Msg-Id": event.event_id}
    for attempt in range(retries + 1):
        try:
            ack = await js.publish(
                subject, data, timeout=timeout, stream=subjects.STREAM, headers=dict(headers)
            )
            return _check_ack(ack, event)
        except (TimeoutError, nats.errors.TimeoutError, nats.js.errors.NoStreamResponseError) as e:
            if attempt == retries:
                raise PublishError(
                    f"{type(event).__name__} {event.event_id} on {subject}: no ack after {retries + 1} tries ({e!r}); "
                    "is the server up and the stream created (swarm ledger / ensure_stream)?"
                ) from e
            await asyncio.sleep(min(0.25 * 2**attempt, 2.0))
    raise AssertionError("unreachable")


_ack_decoder = msgspec.json.Decoder(dict[str, Any])
_PUBACK_FIELDS = frozenset({"stream", "seq", "domain", "duplicate"})


def _pub_ack(data: bytes) -> jsapi.PubAck | None:
    """A PubAck from JetStream's reply, or None for an error reply or anything else (then retried)."""
    try:
        resp = _ack_decoder.decode(data)
    except msgspec.DecodeError:
        return None
    if "error" in resp or "stream" not in resp or "seq" not in resp:
        return None
    if resp.keys() <= _PUBACK_FIELDS:
        return jsapi.PubAck(stream=resp["stream"], seq=resp["seq"], domain=resp.get("domain"),
                            duplicate=resp.get("duplicate"))  # fmt: skip
    return jsapi.PubAck.from_response(resp)


_HDR_TAIL = f"\r\n{jsapi.Header.EXPECTED_STREAM.value}: {subjects.STREAM}\r\n\r\n".encode()


async def _send_chunk(nc: NATS, prefix: str, events: Sequence[Event], start: int, stop: int) -> None:
    """Publish ``events[start:stop]`` as one write of HPUB frames (what ``nc.publish`` sends for each,
    without its per-message work: header validation, a command and a flush check per message). Falls
    back to ``nc.publish`` for a message it would refuse or treat specially (while reconnecting, a
    payload over the server's limit, a header value with a line break)."""
    send_command = getattr(nc, "_send_command", None)
    flush = getattr(nc, "_flush_pending", None)
    raw = send_command is not None and flush is not None and nc.is_connected
    reply = prefix.encode()
    frames: list[bytes] = []
    size = 0
    for i in range(start, stop):
        ev = events[i]
        subject, data, eid = subjects.cached_event_subject(ev), encode(ev), ev.event_id
        if not raw or len(data) > nc.max_payload or "\r" in eid or "\n" in eid:
            await nc.publish(subject, data, reply=f"{prefix}.{i}",
                             headers={"Nats-Msg-Id": eid, jsapi.Header.EXPECTED_STREAM: subjects.STREAM})  # fmt: skip
            continue
        hdr = b"NATS/1.0\r\nNats-Msg-Id: " + eid.encode() + _HDR_TAIL
        frames.append(b"HPUB %s %s.%d %d %d\r\n%s%s\r\n" % (
            subject.encode(), reply, i, len(hdr), len(hdr) + len(data), hdr, data))  # fmt: skip
        size += len(data)
    if frames and send_command is not None and flush is not None:
        nc.stats["out_msgs"] += len(frames)
        nc.stats["out_bytes"] += size
        await send_command(b"".join(frames))
        await flush()


async def publish_many(
    js: JetStreamContext, events: Iterable[Event], *, window: int = 4000, timeout: float = 10.0
) -> list[jsapi.PubAck]:
    """Bulk publish: up to ``window`` un-acked publishes in flight, sent in two half-window chunks so
    the next chunk goes out while the acks of the last one come back.

    Each message carries ``Nats-Msg-Id = event_id`` and the expected stream, with a reply subject of
    its own under one inbox subscription (cheaper than a future per message). Every ack is checked;
    publishes that were not acked in ``timeout`` (or got an error reply) are retried one by one with
    :func:`publish` (safe: the msg id makes a duplicate a no-op). Returns the acks in the order of
    ``events``.
    """
    events = list(events)
    n = len(events)
    acks: list[jsapi.PubAck | None] = [None] * n
    if not n:
        return []
    nc = js._nc
    prefix = nc.new_inbox()
    chunk = max(1, window // 2)
    remaining = [min(chunk, n - start) for start in range(0, n, chunk)]
    done = [asyncio.get_running_loop().create_future() for _ in remaining]

    async def on_ack(msg: Msg) -> None:
        try:
            i = int(msg.subject[len(prefix) + 1 :])
        except ValueError:
            return
        if not 0 <= i < n or acks[i] is not None:
            return
        ack = _pub_ack(msg.data) if msg.data else None  # no data: a status reply (no responders)
        if ack is None:
            return
        acks[i] = ack
        c = i // chunk
        remaining[c] -= 1
        if remaining[c] == 0 and not done[c].done():
            done[c].set_result(None)

    sub = await nc.subscribe(prefix + ".*", cb=on_ack)
    try:
        for c, start in enumerate(range(0, n, chunk)):
            if c >= 2:
                await asyncio.wait([done[c - 2]], timeout=timeout)
            await _send_chunk(nc, prefix, events, start, min(start + chunk, n))
        await asyncio.wait(done[-2:], timeout=timeout)
    finally:
        await sub.unsubscribe()
    for i, ack in enumerate(acks):
        acks[i] = _check_ack(ack, events[i]) if ack is not None else await publish(js, events[i], timeout=timeout)
    return [a for a in acks if a is not None]


async def setup(js: JetStreamContext, spec: StreamSpec | None = None) -> None:
    """Everything a fresh server needs: the events stream and the ledger's consumer."""
    await ensure_stream(js, spec)
    await ensure_consumer(js, ledger_consumer_config())

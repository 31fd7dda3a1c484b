"""Logs that travel: each attempt's full log in one JetStream object store bucket, ``SWARM_LOGS``.

A runner calls :func:`put_log` after each attempt and records the key it returns in
``ExperimentFinished.log_ref``; anyone who can reach the bus reads it back with :func:`get_log`
(``swarm logs H --full``, the dashboard), from any machine.

Retention (documented in docs/logs.md; an operator may tune the stream ``OBJ_SWARM_LOGS`` with the nats CLI):

* **per log**: at most :data:`MAX_LOG_BYTES` (4 MiB). A longer log keeps its first quarter and its last
  three quarters with a line in between saying how many bytes were cut: the start shows the configuration,
  the end shows how it ended.
* **per bucket**: logs older than ``ttl_seconds`` (30 days) expire, and the bucket holds at most
  ``max_bytes`` (4 GiB); when full, the *oldest* logs are dropped first (discard-old), so a busy swarm
  always keeps its recent logs. nats-py's own ``create_object_store`` would refuse new logs instead
  (discard-new), which is why the bucket's stream is created here.
* a log whose chunks were dropped reads as :class:`LogNotFound` ("expired"), never as a hang or a
  partial log (the object store's sha-256 digest is checked).

Keys are ``<run>/<hypothesis_id>/<attempt>.log``: readable, one per attempt, so a re-delivered attempt
never overwrites another's log.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from dataclasses import dataclass
from pathlib import Path

from nats.js import JetStreamContext
from nats.js import api as jsapi
from nats.js.errors import APIError, NotFoundError
from nats.js.object_store import ObjectStore

from bus.errors import BusError
from bus.events import check_token

LOG_BUCKET = "SWARM_LOGS"
LOG_STREAM = f"OBJ_{LOG_BUCKET}"  # the object store's stream (nats object store naming)
MAX_LOG_BYTES = 4 << 20
_KEY = re.compile(r"^(?P<run>[A-Za-z0-9_-]{1,64})/(?P<hid>[^/\s]{1,200})/(?P<attempt>\d{1,6})\.log$")


class LogNotFound(BusError):
    """No log under this key: never stored, expired, or dropped when the bucket was full."""


@dataclass(frozen=True)
class LogStoreSpec:
    """Retention of the log bucket (see the module docstring)."""

    ttl_seconds: float = 30 * 86400.0
    max_bytes: int = 4 << 30
    max_log_bytes: int = MAX_LOG_BYTES
    replicas: int = 1

    def stream_config(self) -> jsapi.StreamConfig:
        """The object store's stream, as nats-py builds it, but discarding the oldest logs when full."""
        return jsapi.StreamConfig(
            name=LOG_STREAM,
            description="swarm: full logs of every attempt (bus/logstore.py)",
            subjects=[f"$O.{LOG_BUCKET}.C.>", f"$O.{LOG_BUCKET}.M.>"],
            max_age=self.ttl_seconds,
            max_bytes=self.max_bytes,
            storage=jsapi.StorageType.FILE,
            num_replicas=self.replicas,
            discard=jsapi.DiscardPolicy.OLD,
            allow_rollup_hdrs=True,
            allow_direct=True,
        )


def log_key(run: str, hypothesis_id: str, attempt: int) -> str:
    """The key of one attempt's log: ``<run>/<hypothesis_id>/<attempt>.log``."""
    key = f"{check_token('run', run)}/{hypothesis_id}/{int(attempt)}.log"
    if not _KEY.match(key):
        raise ValueError(
            f"cannot make a log key of hypothesis {hypothesis_id!r}, attempt {attempt!r}: "
            "the id must be 1-200 characters without '/' or spaces and the attempt a number"
        )
    return key


def is_log_key(ref: str) -> bool:
    """Whether a ``log_ref`` names a log in the store (else it is a file path on the runner's machine)."""
    return bool(_KEY.match(ref))


def _head_tail(size: int, limit: int) -> tuple[int, int]:
    """How many bytes of a ``size``-byte log to keep from its start and its end (room left for the marker)."""
    room = max(0, limit - 120)
    return room // 4, room - room // 4


def _marker(cut: int, limit: int) -> bytes:
    return f"\n[... {cut} bytes cut: logs keep at most {limit} bytes (bus/logstore.py) ...]\n".encode()


def bound(data: bytes, limit: int = MAX_LOG_BYTES) -> bytes:
    """``data`` cut to at most ``limit`` bytes: the first quarter and the last three quarters, with a
    line in between saying how many bytes were cut."""
    if len(data) <= limit:
        return data
    head, tail = _head_tail(len(data), limit)
    return data[:head] + _marker(len(data) - head - tail, limit) + data[len(data) - tail :]


async def ensure_log_store(js: JetStreamContext, spec: LogStoreSpec | None = None) -> ObjectStore:
    """The log bucket, created with ``spec``'s retention if missing (an existing one is used as it is,
    so an operator's tuning stays)."""
    try:
        return await js.object_store(LOG_BUCKET)
    except NotFoundError:
        pass
    try:
        await js.add_stream((spec or LogStoreSpec()).stream_config())
    except APIError as e:
        # another process may have created it between our look and our create: use theirs
        try:
            return await js.object_store(LOG_BUCKET)
        except NotFoundError:
            raise BusError(f"could not create the log bucket {LOG_BUCKET}: {e}") from e
    return await js.object_store(LOG_BUCKET)


async def put_log(
    js: JetStreamContext,
    run: str,
    hypothesis_id: str,
    attempt: int,
    log: bytes | str | Path,
    *,
    spec: LogStoreSpec | None = None,
) -> str:
    """Store one attempt's full log (bytes, text, or the path of a log file) and return its key, for
    ``ExperimentFinished.log_ref``. Logs over the size limit are cut (see :func:`bound`). Storing the
    same key again replaces the log."""
    spec = spec or LogStoreSpec()
    key = log_key(run, hypothesis_id, attempt)
    if isinstance(log, Path):
        data = await asyncio.to_thread(read_log_file, log, spec.max_log_bytes)
    else:
        data = bound(_as_bytes(log), spec.max_log_bytes)
    store = await ensure_log_store(js, spec)
    await store.put(key, data, meta=jsapi.ObjectMeta(name=key, description=f"log of {hypothesis_id}"))
    return key


def _as_bytes(log: bytes | str) -> bytes:
    return log.encode("utf-8", "replace") if isinstance(log, str) else bytes(log)


def read_log_file(path: Path, limit: int = MAX_LOG_BYTES) -> bytes:
    """Read a log file as :func:`bound` would cut it, never holding more of it (a runaway log can be huge)."""
    size = path.stat().st_size
    with path.open("rb") as f:
        if size <= limit:
            return f.read()
        head, tail = _head_tail(size, limit)
        first = f.read(head)
        f.seek(size - tail)
        last = f.read(tail)
    return first + _marker(size - head - tail, limit) + last


async def get_log(js: JetStreamContext, run: str, key: str, *, timeout: float = 30.0) -> bytes:
    """The log stored under ``key`` (a ``log_ref``) of ``run``. Raises :class:`LogNotFound` when it is not
    in the store (never stored, expired, or dropped when the bucket was full), ``ValueError`` for a key
    that is not a log key of ``run``."""
    m = _KEY.match(key)
    if m is None:
        raise ValueError(f"{key!r} is not a log key (<run>/<hypothesis_id>/<attempt>.log)")
    if m["run"] != run:
        raise ValueError(f"log {key!r} belongs to run {m['run']!r}, not {run!r}; pass --run {m['run']}")
    try:
        store = await js.object_store(LOG_BUCKET)
        info = await store.get_info(key)
    except NotFoundError as e:
        raise LogNotFound(f"no log {key!r} in the log store (never stored, or expired)") from e
    # Chunks go before their object's metadata, so a full bucket drops them first: check they are all
    # there, else the object store's reader would wait forever for the missing ones.
    chunks = f"$O.{LOG_BUCKET}.C.{info.nuid}"
    si = await js.stream_info(LOG_STREAM, subjects_filter=chunks)
    have = (si.state.subjects or {}).get(chunks, 0) if si.state else 0
    if have < (info.chunks or 0):
        raise LogNotFound(
            f"log {key!r} expired: {have} of its {info.chunks} chunks are left in the log store"
        )
    try:
        result = await asyncio.wait_for(store.get(key), timeout)
    except TimeoutError as e:
        raise LogNotFound(f"log {key!r} could not be read within {timeout:g}s (partly expired?)") from e
    return bytes(result.data or b"")


async def fetch_log(
    js: JetStreamContext, run: str, hypothesis_id: str, attempt: int, *, log_ref: str = "", log_tail: str = ""
) -> tuple[str, str]:
    """The fullest log there is of one attempt, as text, and where it came from: the log store (by
    ``log_ref``, else by the attempt's own key, so a runner that recorded a file path still counts), else
    the runner's file when this is its machine, else ``log_tail`` (what the finish event carried)."""
    keys = [log_ref] if is_log_key(log_ref) else []
    with contextlib.suppress(ValueError):
        keys.append(log_key(run, hypothesis_id, attempt))
    for key in dict.fromkeys(keys):
        try:
            data = await get_log(js, run, key, timeout=10.0)
        except (LogNotFound, ValueError):
            continue
        except Exception as e:  # the bus itself: say so, and show what the event carried
            return (
                log_tail,
                f"the tail from the result event (the log store did not answer: {type(e).__name__})",
            )
        return data.decode("utf-8", "replace"), f"log store {LOG_BUCKET}/{key}"
    local = await asyncio.to_thread(_read_local, log_ref) if log_ref else None
    if local is not None:
        return local.decode("utf-8", "replace"), f"file {log_ref} (this machine)"
    return log_tail, "the tail from the result event (the full log is not in the log store)"


def _read_local(ref: str) -> bytes | None:
    path = Path(ref)
    return read_log_file(path) if path.is_absolute() and path.is_file() else None


def log_permissions(*, write: bool) -> list[str]:
    """Subjects a bus user must be allowed to publish on to read logs (``write``: also to store them and
    create the bucket). Used by :mod:`bus.security` for its roles; replies come on ``_INBOX.>``."""
    read = [
        f"$JS.API.STREAM.INFO.{LOG_STREAM}",
        f"$JS.API.STREAM.MSG.GET.{LOG_STREAM}",
        f"$JS.API.DIRECT.GET.{LOG_STREAM}.>",
        f"$JS.API.CONSUMER.CREATE.{LOG_STREAM}",  # the object store reads chunks with an ordered consumer
        f"$JS.API.CONSUMER.CREATE.{LOG_STREAM}.>",
        f"$JS.API.CONSUMER.DELETE.{LOG_STREAM}.>",
        f"$JS.FC.{LOG_STREAM}.>",  # its flow-control replies
        "$JS.API.STREAM.NAMES",  # nats-py looks the stream up by subject before subscribing
    ]
    if not write:
        return read
    return [
        *read,
        f"$O.{LOG_BUCKET}.>",
        f"$JS.API.STREAM.CREATE.{LOG_STREAM}",
        f"$JS.API.STREAM.PURGE.{LOG_STREAM}",
    ]

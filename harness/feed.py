"""Training data served batch by batch: one row order for by-hand runs and the runner, and in the runner a
trusted server that counts tokens and times the training.

Under the runner the training process gets no token files: ``prepare.make_dataloader`` asks the runner's
:class:`FeedServer` for each batch over a Unix socket (``SWARM_FEED``). The server is the runner's own code,
so what it records is not train.py's claim:

* ``tokens`` budget (CPU default): it serves exactly the budget's tokens, then answers "end". Results are
  deterministic per seed, so a candidate can be compared with its reference on the same seeds.
* ``seconds`` budget (GPU default, like autoresearch): the clock starts when the first counted batch is
  asked for (process start-up, imports and the declared warm-up batches — compile — are not counted) and
  the server stops serving at budget + tolerance; the runner compares the process's end with the same
  clock, so a train.py that keeps training on batches it cached ends ``over_budget``.

Row order: rows of ``seq_len + 1`` tokens start at a document's BOS; each epoch visits every row start once
in a seeded permutation (:func:`iter_rows`). By hand (no runner) the loader reads the files and walks the
same order, so a by-hand run and a runner run with one seed see the same batches.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from harness import wire

TOKEN_DTYPE = np.uint16
UNITS = ("seconds", "tokens")


class FeedError(RuntimeError):
    """The feed refused a request (it says why) or went away."""


def row_starts(tokens: np.ndarray, bos: int, seq_len: int) -> np.ndarray:
    """Positions of BOS tokens that have a whole row (seq_len + 1 tokens) after them."""
    return np.flatnonzero(tokens[: max(tokens.size - seq_len - 1, 0) + 1] == bos)


def iter_rows(tokens: np.ndarray, starts: np.ndarray, seq_len: int, seed: int) -> Iterator[tuple[int, int]]:
    """(row start, epoch) forever: every row start once per epoch, in a permutation seeded by ``seed``."""
    rng = np.random.default_rng(seed)
    epoch = 0
    while True:
        for s in starts[rng.permutation(starts.size)]:
            yield int(s), epoch
        epoch += 1


def take_batch(tokens: np.ndarray, rows: Iterator[tuple[int, int]], batch_size: int,
               seq_len: int) -> tuple[np.ndarray, int]:
    """The next ``batch_size`` rows of ``rows`` as a (B, seq_len + 1) array, and the epoch of the last."""
    picked = [next(rows) for _ in range(batch_size)]
    starts = np.fromiter((s for s, _ in picked), dtype=np.int64, count=batch_size)
    return tokens[starts[:, None] + np.arange(seq_len + 1)].astype(TOKEN_DTYPE), picked[-1][1]


# --------------------------------------------------------------------------------------------------
# the trusted server (in the runner)


@dataclasses.dataclass(frozen=True)
class Budget:
    """What a training step may use: ``amount`` seconds of training or tokens of data."""

    unit: str
    amount: float

    def __post_init__(self) -> None:
        if self.unit not in UNITS:
            raise ValueError(f"unknown budget unit {self.unit!r}: use one of {UNITS}")
        if not self.amount > 0:
            raise ValueError(f"budget must be > 0, got {self.amount}")

    def __str__(self) -> str:
        return f"{self.amount:g} s" if self.unit == "seconds" else f"{int(self.amount):,} tokens"


@dataclasses.dataclass
class FeedStats:
    """What the feed saw, in the runner's clock (time.monotonic)."""

    batches: int = 0
    tokens: int = 0  # every token served (inputs)
    counted_tokens: int = 0  # tokens after the warm-up batches
    warmup_batches: int = 0
    first_request: float | None = None
    counted_start: float | None = None  # the budget's clock starts here
    last_request: float | None = None
    ended: str = ""  # why the feed said "end" ("" while it has not)
    refused: str = ""  # a request it refused, if any
    seq_len: int = 0
    batch_size: int = 0


class FeedServer:
    """Serves batches on a Unix socket until the budget is used (see the module docstring).

    ``max_warmup_batches`` bounds what a train.py may declare as warm-up (0 on CPU). ``tolerance`` is
    the grace after a seconds budget before the feed stops serving. One thread per connection; all
    connections share one row order and one budget.
    """

    def __init__(self, path: str | Path, tokens: np.ndarray, bos: int, *, budget: Budget, seed: int,
                 max_seq_len: int, max_warmup_batches: int = 0, tolerance: float = 0.0,
                 max_batch_tokens: int = 1 << 22) -> None:
        self.path = str(path)
        self.tokens, self.bos, self.budget, self.seed = tokens, bos, budget, seed
        self.max_seq_len, self.max_warmup, self.tolerance = max_seq_len, max_warmup_batches, tolerance
        self.max_batch_tokens = max_batch_tokens
        self.stats = FeedStats()
        self._lock = threading.Lock()
        self._rows: Iterator[tuple[int, int]] | None = None
        self._sock: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._closed = threading.Event()

    def start(self) -> FeedServer:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(self.path)
        os.chmod(self.path, 0o666)  # the sandboxed step may run as another user
        sock.listen(8)
        self._sock = sock
        t = threading.Thread(target=self._accept, name="swarm-feed", daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def close(self) -> FeedStats:
        self._closed.set()
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        for t in self._threads:
            t.join(timeout=2)
        return self.stats

    def __enter__(self) -> FeedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept(self) -> None:
        assert self._sock is not None
        while not self._closed.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(conn,), name="swarm-feed-conn", daemon=True)
            t.start()
            self._threads.append(t)

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            while not self._closed.is_set():
                try:
                    kind, header, _ = wire.recv(conn, max_payload=0)
                except (wire.WireError, OSError):
                    return
                try:
                    if kind != b"R":
                        raise FeedError(f"unknown request kind {kind!r}")
                    reply = self._batch(header)
                except FeedError as e:
                    with self._lock:
                        self.stats.refused = self.stats.refused or str(e)
                    with contextlib.suppress(OSError):
                        wire.send(conn, b"F", {"error": str(e)})
                    return
                try:
                    if reply is None:
                        wire.send(conn, b"E", {"reason": self.stats.ended})
                    else:
                        rows, epoch = reply
                        wire.send(conn, b"D", {"epoch": epoch, "rows": rows.shape[0], "cols": rows.shape[1]},
                                  rows.data)
                except OSError:
                    return

    def _batch(self, header: dict[str, Any]) -> tuple[np.ndarray, int] | None:
        now = time.monotonic()
        try:
            batch_size, seq_len = int(header["batch_size"]), int(header["seq_len"])
            warmup = int(header.get("warmup_batches", 0))
        except (KeyError, TypeError, ValueError) as e:
            raise FeedError(f"a batch request needs integer batch_size and seq_len ({e})") from e
        with self._lock:
            st = self.stats
            if st.first_request is None:
                if not (1 <= seq_len <= self.max_seq_len):
                    raise FeedError(f"seq_len {seq_len} outside 1..{self.max_seq_len} (prepare.MAX_SEQ_LEN)")
                if batch_size < 1 or batch_size * seq_len > self.max_batch_tokens:
                    raise FeedError(f"batch of {batch_size} x {seq_len} tokens outside 1..{self.max_batch_tokens}")
                starts = row_starts(self.tokens, self.bos, seq_len)
                if starts.size < batch_size:
                    raise FeedError(f"training split too small: {starts.size} row starts for batch {batch_size}")
                self._rows = iter_rows(self.tokens, starts, seq_len, self.seed)
                st.first_request, st.seq_len, st.batch_size = now, seq_len, batch_size
                st.warmup_batches = max(0, min(warmup, self.max_warmup))
            elif seq_len != st.seq_len:
                raise FeedError(f"seq_len changed from {st.seq_len} to {seq_len}: one row length per run")
            elif batch_size < 1 or batch_size * seq_len > self.max_batch_tokens:
                raise FeedError(f"batch of {batch_size} x {seq_len} tokens outside 1..{self.max_batch_tokens}")
            counted = st.batches >= st.warmup_batches
            if counted and st.counted_start is None:
                st.counted_start = now
            if st.ended:
                return None
            if counted and self.budget.unit == "tokens" and st.counted_tokens + batch_size * seq_len > self.budget.amount:
                st.ended = f"token budget of {int(self.budget.amount):,} used"
                return None
            if (counted and self.budget.unit == "seconds" and st.counted_start is not None
                    and now - st.counted_start > self.budget.amount + self.tolerance):
                st.ended = f"time budget of {self.budget.amount:g} s (+{self.tolerance:g} s) used"
                return None
            assert self._rows is not None
            rows, epoch = take_batch(self.tokens, self._rows, batch_size, seq_len)
            st.batches += 1
            st.tokens += batch_size * seq_len
            if counted:
                st.counted_tokens += batch_size * seq_len
            st.last_request = now
            return rows, epoch


# --------------------------------------------------------------------------------------------------
# the client (in the training process)


def feed_batches(path: str, batch_size: int, seq_len: int, warmup_batches: int = 0) -> Iterator[tuple[np.ndarray, int]]:
    """(rows, epoch) from the runner's feed until it says the budget is used. Raises :class:`FeedError`
    when it refuses a request."""
    sock = wire.connect(path, timeout=600)
    with sock:
        first = True
        while True:
            header: dict[str, Any] = {"batch_size": batch_size, "seq_len": seq_len}
            if first:
                header["warmup_batches"] = warmup_batches
                first = False
            wire.send(sock, b"R", header)
            kind, head, payload = wire.recv(sock, max_payload=batch_size * (seq_len + 1) * 2)
            if kind == b"E":
                return
            if kind == b"F":
                raise FeedError(f"the runner's feed refused the request: {head.get('error')}")
            if kind != b"D":
                raise FeedError(f"unexpected reply {kind!r} from the feed")
            rows = np.frombuffer(payload, dtype=TOKEN_DTYPE).reshape(int(head["rows"]), int(head["cols"]))
            yield rows, int(head["epoch"])

"""The trusted evaluation, split across processes (do not change: this is the metric).

* A **model process** (:func:`harness.model_server.serve`, run as ``python -m harness.model_server``)
  imports train.py, builds the model with its ``build_model(config)``, loads the saved weights and answers
  one request: "here are input rows, give me logits". It holds the weights and the inputs it is sent — no
  targets, no validation files or their paths, no result file. Under the runner it runs in the sandbox.
* The **trusted side** (:class:`TrustedEvaluator`) imports no agent code (not even torch on CPU). It holds
  the pinned validation slice, sends input rows, checks every reply (shape, dtype, finite), computes the
  float32 log-softmax and the bits per byte itself, and writes the result where no model process can.

Causality is checked on the scored data. For a random sample of the validation rows it makes a *twin*: the
same row up to a random cut, then real validation text from elsewhere. A causal model gives a twin and its
original the same logits up to the cut; a model that looks at future tokens near the cut does not. The rows
are split between :data:`SHARDS` model processes that cannot reach each other (each its own sandbox, no
shared writable file system, no network), and a twin always goes to another process than its original: a
model that remembers the rows it was asked about and replays its answers for a shared prefix never sees both
rows of a pair, so it cannot keep its answers consistent; and it cannot tell a checked row from the rest.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from harness import wire

CHECK_FRACTION = 0.12  # twins per scored row (cost: that fraction of extra forward work)
MIN_CHECKS = 6
SHARDS = 2  # model processes per evaluation: a twin and its original never meet in one
CHECK_WINDOW = 4  # logits compared at the cut and the positions just before it
TOLERANCE = {"cpu": 1e-4, "cuda": 3e-2}  # of (1 + max |logit|): float32 on CPU, bf16 autocast on CUDA
REPLY_TIMEOUT = 600.0  # seconds the trusted side waits for one batch of logits


@dataclasses.dataclass
class EvalResult:
    val_bpb: float | None
    causal: bool
    status: str  # ok | noncausal | error
    reason: str
    eval_tokens: int
    eval_seconds: float
    num_params: int
    checks: int = 0  # twin rows compared
    check_seconds: float = 0.0  # share of the model's time spent on twins (estimated by rows)
    check_worst: float = 0.0  # largest twin/original logit difference, relative to the tolerance's scale

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))


def eval_rows(tokens: np.ndarray, bos: int, seq_len: int, token_bytes: np.ndarray,
              eval_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """The fixed validation slice: documents in order, packed into rows of seq_len+1 that start with BOS.

    A document that does not fit the rest of a row starts the next row (cropped to one row); the tail
    of a row is padding with target -1 (not scored). Stops once eval_tokens tokens are scored.
    """
    bounds = np.append(np.flatnonzero(tokens == bos), tokens.size)
    rows: list[np.ndarray] = []
    cur: list[np.ndarray] = []
    fill = scored = 0

    def flush() -> None:
        nonlocal cur, fill, scored
        row = np.full(seq_len + 1, -1, dtype=np.int64)
        row[:fill] = np.concatenate(cur)
        scored += int((token_bytes[np.maximum(row[1:fill], 0)] > 0).sum())
        rows.append(row)
        cur, fill = [], 0

    for a, b in itertools.pairwise(bounds):
        doc = np.asarray(tokens[a:b], dtype=np.int64)[: seq_len + 1]
        if fill + doc.size > seq_len + 1:
            flush()
            if scored >= eval_tokens:
                break
        cur.append(doc)
        fill += doc.size
    if cur and scored < eval_tokens:
        flush()
    if not rows:
        raise ValueError("validation split is empty")
    full = np.stack(rows)
    inputs = np.where(full[:, :-1] < 0, bos, full[:, :-1])
    return inputs, full[:, 1:]


@dataclasses.dataclass(frozen=True)
class Twin:
    original: int  # row index in the validation slice
    cut: int  # positions <= cut are shared with the original; cut + 1 onwards come from the donor


def plan_twins(inputs: np.ndarray, rng: np.random.Generator, fraction: float = CHECK_FRACTION
               ) -> tuple[np.ndarray, list[Twin]]:
    """Twin rows for a random sample of ``inputs`` (see the module docstring): (twin inputs, what each is)."""
    n, T = inputs.shape
    if n < 2 or T < 4:
        return np.zeros((0, T), dtype=inputs.dtype), []
    k = min(n, max(MIN_CHECKS, round(fraction * n)))
    rows, twins = [], []
    for orig in rng.choice(n, size=k, replace=False):
        for _ in range(20):  # find a donor whose text differs right after the cut
            donor = int(rng.integers(n))
            cut = int(rng.integers(1, T - 1))
            if donor != orig and inputs[donor, cut + 1] != inputs[orig, cut + 1]:
                rows.append(np.concatenate([inputs[orig, : cut + 1], inputs[donor, cut + 1:]]))
                twins.append(Twin(int(orig), cut))
                break
    return (np.stack(rows) if rows else np.zeros((0, T), dtype=inputs.dtype)), twins


def assign_shards(n_orig: int, twins: list[Twin], shards: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Row indices (originals 0..n_orig-1, then twins) per model process, each in random order: originals
    spread evenly, every twin in another process than its original."""
    if shards < 2:
        return [rng.permutation(n_orig + len(twins))]
    of_orig = rng.permutation(np.arange(n_orig) % shards)
    parts: list[list[int]] = [[] for _ in range(shards)]
    for i in range(n_orig):
        parts[int(of_orig[i])].append(i)
    for j, t in enumerate(twins):
        others = [s for s in range(shards) if s != of_orig[t.original]]
        parts[int(rng.choice(others))].append(n_orig + j)
    return [rng.permutation(np.asarray(p, dtype=np.int64)) for p in parts]


def _log_softmax_at(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """-log p(target) per position, float32 arithmetic with a float64 result (targets clamped >= 0)."""
    m = logits.max(axis=-1, keepdims=True)
    lse = np.log(np.exp(logits - m).sum(axis=-1, dtype=np.float32)) + m[..., 0]
    picked = np.take_along_axis(logits, np.maximum(targets, 0)[..., None], axis=-1)[..., 0]
    return (lse - picked).astype(np.float64)


class EvaluationFailed(Exception):
    """The model process misbehaved (the message says how): a classified failure, not a runner bug."""


class TrustedEvaluator:
    """The trusted side: holds the validation slice, asks model processes for logits, scores them.

    ``seed`` draws the twins, the split between model processes and the row order (the runner varies it
    per evaluation). Call :meth:`run` with one connected socket per model process (``shards`` of them).
    """

    def __init__(self, val_dir: str | Path, *, seq_len: int, eval_tokens: int, batch_size: int, seed: int,
                 device: str = "cpu", check_fraction: float = CHECK_FRACTION, shards: int = SHARDS) -> None:
        val_dir = Path(val_dir)
        meta = json.loads((val_dir / "meta.json").read_text())
        self.vocab, bos = int(meta["vocab_size"]), int(meta["bos_id"])
        self.token_bytes = np.load(val_dir / "token_bytes.npy").astype(np.int64)
        shard_files = sorted(val_dir.glob("shard_*.bin"))
        if not shard_files:
            raise FileNotFoundError(f"no token shards in {val_dir}; prepare the data first")
        tokens = np.concatenate([np.fromfile(s, dtype=np.uint16) for s in shard_files])
        self.inputs, self.targets = eval_rows(tokens, bos, seq_len, self.token_bytes, eval_tokens)
        rng = np.random.default_rng(seed)
        twin_inputs, self.twins = plan_twins(self.inputs, rng, check_fraction)
        self.all_inputs = np.concatenate([self.inputs, twin_inputs]).astype(np.int32)
        self.parts = assign_shards(len(self.inputs), self.twins, shards, rng)
        self.shards = len(self.parts)
        self.batch_size, self.device = batch_size, device
        self.tolerance = TOLERANCE["cuda" if device.startswith("cuda") else "cpu"]
        self.reply_timeout = REPLY_TIMEOUT

    def run(self, socks: list[socket.socket], reply_timeout: float = REPLY_TIMEOUT) -> EvalResult:
        """Evaluate with the model processes at the other ends of ``socks`` (one per shard); each must answer
        each batch within ``reply_timeout`` seconds."""
        t0 = time.monotonic()
        n_params = 0
        self.reply_timeout = reply_timeout
        if len(socks) != self.shards:
            raise ValueError(f"{len(socks)} model processes for {self.shards} shards")
        window: dict[int, np.ndarray] = {}
        nats, nbytes = 0.0, 0
        try:
            for k, (sock, rows) in enumerate(zip(socks, self.parts, strict=True)):
                sock.settimeout(reply_timeout)
                kind, head, _ = self._recv(sock, 0, "its hello", k)
                if kind == b"E":
                    raise EvaluationFailed(str(head.get("error", "the model process failed"))[:2000])
                if kind != b"H":
                    raise EvaluationFailed(f"model process {k} began with {kind!r}, not a hello")
                n_params = int(head.get("num_params") or 0)
                part_nats, part_bytes = self._score(sock, rows, window, k)
                nats, nbytes = nats + part_nats, nbytes + part_bytes
                with contextlib.suppress(OSError):
                    wire.send(sock, b"Q")
            worst = self._compare(window)
        except EvaluationFailed as e:
            return EvalResult(None, False, "error", str(e), 0, round(time.monotonic() - t0, 3), n_params)
        except _NonCausal as e:
            return EvalResult(None, False, "noncausal", str(e), 0, round(time.monotonic() - t0, 3), n_params,
                              checks=len(self.twins))
        scored = int((self.token_bytes[np.maximum(self.targets, 0)] * (self.targets >= 0) > 0).sum())
        share = len(self.twins) / max(1, len(self.all_inputs))
        secs = round(time.monotonic() - t0, 3)
        return EvalResult(nats / (math.log(2) * nbytes), True, "ok", "", scored, secs, n_params,
                          checks=len(self.twins), check_seconds=round(secs * share, 3), check_worst=worst)

    def _recv(self, sock: socket.socket, max_payload: int, what: str, k: int) -> tuple[bytes, dict[str, Any], bytearray]:
        try:
            return wire.recv(sock, max_payload)
        except TimeoutError as e:
            raise EvaluationFailed(f"model process {k} gave no {what} within {self.reply_timeout:.0f} s") from e
        except (wire.WireError, OSError) as e:
            raise EvaluationFailed(f"model process {k} died or hung up while sending {what} ({e})") from e

    def _score(self, sock: socket.socket, rows: np.ndarray, window: dict[int, np.ndarray], k: int) -> tuple[float, int]:
        n_orig, T, V = len(self.inputs), self.inputs.shape[1], self.vocab
        checked = {t.original: t for t in self.twins} | {n_orig + i: t for i, t in enumerate(self.twins)}
        nats, nbytes = 0.0, 0
        for b in range(0, len(rows), self.batch_size):
            idx = rows[b: b + self.batch_size]
            x = self.all_inputs[idx]
            try:
                wire.send(sock, b"X", {"rows": len(idx), "cols": T}, x.data)
            except OSError as e:
                raise EvaluationFailed(f"model process {k} hung up ({e})") from e
            kind, head, payload = self._recv(sock, len(idx) * T * V * 4, "logits", k)
            if kind == b"E":
                raise EvaluationFailed(str(head.get("error", "the model process failed"))[:2000])
            if kind != b"L":
                raise EvaluationFailed(f"model process {k} answered {kind!r} instead of logits")
            if (head.get("rows"), head.get("cols"), head.get("vocab"), head.get("dtype")) != (len(idx), T, V, "float32") \
                    or len(payload) != len(idx) * T * V * 4:
                raise EvaluationFailed(
                    f"model(idx) returned logits of shape ({head.get('rows')}, {head.get('cols')}, {head.get('vocab')}) "
                    f"and dtype {head.get('dtype')}, expected ({len(idx)}, {T}, {V}) (batch, time, vocab)")
            logits = np.frombuffer(payload, dtype=np.float32).reshape(len(idx), T, V)
            if not np.isfinite(logits).all():
                raise EvaluationFailed("model(idx) returned NaN or infinite logits")
            for j, row in enumerate(idx):
                check = checked.get(int(row))
                if check is not None:
                    lo = max(0, check.cut - CHECK_WINDOW + 1)
                    window[int(row)] = logits[j, lo: check.cut + 1].copy()
            scored_idx = [j for j, row in enumerate(idx) if row < n_orig]
            if scored_idx:
                y = self.targets[idx[scored_idx]]
                nll = _log_softmax_at(logits[scored_idx], y)
                w = self.token_bytes[np.maximum(y, 0)] * (y >= 0)
                nats += float((nll * (w > 0)).sum())
                nbytes += int(w.sum())
        return nats, nbytes

    def _compare(self, window: dict[int, np.ndarray]) -> float:
        n_orig = len(self.inputs)
        worst = 0.0
        bad = []
        for i, t in enumerate(self.twins):
            a, b = window[t.original], window[n_orig + i]
            scale = 1.0 + float(np.abs(a).max())
            diff = float(np.abs(a - b).max())
            worst = max(worst, diff / scale)
            if diff > self.tolerance * scale:
                bad.append((t, diff, self.tolerance * scale))
        if bad:
            t, diff, tol = bad[0]
            raise _NonCausal(
                f"{len(bad)} of {len(self.twins)} causality checks failed: changing the tokens after position "
                f"{t.cut} of a validation row changed its logits at positions <= {t.cut} by {diff:.3g} "
                f"(tolerance {tol:.3g}): the model sees the future")
        return worst


class _NonCausal(Exception):
    pass


def listen(path: str | Path) -> socket.socket:
    """A Unix socket the model process can connect to (world-connectable: it may run as another user)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    os.chmod(path, 0o666)
    sock.listen(1)
    return sock


def accept(server: socket.socket, timeout: float) -> socket.socket:
    server.settimeout(timeout)
    try:
        conn, _ = server.accept()
    except TimeoutError as e:
        raise EvaluationFailed(f"the model process did not connect within {timeout:.0f} s") from e
    return conn


# --------------------------------------------------------------------------------------------------
# by hand: both sides on this machine, the model process unsandboxed (the runner sandboxes it)


def evaluate(train_py: str | Path, model_dir: str | Path, val_dir: str | Path, *, seq_len: int,
             eval_tokens: int, batch_size: int, seed: int = 0, device: str | None = None,
             python: str | None = None) -> EvalResult:
    """Score saved weights: model processes for train.py's model, this process for the scoring."""
    t0 = time.monotonic()
    train_py, model_dir = Path(train_py).resolve(), Path(model_dir).resolve()
    for need in (train_py, model_dir / "model.pt", model_dir / "config.json"):
        if not need.is_file():
            raise FileNotFoundError(f"{need} does not exist: nothing to evaluate (train first, or fix the path)")
    trusted = TrustedEvaluator(val_dir, seq_len=seq_len, eval_tokens=eval_tokens, batch_size=batch_size,
                               seed=seed, device=device or "cpu")
    env = {k: v for k, v in os.environ.items() if k not in ("SWARM_VAL_DIR", "SWARM_FEED")}
    procs: list[subprocess.Popen[str]] = []
    outs: list[list[str]] = []
    readers: list[threading.Thread] = []
    with tempfile.TemporaryDirectory(prefix="swarm-eval-") as tmp:
        servers = [listen(Path(tmp) / f"model-{k}.sock") for k in range(trusted.shards)]
        for k in range(trusted.shards):
            cmd = [python or sys.executable, "-m", "harness.model_server", "--train-py", str(train_py),
                   "--model-dir", str(model_dir), "--socket", str(Path(tmp) / f"model-{k}.sock")]
            procs.append(subprocess.Popen(cmd + (["--device", device] if device else []), cwd=train_py.parent,
                                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
            out: list[str] = []
            outs.append(out)
            readers.append(threading.Thread(target=lambda p=procs[-1], o=out: o.extend(p.stdout or []), daemon=True))
            readers[-1].start()
        conns: list[socket.socket] = []
        try:
            conns = [accept(srv, timeout=300) for srv in servers]
            result = trusted.run(conns)
        except EvaluationFailed as e:
            result = EvalResult(None, False, "error", str(e), 0, 0.0, 0)
        finally:
            for c in conns:
                c.close()
            for srv in servers:
                srv.close()
            for proc in procs:
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            for t in readers:
                t.join(timeout=5)
            for proc in procs:
                if proc.stdout is not None:
                    proc.stdout.close()
    failed = [(p.returncode, "".join(o)[-1500:].strip()) for p, o in zip(procs, outs, strict=True) if p.returncode]
    if result.status == "error" and failed:
        code, tail = failed[0]
        result.reason += f" (model process exit {code}{': ' + tail if tail else ''})"
    result.eval_seconds = round(time.monotonic() - t0, 3)
    return result

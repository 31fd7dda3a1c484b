"""
The fixed half of the experiment harness: data, tokenizer, loader and the trusted evaluation.

Agents never edit this file. The runner sets the budget and the data location through environment
variables that this module reads; train.py only reads the resulting constants.

    python prepare.py [--profile cpu|gpu] [--dataset climbmix|fineweb-edu|offline [--num-shards N] [--base-url URL]]
                      [--corpus DIR]
    python prepare.py evaluate --train-py PATH --model-dir DIR [--val-dir DIR] [--json-out FILE]

Layout of one prepared dataset (the val/ directory is a separate path the runner can hide):

    $SWARM_CACHE_DIR/data/<dataset_fingerprint>/
        trainview/   train/shard_00000.bin ..., tokenizer.json, token_bytes.npy, meta.json   (SWARM_DATA_DIR)
        val/         shard_00000.bin, token_bytes.npy, meta.json                             (SWARM_VAL_DIR)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import hashlib
import itertools
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from harness import evaluation as _evaluation
from harness.errors import PrepareError
from harness.feed import Budget, feed_batches, iter_rows, row_starts, take_batch
from harness.sources import (
    OFFLINE_VAL_DIRS as OFFLINE_VAL_DIRS,  # re-exported: prepare.py is the harness's face
)
from harness.sources import (
    VAL_PERCENT as VAL_PERCENT,  # re-exported: prepare.py is the harness's face
)
from harness.sources import (
    Source,
    _read_parquet_texts,
    _sha256_file,
    _split_text,
    corpus_source,
    offline_source,
)
from harness.sources import (
    _is_val as _is_val,  # re-exported: prepare.py is the harness's face
)
from harness.tokenizer import (
    BOS_TOKEN as BOS_TOKEN,  # re-exported: prepare.py is the harness's face
)
from harness.tokenizer import (
    TOKEN_DTYPE,
    _bos_id,
    _encode_docs,
    token_byte_lengths,
    train_tokenizer,
)
from harness.tokenizer import (
    TOKENIZER_MAX_CHARS as TOKENIZER_MAX_CHARS,  # re-exported: prepare.py is the harness's face
)
from harness.tokenizer import (
    Tokenizer as Tokenizer,  # re-exported: prepare.py is the harness's face
)

if TYPE_CHECKING:
    import torch

# ---------------------------------------------------------------------------
# Fixed constants (do not change: results are only comparable while these hold)
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ProfileSpec:
    budget_unit: str  # "seconds" of training (warm-up steps excluded) or "tokens" of training data
    budget: float  # how many
    max_seq_len: int  # tokens per row (context length)
    vocab_size: int  # BPE vocabulary, BOS included
    eval_tokens: int  # scored validation tokens (capped by what the val split holds)
    eval_batch_size: int  # rows per evaluation forward
    doc_chars: int  # documents are cut at line boundaries into pieces of at most this many chars
    corpus_max_bytes: int  # offline corpus cap for the training split (0 = no cap)
    seed: int  # default training seed
    excluded_warmup_steps: int  # first steps (compile, allocator warm-up) not counted in the budget
    wall_factor: float  # tokens budgets: the runner's wall-clock cap, as a multiple of the baseline's time


PROFILES: dict[str, ProfileSpec] = {
    # 2 CPU cores: a budget in tokens, not seconds. A wall-clock budget on shared CPUs is noise (steps vary
    # with load: σ ≈ 0.035 bpb between identical runs); a token budget makes a run deterministic per seed,
    # so a candidate is compared with its reference on the same seeds. The runner still caps the wall time
    # (wall_factor × the baseline's, measured at calibration), so a model may not simply grow without limit.
    # No excluded warm-up step (nothing compiles on CPU).
    "cpu": ProfileSpec("tokens", 2**16, 256, 2048, 2**14, 16, 1024, 8_000_000, 0, 0, 3.0),
    # one H100: the autoresearch-sized default, a wall-clock budget (GPU timing is steady)
    "gpu": ProfileSpec("seconds", 300.0, 2048, 8192, 10 * 2**19, 32, 8192, 0, 0, 10, 0.0),
}
PREPARE_VERSION = 2  # bump when the preparation changes what a fingerprint covers
DOWNLOAD_BACKOFF = 1.0  # seconds before the first retry, doubling after each

DATASETS: dict[str, dict[str, Any]] = {
    # parquet shards with a "text" column; the last shard is the pinned validation shard; default_shards:
    # training shards when --num-shards is not given (autoresearch's prepare.py downloads 10)
    "fineweb-edu": {
        "base_url": "https://huggingface.co/datasets/karpathy/fineweb-edu-100b-shuffle/resolve/main",
        "max_shard": 1822,
        "default_shards": 10,
    },
    "climbmix": {
        "base_url": "https://huggingface.co/datasets/karpathy/climbmix-400b-shuffle/resolve/main",
        "max_shard": 6542,
        "default_shards": 10,
    },
}
SHARD_NAME = "shard_{:05d}.parquet"
OFFLINE_DATASET = "offline"  # --dataset offline: the offline corpus by name (no download is tried)
# The data a profile trains on when none is named. gpu: autoresearch's (climbmix parquet shards, the pinned
# validation shard 06542; the profile's 8192-token BPE), where it can be downloaded, else the offline corpus
# with a message saying so (see choose_source). cpu: the offline corpus (tests and CI have no network).
DEFAULT_DATASET = {"cpu": OFFLINE_DATASET, "gpu": "climbmix"}
DEFAULT_PROBE_RETRIES = 2  # download attempts of a default dataset before falling back (an offline node)


# ---------------------------------------------------------------------------
# Environment: the only way to change the constants (the runner sets these)
# ---------------------------------------------------------------------------


def resolve_profile(profile: str | None = None) -> str:
    """The profile: the argument, else SWARM_PROFILE, else gpu when CUDA is available."""
    name = profile or os.environ.get("SWARM_PROFILE")
    if not name:
        import torch

        name = "gpu" if torch.cuda.is_available() else "cpu"
    if name not in PROFILES:
        raise PrepareError(f"unknown profile {name!r}; use one of {sorted(PROFILES)}")
    return name


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


def cache_dir() -> Path:
    return Path(os.environ.get("SWARM_CACHE_DIR") or Path.home() / ".cache" / "swarm")


def __getattr__(name: str) -> Any:
    # Module constants computed from the environment on access, so importing stays free of work.
    if name == "PROFILE":
        return resolve_profile()
    if name not in _ENV_CONSTANTS:
        raise AttributeError(f"module 'prepare' has no attribute {name!r}")
    spec = PROFILES[resolve_profile()]
    values: dict[str, Any] = {
        "BUDGET_UNIT": lambda: budget(None).unit,
        "BUDGET": lambda: budget(None).amount,
        "MAX_SEQ_LEN": lambda: _env_int("SWARM_MAX_SEQ_LEN", spec.max_seq_len),
        "SEED": lambda: _env_int("SWARM_SEED", spec.seed),
        "EVAL_TOKENS": lambda: _env_int("SWARM_EVAL_TOKENS", spec.eval_tokens),
        "EXCLUDED_WARMUP_STEPS": lambda: spec.excluded_warmup_steps,
        "RUNNER_MODE": lambda: os.environ.get("SWARM_MODE") == "runner",
        # peak dense bf16 FLOP/s of the runner's hardware class, for MFU (runner.hardware); 0 = unknown
        "PEAK_FLOPS": lambda: _env_float("SWARM_PEAK_FLOPS", 0.0),
        "OUT_DIR": lambda: Path(os.environ.get("SWARM_OUT_DIR") or "out"),
    }
    return values[name]()


_ENV_CONSTANTS = ("BUDGET_UNIT", "BUDGET", "MAX_SEQ_LEN", "SEED", "EVAL_TOKENS", "EXCLUDED_WARMUP_STEPS",
                  "RUNNER_MODE", "OUT_DIR", "PEAK_FLOPS")


def budget(profile: str | None = None) -> Budget:
    """The training budget: SWARM_BUDGET / SWARM_BUDGET_UNIT (the runner sets them), else the profile's.

    This is the one owner of the budget default; the runner caps a hypothesis's own budget by its own
    limit and passes the result here."""
    spec = PROFILES[resolve_profile(profile)]
    unit = os.environ.get("SWARM_BUDGET_UNIT") or spec.budget_unit
    amount = _env_float("SWARM_BUDGET", spec.budget if unit == spec.budget_unit else 0.0)
    try:
        return Budget(unit, amount)
    except ValueError as e:
        raise PrepareError(f"{e} (SWARM_BUDGET={os.environ.get('SWARM_BUDGET')!r}, "
                           f"SWARM_BUDGET_UNIT={os.environ.get('SWARM_BUDGET_UNIT')!r})") from e


# ---------------------------------------------------------------------------
# Download (HTTPS, retries, resume, .tmp + rename, checksums, progress bar)
# ---------------------------------------------------------------------------


def download_file(url: str, dest: Path, sha256: str | None = None, retries: int = 5,
                  backoff: float | None = None, timeout: float | tuple[float, float] = 30.0) -> Path:
    """Download url to dest: resumes a partial dest.tmp with a Range request, verifies, renames."""
    import requests

    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    last_error: Exception | None = None
    backoff = DOWNLOAD_BACKOFF if backoff is None else backoff
    for attempt in range(retries):
        have = tmp.stat().st_size if tmp.exists() else 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        try:
            with requests.get(url, headers=headers, stream=True, timeout=timeout) as r:
                if r.status_code == 416:  # tmp already complete
                    break
                if r.status_code not in (200, 206):
                    raise PrepareError(f"GET {url} answered HTTP {r.status_code}")
                mode = "ab" if r.status_code == 206 else "wb"  # a 200 means the server ignored Range
                start = have if mode == "ab" else 0
                total = start + int(r.headers.get("Content-Length", 0))
                with open(tmp, mode) as f, _progress(dest.name, total, start) as advance:
                    for chunk in r.iter_content(chunk_size=1 << 16):
                        f.write(chunk)
                        advance(len(chunk))
            break
        except PrepareError:
            raise
        except requests.RequestException as e:
            last_error = e
            time.sleep(backoff * 2**attempt)
    else:
        raise PrepareError(f"download of {url} failed after {retries} attempts: {last_error}")
    if sha256 is not None:
        got = _sha256_file(tmp)
        if got != sha256:
            tmp.unlink()
            raise PrepareError(f"{url}: sha256 {got} != expected {sha256}; the partial file was removed, retry")
    elif dest.suffix == ".parquet":
        try:
            _read_parquet_texts(tmp)
        except PrepareError as e:
            tmp.unlink()
            raise PrepareError(f"corrupt shard from {url}: {e}") from e
    tmp.replace(dest)
    return dest


@contextlib.contextmanager
def _progress(name: str, total: int, done: int) -> Iterator[Any]:
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), transient=True, console=Console(stderr=True)) as progress:
        task = progress.add_task(name, total=total or None, completed=done)
        yield lambda n: progress.advance(task, n)


def dataset_url(dataset: str, base_url: str | None = None) -> str:
    """Where a dataset's shards are fetched from: the mirror given, else SWARM_DATASET_URL, else its origin."""
    return (base_url or os.environ.get("SWARM_DATASET_URL") or DATASETS[dataset]["base_url"]).rstrip("/")


def download_source(dataset: str, num_shards: int | None, doc_chars: int, base_url: str | None = None,
                    checksums: dict[str, str] | None = None, retries: int = 5,
                    timeout: float | tuple[float, float] = 30.0) -> Source:
    """Download num_shards training shards (None: the dataset's default) plus the pinned validation shard
    (the dataset's last). Shards already in the cache are not fetched again; the texts are read only when
    the dataset is prepared (:meth:`Source.load`). The fingerprint covers the shards' names and bytes, not
    the URL: a mirror serving the same files gives the same dataset."""
    if dataset not in DATASETS:
        raise PrepareError(f"unknown dataset {dataset!r}; use one of {sorted(DATASETS)}")
    spec = DATASETS[dataset]
    url = dataset_url(dataset, base_url)
    names = [SHARD_NAME.format(i) for i in range(num_shards or spec["default_shards"])]
    val_name = SHARD_NAME.format(spec["max_shard"])
    raw = cache_dir() / "raw" / dataset
    raw.mkdir(parents=True, exist_ok=True)
    hashes = []
    # one download at a time per node and dataset: runners that start together share one .tmp file each
    with open(raw / ".download.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for name in [*names, val_name]:
            path = download_file(f"{url}/{name}", raw / name, (checksums or {}).get(name), retries=retries,
                                 timeout=timeout)
            hashes.append([name, _sha256_file(path)])

    def load() -> tuple[list[str], list[str]]:
        train = [p for n in names for t in _read_parquet_texts(raw / n) for p in _split_text(t, doc_chars)]
        val = [p for t in _read_parquet_texts(raw / val_name) for p in _split_text(t, doc_chars)]
        return train, val

    return Source(dataset, {"kind": dataset, "files": hashes}, [], [], loader=load)


def check_data_request(dataset: str | None = None, corpus: str | None = None, num_shards: int | None = None,
                       base_url: str | None = None, profile: str | None = None) -> None:
    """Raise :class:`PrepareError` for a request for data that cannot mean anything (the CLIs of prepare.py,
    the runner and ``swarm up`` check here before they start). ``profile``: also check what needs the
    profile's default dataset (a mirror or a shard count without a dataset)."""
    choices = [*sorted(DATASETS), OFFLINE_DATASET]
    if dataset and dataset not in choices:
        raise PrepareError(f"unknown dataset {dataset!r}: use one of {', '.join(choices)} (or --corpus DIR for "
                           "your own text or parquet files)")
    if dataset and corpus:
        raise PrepareError(f"--dataset {dataset} and --corpus {corpus} both given: choose one")
    if corpus and not Path(corpus).is_dir():
        raise PrepareError(f"--corpus {corpus}: no such directory (give a directory of .txt/.md/.py/.parquet files)")
    if num_shards is not None:
        if num_shards < 1:
            raise PrepareError(f"--num-shards {num_shards}: give at least 1 training shard")
        if dataset in DATASETS and num_shards > DATASETS[dataset]["max_shard"]:
            raise PrepareError(f"--num-shards {num_shards}: {dataset} has {DATASETS[dataset]['max_shard']} "
                               "training shards (the last one is the pinned validation shard)")
    if base_url and not base_url.startswith(("http://", "https://")):
        raise PrepareError(f"--dataset-url {base_url!r}: give the http(s) URL under which the mirror serves the "
                           "shards (shard_00000.parquet, ...)")
    # a mirror and a shard count are for a downloaded dataset: the one named, else the profile's default
    # (unknown without a profile: then only the runner's preparation can tell)
    target = "corpus" if corpus else dataset or (DEFAULT_DATASET[resolve_profile(profile)] if profile else None)
    for flag, value in (("--dataset-url", base_url), ("--num-shards", num_shards)):
        if value is not None and target is not None and target not in DATASETS:
            raise PrepareError(f"{flag} is for a downloaded dataset, but the data here is "
                               f"{'--corpus ' + str(corpus) if corpus else 'the offline corpus'}: name the "
                               f"dataset too (--dataset {'|'.join(sorted(DATASETS))})")


def choose_source(profile: str, dataset: str | None = None, corpus: str | None = None,
                  num_shards: int | None = None, base_url: str | None = None,
                  checksums: dict[str, str] | None = None,
                  on_fallback: Callable[[str], None] | None = None) -> Source:
    """The source of a preparation: ``corpus``, else ``dataset`` (``offline`` or a downloadable one), else
    the profile's default (:data:`DEFAULT_DATASET`).

    Data asked for by name (a dataset, a mirror or a shard count) must download, or this raises with what
    to do. The gpu profile's default is tried briefly; when it cannot be downloaded the offline corpus is
    used and ``on_fallback`` (default: print to stderr) gets a message that says so and how to change it."""
    spec = PROFILES[profile]
    max_bytes = _env_int("SWARM_CORPUS_MAX_BYTES", spec.corpus_max_bytes)
    check_data_request(dataset, corpus, num_shards, base_url, profile)
    if corpus:
        return corpus_source(Path(corpus).resolve(), spec.doc_chars, max_bytes)
    name = dataset or DEFAULT_DATASET[profile]
    if name == OFFLINE_DATASET:
        return offline_source(spec.doc_chars, max_bytes)
    raw = cache_dir() / "raw" / name
    if dataset or base_url or num_shards is not None:
        try:
            return download_source(name, num_shards, spec.doc_chars, base_url, checksums)
        except PrepareError as e:
            raise PrepareError(
                f"{e}\nThe dataset {name} was asked for by name, so nothing falls back to other data. Check this "
                f"machine's network or the mirror (--dataset-url URL, SWARM_DATASET_URL), or copy the shards into "
                f"{raw}; or train on the offline corpus: --dataset {OFFLINE_DATASET}.") from e
    try:
        return download_source(name, num_shards, spec.doc_chars, None, checksums, retries=DEFAULT_PROBE_RETRIES,
                               timeout=(10.0, 60.0))
    except PrepareError as e:
        shards = DATASETS[name]["default_shards"]
        say = on_fallback or (lambda m: print(f"prepare: {m}", file=sys.stderr, flush=True))
        say(f"the {profile} profile's default data, {name} ({shards} training shards and the pinned validation "
            f"shard from {dataset_url(name)}), could not be downloaded: {e}. FALLING BACK to the offline corpus "
            f"(this Python's standard library sources): results on it compare only with results on the same data. "
            f"To train on {name}: give this machine network access, or a mirror (--dataset-url URL or "
            f"SWARM_DATASET_URL), or copy the shards into {raw}. To choose the offline corpus without trying the "
            f"download: --dataset {OFFLINE_DATASET}.")
        return offline_source(spec.doc_chars, max_bytes)


# ---------------------------------------------------------------------------
# Preparation (idempotent, one process at a time per dataset, atomic rename)
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Prepared:
    root: Path
    data_dir: Path  # the train view: train/, tokenizer.json, token_bytes.npy, meta.json
    val_dir: Path
    tokenizer_path: Path
    dataset_fingerprint: str
    tokenizer_fingerprint: str
    vocab_size: int


def _fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def _load_prepared(root: Path) -> Prepared:
    meta = json.loads((root / "trainview" / "meta.json").read_text())
    return Prepared(root, root / "trainview", root / "val", root / "trainview" / "tokenizer.json",
                    meta["dataset_fingerprint"], meta["tokenizer_fingerprint"], meta["vocab_size"])


def ensure_prepared(profile: str | None = None, dataset: str | None = None, corpus: str | None = None,
                    num_shards: int | None = None, base_url: str | None = None,
                    checksums: dict[str, str] | None = None,
                    on_fallback: Callable[[str], None] | None = None) -> Prepared:
    """Prepare (once per node) and return the dataset for a profile: --corpus, --dataset (a mirror with
    base_url), else the profile's default (see :func:`choose_source`)."""
    profile = resolve_profile(profile)
    spec = PROFILES[profile]
    source = choose_source(profile, dataset, corpus, num_shards, base_url, checksums, on_fallback)
    params = {"version": PREPARE_VERSION, "vocab_size": spec.vocab_size, "doc_chars": spec.doc_chars,
              "tokenizer": "bytelevel-bpe", "source": source.identity}
    fp = _fingerprint(params)
    data = cache_dir() / "data"
    root = data / fp
    data.mkdir(parents=True, exist_ok=True)
    if (root / "trainview" / "meta.json").exists():
        return _load_prepared(root)
    with open(data / f"{fp}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second process waits here, then finds the result
        if (root / "trainview" / "meta.json").exists():
            return _load_prepared(root)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{fp}-", dir=data))
        try:
            _build(tmp, source, spec, fp)
            tmp.rename(root)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return _load_prepared(root)


def _build(tmp: Path, source: Source, spec: ProfileSpec, fp: str) -> None:
    tv, val = tmp / "trainview", tmp / "val"
    source.load()
    (tv / "train").mkdir(parents=True)
    val.mkdir()
    tok = train_tokenizer(source.train, spec.vocab_size)
    tok.save(str(tv / "tokenizer.json"))
    tok_fp = _sha256_file(tv / "tokenizer.json")[:16]
    bos = _bos_id(tok)
    tb = token_byte_lengths(tok)
    counts = {}
    for split, docs, out in (("train", source.train, tv / "train"), ("val", source.val, val)):
        ids = _encode_docs(tok, docs, bos)
        ids.tofile(out / "shard_00000.bin")
        counts[split] = {"documents": len(docs), "tokens": int(ids.size), "bytes": int(tb[ids].sum()),
                         "tokens_sha256": hashlib.sha256(ids.tobytes()).hexdigest()}
    meta = {"dataset": source.name, "dataset_fingerprint": fp, "tokenizer_fingerprint": tok_fp,
            "vocab_size": tok.get_vocab_size(), "bos_id": bos, "token_dtype": np.dtype(TOKEN_DTYPE).name,
            "doc_chars": spec.doc_chars, "counts": counts, "prepare_version": PREPARE_VERSION,
            "source_identity": source.identity}
    for d in (tv, val):
        np.save(d / "token_bytes.npy", tb)
        (d / "meta.json").write_text(json.dumps(meta, indent=1))


def get_data_dir() -> Path:
    """The train view train.py reads: SWARM_DATA_DIR, else the default prepared dataset (prepared if missing)."""
    env = os.environ.get("SWARM_DATA_DIR")
    return Path(env) if env else ensure_prepared().data_dir


def get_val_dir() -> Path | None:
    """The validation split: SWARM_VAL_DIR; None in runner mode or when only SWARM_DATA_DIR was given."""
    env = os.environ.get("SWARM_VAL_DIR")
    if env:
        return Path(env)
    if os.environ.get("SWARM_MODE") == "runner" or os.environ.get("SWARM_DATA_DIR"):
        return None  # training in the runner never gets a path to val (the runner also hides it on disk)
    return ensure_prepared().val_dir


def read_meta(data_dir: str | Path | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = json.loads((Path(data_dir or get_data_dir()) / "meta.json").read_text())
    return meta


def _read_tokens(split_dir: Path) -> np.ndarray:
    shards = sorted(split_dir.glob("shard_*.bin"))
    if not shards:
        raise PrepareError(f"no token shards in {split_dir}; run `python prepare.py` first")
    arrays = [np.memmap(s, dtype=TOKEN_DTYPE, mode="r") for s in shards]
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


# ---------------------------------------------------------------------------
# Loader: packed rows starting with BOS, deterministic for a seed
# ---------------------------------------------------------------------------


def make_dataloader(batch_size: int, seq_len: int | None = None, seed: int | None = None,
                    device: str | torch.device = "cpu", data_dir: str | Path | None = None,
                    warmup_batches: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
    """Yield (inputs, targets, epoch) from the training split until the budget is used (runner) or forever.

    Each row is seq_len+1 consecutive tokens starting at a document's BOS, so one row packs a document
    and the ones after it. Row starts go through a seeded permutation per epoch.

    Under the runner (SWARM_FEED set) the batches come from the runner's feed, which serves exactly the
    budget (tokens) or stops at the end of the time budget, and then this generator ends: the training
    loop must stop when it does. ``warmup_batches``: the first batches (compile, allocator warm-up) that
    the budget's clock does not count, within the profile's limit. By hand it reads the files itself.
    """
    import torch

    seq_len = seq_len or __getattr__("MAX_SEQ_LEN")
    seed = __getattr__("SEED") if seed is None else seed
    device = torch.device(device)
    pin = device.type == "cuda"
    feed = os.environ.get("SWARM_FEED")
    if feed:
        batches: Iterator[tuple[np.ndarray, int]] = feed_batches(feed, batch_size, seq_len, warmup_batches)
    else:
        root = Path(data_dir or get_data_dir())
        tokens = _read_tokens(root / "train")
        starts = row_starts(tokens, read_meta(root)["bos_id"], seq_len)
        if starts.size < batch_size:
            raise PrepareError(f"training split too small: {starts.size} row starts for batch {batch_size}")
        order = iter_rows(tokens, starts, seq_len, seed)
        batches = (take_batch(tokens, order, batch_size, seq_len) for _ in itertools.count())
    for rows_np, epoch in batches:
        rows = torch.from_numpy(rows_np.astype(np.int64))
        if pin:
            rows = rows.pin_memory()
        rows = rows.to(device, non_blocking=True)
        yield rows[:, :-1], rows[:, 1:], epoch


# ---------------------------------------------------------------------------
# Trusted evaluation (do not change: this is the metric; see harness/evaluation.py)
# ---------------------------------------------------------------------------

EvalResult = _evaluation.EvalResult
eval_rows = _evaluation.eval_rows


def evaluate(train_py: str | Path, model_dir: str | Path, val_dir: str | Path, *,
             device: str | None = None, seed: int = 0) -> EvalResult:
    """Score saved weights as bits per byte on the pinned validation slice, causality checked on it.

    train.py's model runs in its own process (it gets input rows and returns logits); this process, which
    imports none of train.py, computes the float32 cross-entropy and the bytes. The runner does the same
    with the model process sandboxed."""
    spec = PROFILES[resolve_profile()]
    return _evaluation.evaluate(train_py, model_dir, val_dir, seq_len=__getattr__("MAX_SEQ_LEN"),
                                eval_tokens=__getattr__("EVAL_TOKENS"), batch_size=spec.eval_batch_size,
                                seed=seed, device=device)


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # before torch loads OpenMP: idle threads sleep instead of spinning, which on a shared CPU (other runs,
    # other jobs) made forwards 2-8x slower; the numbers computed are the same
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if argv[:1] == ["evaluate"]:
        p = argparse.ArgumentParser(prog="prepare.py evaluate", description="trusted evaluation")
        p.add_argument("--train-py", required=True)
        p.add_argument("--model-dir", required=True)
        p.add_argument("--val-dir", default=None, help="default: SWARM_VAL_DIR, else the default dataset")
        p.add_argument("--json-out", default=None)
        p.add_argument("--device", default=None)
        a = p.parse_args(argv[1:])
        try:
            val_dir = a.val_dir or get_val_dir()
            if val_dir is None:
                raise PrepareError("no validation directory: pass --val-dir or set SWARM_VAL_DIR")
            res = evaluate(a.train_py, a.model_dir, val_dir, device=a.device)
        except (PrepareError, OSError, ValueError):
            traceback.print_exc()
            return 2
        line = res.to_json()
        if a.json_out:
            Path(a.json_out).write_text(line + "\n")
        print(line)
        return 0
    p = argparse.ArgumentParser(prog="prepare.py", description="prepare data and tokenizer (once per node)")
    p.add_argument("--profile", choices=sorted(PROFILES), default=None)
    p.add_argument("--dataset", choices=[*sorted(DATASETS), OFFLINE_DATASET], default=None,
                   help="default: the profile's (gpu: climbmix where it downloads, else offline; cpu: offline)")
    p.add_argument("--num-shards", type=int, default=None, help="training shards to download (default: 10)")
    p.add_argument("--corpus", default=None, help="a directory of text or parquet files")
    p.add_argument("--base-url", default=None, help="mirror for --dataset (also SWARM_DATASET_URL)")
    a = p.parse_args(argv)
    try:
        prep = ensure_prepared(a.profile, a.dataset, a.corpus, num_shards=a.num_shards, base_url=a.base_url)
    except PrepareError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    info = {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(prep).items()}
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())

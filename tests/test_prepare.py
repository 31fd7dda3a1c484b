"""prepare.py: offline dataset, fingerprints, tokenizer, loader, concurrency, the download path."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import random
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import prepare

try:
    from harness_helpers import CORPUS_MAX_BYTES, REPO, harness_env
except ImportError:  # tests/ collected as a package
    from tests.harness_helpers import CORPUS_MAX_BYTES, REPO, harness_env


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[prepare.Prepared]:
    cache = tmp_path_factory.getbasetemp() / "swarm-cache"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SWARM_CACHE_DIR", str(cache))
        mp.setenv("SWARM_PROFILE", "cpu")
        mp.setenv("SWARM_CORPUS_MAX_BYTES", CORPUS_MAX_BYTES)
        for name in ("SWARM_DATA_DIR", "SWARM_VAL_DIR", "SWARM_MODE"):
            mp.delenv(name, raising=False)
        yield prepare.ensure_prepared()


def test_layout_fingerprints_and_idempotence(prepared: prepare.Prepared) -> None:
    tv, val = prepared.data_dir, prepared.val_dir
    assert sorted(p.name for p in tv.iterdir()) == ["meta.json", "token_bytes.npy", "tokenizer.json", "train"]
    assert not any("val" in p.relative_to(tv).parts for p in tv.rglob("*"))  # the train view holds no val
    assert (val / "shard_00000.bin").stat().st_size > 0
    meta = prepare.read_meta(tv)
    assert meta == json.loads((val / "meta.json").read_text())
    assert meta["dataset_fingerprint"] == prepared.dataset_fingerprint == prepared.root.name
    tok_hash = hashlib.sha256(prepared.tokenizer_path.read_bytes()).hexdigest()[:16]
    assert meta["tokenizer_fingerprint"] == prepared.tokenizer_fingerprint == tok_hash
    assert meta["vocab_size"] == prepared.vocab_size == 2048
    assert meta["counts"]["train"]["tokens"] > 3 * meta["counts"]["val"]["tokens"] > 0
    assert prepare.ensure_prepared() == prepared  # second call finds the prepared dataset
    assert prepare.get_data_dir() == tv and prepare.get_val_dir() == val


def test_train_and_val_documents_are_disjoint(prepared: prepare.Prepared) -> None:
    src = prepare.offline_source(1024, int(CORPUS_MAX_BYTES))
    assert set(src.train).isdisjoint(src.val) or len(set(src.train) & set(src.val)) < 3  # boilerplate only
    val_ids = {f for f, _ in src.identity["files"] if prepare._is_val(f)}
    assert val_ids and all(not prepare._is_val(f) for f, _ in src.identity["files"] if f not in val_ids)


@pytest.mark.parametrize("text", ["", "def f(x):\n    return x ** 2\n", "naïve café — ✓ 日本語 🚀\n\ttabs  ",
                                  "<|bos|> is just text here"])
def test_tokenizer_round_trip_and_byte_lengths(prepared: prepare.Prepared, text: str) -> None:
    tok = prepare.Tokenizer.from_dir(prepared.data_dir)
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.bos_id not in ids  # the BOS string in text is text, never the special token
    token_bytes = np.load(prepared.data_dir / "token_bytes.npy")
    assert int(token_bytes[ids].sum()) == len(text.encode("utf-8"))
    assert token_bytes[tok.bos_id] == 0 and tok.encode(text, bos=True)[0] == tok.bos_id


def test_loader_is_deterministic_and_rows_start_with_bos(prepared: prepare.Prepared) -> None:
    def batches(seed: int) -> list[np.ndarray]:
        it = prepare.make_dataloader(4, 64, seed=seed, data_dir=prepared.data_dir)
        out = []
        for _ in range(3):
            x, y, epoch = next(it)
            assert x.shape == y.shape == (4, 64) and epoch == 0
            assert bool((x[:, 1:] == y[:, :-1]).all())
            out.append(x.numpy())
        return out

    a, b, c = batches(1), batches(1), batches(2)
    assert all(np.array_equal(p, q) for p, q in zip(a, b, strict=True))
    assert not all(np.array_equal(p, q) for p, q in zip(a, c, strict=True))
    bos = prepare.read_meta(prepared.data_dir)["bos_id"]
    assert all((x[:, 0] == bos).all() for x in a)


def test_two_processes_prepare_at_once(tmp_path: Path) -> None:
    env = harness_env(tmp_path / "cache", SWARM_CORPUS_MAX_BYTES="100000")
    procs = [subprocess.Popen([sys.executable, str(REPO / "prepare.py")], env=env, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    infos = [json.loads(o.strip().splitlines()[-1]) for o, _ in outs]
    assert infos[0] == infos[1]
    entries = sorted(p.name for p in (tmp_path / "cache" / "data").iterdir())
    assert entries == sorted([infos[0]["dataset_fingerprint"], infos[0]["dataset_fingerprint"] + ".lock"])


def test_corpus_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWARM_CACHE_DIR", str(tmp_path / "cache"))
    rng = random.Random(0)
    words = ["the", "swarm", "trains", "a", "model", "on", "text", "and", "reads", "bits", "per", "byte", "from", "every", "run", "it", "keeps"]
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(120):
        (corpus / f"doc{i:03d}.txt").write_text(" ".join(rng.choice(words) for _ in range(200)) + "\n")
    prep = prepare.ensure_prepared("cpu", corpus=str(corpus))
    meta = prepare.read_meta(prep.data_dir)
    assert meta["dataset"] == "corpus:corpus" and meta["counts"]["val"]["documents"] > 0
    tok = prepare.Tokenizer(prep.tokenizer_path)
    assert tok.decode(tok.encode("the swarm reads bits")) == "the swarm reads bits"


# --- the download path, against a loopback HTTP server ----------------------------------------------


def _parquet_bytes(seed: int, n_docs: int = 150) -> bytes:
    rng = random.Random(seed)
    words = ["data", "model", "token", "budget", "swarm", "runner", "ledger", "agent", "learning", "rate", "loss", "value", "attention", "layer", "train", "evaluate", "shard", "bytes"]
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(50, 200))) for _ in range(n_docs)]
    buf = io.BytesIO()
    pq.write_table(pa.table({"text": texts}), buf)
    return buf.getvalue()


class _ShardServer(http.server.ThreadingHTTPServer):
    files: dict[str, bytes]
    cut_once: set[str]  # these are cut mid-file on their first full request
    requests_seen: list[tuple[str, str | None]]


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _ShardServer

    def do_GET(self) -> None:
        name = self.path.rsplit("/", 1)[-1]
        rng = self.headers.get("Range")
        self.server.requests_seen.append((name, rng))
        data = self.server.files.get(name)
        if data is None:
            self.send_error(404)
            return
        start = int(rng.split("=")[1].split("-")[0]) if rng else 0
        self.send_response(206 if rng else 200)
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        if name in self.server.cut_once and not rng:
            self.server.cut_once.discard(name)
            self.wfile.write(data[: len(data) // 2])  # then the connection drops
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(data[start:])

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def shard_server() -> Iterator[_ShardServer]:
    server = _ShardServer(("127.0.0.1", 0), _Handler)
    server.files, server.cut_once, server.requests_seen = {}, set(), []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def _url(server: _ShardServer) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/resolve/main"


@pytest.fixture
def download_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SWARM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(prepare, "DOWNLOAD_BACKOFF", 0.0)
    return tmp_path / "cache"


def test_download_resumes_a_cut_connection(shard_server: _ShardServer, download_env: Path) -> None:
    names = ["shard_00000.parquet", "shard_00001.parquet", "shard_06542.parquet"]  # 06542: climbmix's val
    shard_server.files = {n: _parquet_bytes(i, 800) for i, n in enumerate(names)}  # > one 64 KiB chunk
    shard_server.cut_once = {"shard_00001.parquet"}
    checksums = {"shard_00000.parquet": hashlib.sha256(shard_server.files["shard_00000.parquet"]).hexdigest()}
    prep = prepare.ensure_prepared("cpu", dataset="climbmix", num_shards=2, base_url=_url(shard_server),
                                   checksums=checksums)
    raw = download_env / "raw" / "climbmix"
    for n in names:
        assert (raw / n).read_bytes() == shard_server.files[n]
    assert not list(raw.glob("*.tmp"))
    half = len(shard_server.files["shard_00001.parquet"]) // 2
    resumed = [int(r[6:-1]) for n, r in shard_server.requests_seen if n == "shard_00001.parquet" and r]
    assert len(resumed) == 1 and 0 < resumed[0] <= half  # resumed from what it had, not restarted
    meta = prepare.read_meta(prep.data_dir)
    assert meta["dataset"] == "climbmix" and meta["counts"]["val"]["documents"] > 0
    assert [f for f, _ in meta["source_identity"]["files"]] == names


def test_corrupt_shard_is_a_clear_error(shard_server: _ShardServer, download_env: Path) -> None:
    good = _parquet_bytes(0)
    shard_server.files = {"shard_00000.parquet": good[:-8] + b"garbage!",
                          "shard_06542.parquet": _parquet_bytes(1)}
    with pytest.raises(prepare.PrepareError, match=r"corrupt shard .*shard_00000\.parquet"):
        prepare.ensure_prepared("cpu", dataset="climbmix", num_shards=1, base_url=_url(shard_server))
    raw = download_env / "raw" / "climbmix"
    assert not (raw / "shard_00000.parquet").exists() and not list(raw.glob("*.tmp"))


def test_checksum_mismatch_is_a_clear_error(shard_server: _ShardServer, download_env: Path) -> None:
    shard_server.files = {"a.parquet": _parquet_bytes(0)}
    with pytest.raises(prepare.PrepareError, match="sha256"):
        prepare.download_file(f"{_url(shard_server)}/a.parquet", download_env / "a.parquet", sha256="0" * 64)
    assert not (download_env / "a.parquet").exists()


def test_missing_shard_is_a_clear_error(shard_server: _ShardServer, download_env: Path) -> None:
    with pytest.raises(prepare.PrepareError, match="HTTP 404"):
        prepare.download_file(f"{_url(shard_server)}/nope.parquet", download_env / "nope.parquet")

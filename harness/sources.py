"""Where the training and validation documents come from (prepare.py's sources): text or parquet files split
into documents, the offline corpus (the interpreter's standard library) and a user's own corpus. The
downloaded datasets are prepare.py's (they need its download and lock machinery).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import sys
import sysconfig
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.errors import PrepareError

VAL_PERCENT = 5  # offline and --corpus sources: a document goes to val when hash(its id) % 100 < this


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _is_val(doc_id: str) -> bool:
    return int(hashlib.sha256(doc_id.encode()).hexdigest()[:8], 16) % 100 < VAL_PERCENT


def _split_text(text: str, doc_chars: int) -> list[str]:
    """Cut a text at line boundaries into pieces of at most doc_chars (long lines are hard-split)."""
    pieces: list[str] = []
    cur: list[str] = []
    size = 0
    for line in text.splitlines(keepends=True):
        while len(line) > doc_chars:
            if cur:
                pieces.append("".join(cur))
                cur, size = [], 0
            pieces.append(line[:doc_chars])
            line = line[doc_chars:]
        if size + len(line) > doc_chars and cur:
            pieces.append("".join(cur))
            cur, size = [], 0
        cur.append(line)
        size += len(line)
    if cur:
        pieces.append("".join(cur))
    return [p for p in pieces if p.strip()]


@dataclasses.dataclass
class Source:
    """Documents of one source, already split into train and val, plus what identifies them."""

    name: str
    identity: dict[str, Any]  # goes into the dataset fingerprint
    train: list[str]
    val: list[str]
    # downloaded shards are read only when a preparation needs their documents: their identity (file
    # hashes) alone finds a dataset already prepared, so a runner's start does not parse gigabytes of text
    loader: Callable[[], tuple[list[str], list[str]]] | None = None

    def load(self) -> None:
        """Read the documents of a source whose reading was deferred (no-op otherwise)."""
        if self.loader is not None:
            self.train, self.val = self.loader()
            self.loader = None


def _text_files_source(root: Path, name: str, suffixes: tuple[str, ...], max_bytes: int,
                       doc_chars: int, skip_dirs: tuple[str, ...] = (),
                       val_dirs: tuple[str, ...] = ()) -> Source:
    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skip_dirs)
        files.extend(Path(dirpath) / f for f in sorted(filenames) if f.endswith(suffixes))
    files.sort(key=lambda p: p.relative_to(root).as_posix())
    train: list[str] = []
    val: list[str] = []
    hashes: list[list[str]] = []
    budget = {"train": 0, "val": 0}
    caps = {"train": max_bytes, "val": max(max_bytes // 10, 1) if max_bytes else 0}
    for path in files:
        rel = path.relative_to(root).as_posix()
        if path.suffix == ".parquet":
            docs = [(f"{rel}#{i}", t) for i, t in enumerate(_read_parquet_texts(path))]
        else:
            data = path.read_bytes()
            try:
                docs = [(rel, data.decode("utf-8"))]
            except UnicodeDecodeError:
                continue  # not text; skipping keeps the corpus clean
        used = False
        top = rel.split("/", 1)[0]
        for doc_id, text in docs:
            split = "val" if (top in val_dirs if val_dirs else _is_val(doc_id)) else "train"
            if caps[split] and budget[split] >= caps[split]:
                continue
            budget[split] += len(text.encode("utf-8"))
            (val if split == "val" else train).extend(_split_text(text, doc_chars))
            used = True
        if used:
            hashes.append([rel, _sha256_file(path)])
    if not train or not val:
        raise PrepareError(f"source {root} gave {len(train)} train and {len(val)} val documents; "
                           "it needs text files (.py .txt .md .rst .parquet) landing in both splits")
    identity = {"kind": name, "files": hashes, "max_bytes": max_bytes, "val_percent": VAL_PERCENT}
    return Source(name, identity, train, val)


# The offline corpus's validation documents: whole standard-library packages that neither Python, torch nor
# this harness imports, so every sandbox can hide them (the runner overlays these directories of every
# Python installation it mounts) while the interpreter keeps the rest of its standard library. A split by
# document hash would put validation text inside files every Python process must be able to read.
OFFLINE_VAL_DIRS = ("idlelib", "turtledemo", "tkinter", "lib2to3", "pydoc_data")


def offline_source(doc_chars: int, max_bytes: int) -> Source:
    """The offline default: the running interpreter's standard-library sources (no network needed)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = ("site-packages", "dist-packages", "__pycache__")
    val_dirs = tuple(d for d in OFFLINE_VAL_DIRS if (root / d).is_dir())
    if not val_dirs:
        raise PrepareError(f"{root} has none of {OFFLINE_VAL_DIRS} for the offline validation split; "
                           "use --corpus DIR or --dataset NAME")
    src = _text_files_source(root, "stdlib", (".py",), max_bytes, doc_chars, skip, val_dirs)
    src.identity["python"] = sys.version.split()[0]
    src.identity["val_dirs"] = list(val_dirs)
    return src


def corpus_source(corpus: Path, doc_chars: int, max_bytes: int) -> Source:
    """A user's own text or parquet files (column 'text')."""
    return _text_files_source(corpus, f"corpus:{corpus.name}", (".txt", ".md", ".rst", ".py", ".parquet"),
                              max_bytes, doc_chars)


def _read_parquet_texts(path: Path) -> list[str]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path, columns=["text"])
    except Exception as e:
        raise PrepareError(f"{path} is not a readable parquet file with a 'text' column ({e}); "
                           "delete it and download again") from e
    return [t for t in table.column("text").to_pylist() if t]

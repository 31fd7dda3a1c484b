"""The tokenizer prepare.py trains once per dataset: byte-level BPE on the training texts, BOS as the only
special token, and each token's length in UTF-8 bytes (for bits per byte)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from harness.errors import PrepareError

if TYPE_CHECKING:
    from tokenizers import Tokenizer as HFTokenizer

BOS_TOKEN = "<|bos|>"
TOKENIZER_MAX_CHARS = 500_000_000  # BPE training text cap (large downloads)
TOKEN_DTYPE = np.uint16


def _byte_decoder() -> dict[str, int]:
    # the GPT-2 byte<->unicode table that the ByteLevel pre-tokenizer uses
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


def train_tokenizer(texts: list[str], vocab_size: int) -> HFTokenizer:
    """Byte-level BPE trained on the given (training) texts, BOS as the only special token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=[BOS_TOKEN],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    budget = 0
    sample = []
    for t in texts:
        if budget > TOKENIZER_MAX_CHARS:
            break
        sample.append(t)
        budget += len(t)
    tok.train_from_iterator(sample, trainer=trainer, length=len(sample))
    tok.encode_special_tokens = True  # "<|bos|>" inside a document is text, not BOS
    return tok


def token_byte_lengths(tok: HFTokenizer) -> np.ndarray:
    """Each token's length in UTF-8 bytes (0 for BOS), for bits per byte."""
    dec = _byte_decoder()
    out = np.zeros(tok.get_vocab_size(), dtype=np.int32)
    for token, idx in tok.get_vocab().items():
        out[idx] = 0 if token == BOS_TOKEN else sum(1 for c in token if c in dec)
    return out


def _bos_id(tok: HFTokenizer) -> int:
    idx = tok.token_to_id(BOS_TOKEN)
    if idx is None:
        raise PrepareError(f"tokenizer has no {BOS_TOKEN} token; delete the cache and prepare again")
    return int(idx)


class Tokenizer:
    """The prepared tokenizer, as train.py and tests use it."""

    def __init__(self, path: str | Path) -> None:
        from tokenizers import Tokenizer as HF

        self.path = Path(path)
        self.hf = HF.from_file(str(self.path))
        self.hf.encode_special_tokens = True  # "<|bos|>" inside a text is text, not BOS
        self.bos_id = _bos_id(self.hf)
        self.vocab_size: int = self.hf.get_vocab_size()

    @classmethod
    def from_dir(cls, data_dir: str | Path | None = None) -> Tokenizer:
        """The tokenizer of a prepared data directory (default: prepare.get_data_dir())."""
        if data_dir is None:
            import prepare

            data_dir = prepare.get_data_dir()
        return cls(Path(data_dir) / "tokenizer.json")

    def encode(self, text: str, bos: bool = False) -> list[int]:
        ids: list[int] = self.hf.encode(text, add_special_tokens=False).ids
        return [self.bos_id, *ids] if bos else ids

    def decode(self, ids: list[int]) -> str:
        out: str = self.hf.decode([i for i in ids if i != self.bos_id], skip_special_tokens=True)
        return out


def _encode_docs(tok: HFTokenizer, docs: list[str], bos_id: int) -> np.ndarray:
    parts: list[np.ndarray] = []
    for i in range(0, len(docs), 4096):
        for enc in tok.encode_batch(docs[i:i + 4096], add_special_tokens=False):
            parts.append(np.asarray([bos_id, *enc.ids], dtype=TOKEN_DTYPE))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=TOKEN_DTYPE)

"""Tokenizers: byte-level BPE and character level, both stored as a Hugging Face tokenizer.json.

Both are `tokenizers.Tokenizer` objects underneath, so `tokenizers.Tokenizer.from_file` opens
what `TextTokenizer.save` writes. Large inputs are encoded in batches of lines, because one big
`encode` call runs on a single thread and is about 2.5x slower.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from lmcore.config import check_choices
from lmcore.data import TokenStreamWriter

UNK_TOKEN = "<unk>"
ENCODE_BATCH_LINES = 4096


@dataclass(frozen=True)
class TokenizerConfig:
    kind: Literal["bpe", "char"] = "bpe"
    vocab_size: int = 4096  # bpe only; a char vocabulary is whatever the training text holds
    min_frequency: int = 2
    special_tokens: list[str] = field(default_factory=lambda: ["<|endoftext|>", "<|pad|>"])
    eot_token: str = "<|endoftext|>"
    pad_token: str = "<|pad|>"
    # Train on the first this many characters of the training text (0: all of it): BPE's merges
    # settle long before a large corpus ends, and training time grows with the text.
    max_train_chars: int = 0

    def __post_init__(self) -> None:
        check_choices(self)
        if self.max_train_chars < 0:
            raise ValueError(f"max_train_chars must be >= 0 (0 is all), got {self.max_train_chars}")
        if self.kind == "bpe" and self.vocab_size < 256 + len(self.special_tokens):
            raise ValueError(
                f"vocab_size={self.vocab_size} is below the 256 byte symbols plus "
                f"{len(self.special_tokens)} special tokens"
            )
        if self.min_frequency < 1:
            raise ValueError(f"min_frequency must be >= 1, got {self.min_frequency}")
        if len(set(self.special_tokens)) != len(self.special_tokens):
            raise ValueError(f"special_tokens lists a token twice: {self.special_tokens}")
        for name in ("eot_token", "pad_token"):
            token = getattr(self, name)
            if token not in self.special_tokens:
                raise ValueError(f"{name}={token!r} is not listed in special_tokens")


class TextTokenizer:
    """A thin typed face over `tokenizers.Tokenizer` with the ids training needs."""

    def __init__(self, tokenizer: Tokenizer, eot_token: str, pad_token: str) -> None:
        self.tokenizer = tokenizer
        self.eot_token = eot_token
        self.pad_token = pad_token
        eot_id, pad_id = tokenizer.token_to_id(eot_token), tokenizer.token_to_id(pad_token)
        if eot_id is None or pad_id is None:
            raise ValueError(f"tokenizer has no id for {eot_token!r} or {pad_token!r}")
        self.eot_id: int = eot_id
        self.pad_id: int = pad_id

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]

    def iter_encoded(self, texts: Iterable[str]) -> Iterator[list[int]]:
        """The ids of each text, encoded in batches (one big `encode` runs on one thread)."""
        for batch in _batches(texts, ENCODE_BATCH_LINES):
            yield from self.encode_batch(batch)

    def encode_to_array(self, text: str, dtype: type = np.int64) -> np.ndarray:
        """Encode a large text by lines in batches; the result decodes back to `text` exactly."""
        chunks = [np.asarray(ids, dtype=dtype) for ids in self.iter_encoded(text.splitlines(keepends=True))]
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=dtype)

    def write_documents(self, documents: Iterable[str], writer: TokenStreamWriter) -> None:
        """Append each document's ids and an end-of-text token to a token stream, in batches."""
        for batch in _batches(documents, ENCODE_BATCH_LINES):
            ids = [np.asarray([*row, self.eot_id], dtype=np.int64) for row in self.encode_batch(batch)]
            # the end-of-text token stands for one byte, so that bits per byte count document ends
            writer.write(np.concatenate(ids), sum(len(d.encode()) + 1 for d in batch))

    def decode(self, ids: Iterable[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def save(self, path: str | os.PathLike) -> None:
        tmp = f"{path}.tmp"
        self.tokenizer.save(tmp)
        os.replace(tmp, path)

    def sha256(self) -> str:
        return tokenizer_sha256(self.tokenizer)


def tokenizer_sha256(tokenizer: Tokenizer) -> str:
    """The identity of a tokenizer: its serialized JSON's SHA-256."""
    return hashlib.sha256(tokenizer.to_str().encode()).hexdigest()


def train_tokenizer(texts: Iterable[str], config: TokenizerConfig) -> TextTokenizer:
    """Train a tokenizer on an iterator of documents (train split only)."""
    tokenizer = _train_bpe(texts, config) if config.kind == "bpe" else _train_char(texts, config)
    return TextTokenizer(tokenizer, config.eot_token, config.pad_token)


def read_tokenizer_file(path: str | os.PathLike) -> Tokenizer:
    """A `tokenizers.Tokenizer` from a tokenizer.json; a missing or unreadable file is a ValueError naming it."""
    if not os.path.isfile(path):
        raise ValueError(f"tokenizer file not found: {path}")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as error:  # tokenizers raises a bare Exception for malformed files
        raise ValueError(f"{path} is not a tokenizer.json: {error}") from None


def load_tokenizer(
    path: str | os.PathLike, eot_token: str = "<|endoftext|>", pad_token: str = "<|pad|>"
) -> TextTokenizer:
    return TextTokenizer(read_tokenizer_file(path), eot_token, pad_token)


def _train_bpe(texts: Iterable[str], config: TokenizerConfig) -> Tokenizer:
    # add_prefix_space=False keeps decode(encode(s)) == s for every string.
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=config.vocab_size,
        min_frequency=config.min_frequency,
        special_tokens=list(config.special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_lines(texts, config.max_train_chars), trainer=trainer)
    return tokenizer


def _train_char(texts: Iterable[str], config: TokenizerConfig) -> Tokenizer:
    # A BPE model with no merges splits every word into single characters. Characters never seen
    # in training map to the explicit <unk> token, so decoding them shows where data was lost.
    alphabet: set[str] = set()
    for line in _lines(texts, config.max_train_chars):
        alphabet.update(line)
    specials = [*config.special_tokens, *([UNK_TOKEN] if UNK_TOKEN not in config.special_tokens else [])]
    vocab = {token: i for i, token in enumerate(specials)}
    for ch in sorted(alphabet):
        vocab.setdefault(ch, len(vocab))
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK_TOKEN, ignore_merges=True))
    tokenizer.add_special_tokens(specials)
    tokenizer.decoder = decoders.Fuse()
    return tokenizer


def _lines(texts: Iterable[str], max_chars: int = 0) -> Iterator[str]:
    seen = 0
    for text in texts:
        yield from text.splitlines(keepends=True)
        seen += len(text)
        if max_chars and seen >= max_chars:
            return


def _batches(texts: Iterable[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch

"""Split rules for labeled tables: stratified held-out splits, leak-free validation, subsets.

Everything is a pure function of the texts, labels and a salt (or a seed), so a split never moves
when the machine, the order of reading or the rest of the pipeline changes.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict

import numpy as np


def hash_position(digest: str, salt: str) -> float:
    """A document's place in [0, 1), from its content hash and a salt."""
    return int(hashlib.sha256(f"{salt}:{digest}".encode()).hexdigest()[:12], 16) / 16**12


def assign_split(digest: str, salt: str, validation_fraction: float, test_fraction: float) -> str:
    """train/validation/test from a salted hash: stable whatever else is in the corpus."""
    position = hash_position(digest, salt)
    if position < test_fraction:
        return "test"
    if position < test_fraction + validation_fraction:
        return "validation"
    return "train"


def stratified_pick(digests: list[str], labels: list[str], fraction: float, salt: str) -> np.ndarray:
    """Indices of `fraction` of each class (rounded), the lowest salted hash positions first."""
    by_class: dict[str, list[int]] = defaultdict(list)
    for i, label in enumerate(labels):
        by_class[label].append(i)
    picked: list[int] = []
    for members in by_class.values():
        ranked = sorted(members, key=lambda i: hash_position(digests[i], salt))
        picked.extend(ranked[: round(fraction * len(members))])
    return np.sort(np.asarray(picked, dtype=np.int64))


def stratified_count(digests: list[str], labels: list[str], count: int, salt: str) -> np.ndarray:
    """Indices of `count` examples (or all, if fewer) with the classes in their proportions."""
    if count >= len(digests):
        return np.arange(len(digests))
    return stratified_pick(digests, labels, count / len(digests), salt)


def budget_subset(labels: np.ndarray, count: int, seed: int) -> np.ndarray:
    """A label budget: `count` training examples drawn with the classes in their proportions
    (every class at least once), by a seeded generator; all of them when count >= len(labels)."""
    if count >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    classes, sizes = np.unique(labels, return_counts=True)
    quota = np.maximum(1, np.floor(count * sizes / sizes.sum())).astype(int)
    for i in np.argsort(-(count * sizes / sizes.sum() - quota)):  # the rest by the largest remainders
        if quota.sum() >= count:
            break
        quota[i] += 1
    while quota.sum() > count:  # the at-least-one floor can overshoot with many small classes
        quota[np.argmax(quota)] -= 1
    picks = [rng.choice(np.flatnonzero(labels == c), q, replace=False) for c, q in zip(classes, quota, strict=True)]
    return np.sort(np.concatenate(picks))


def _contains(outer: str, inner: str) -> bool:
    """`inner` occurs in `outer` at word boundaries (SST-2's texts are space-tokenized)."""
    return f" {inner} " in f" {outer} "


class PhraseIndex:
    """Finds, for a text, the indexed texts that contain it (at word boundaries).

    Candidates share the text's rarest word, so each lookup scans a short posting list.
    """

    def __init__(self, texts: list[str]) -> None:
        self.texts = texts
        self.postings: dict[str, list[int]] = defaultdict(list)
        for i, text in enumerate(texts):
            for word in set(text.split()):
                self.postings[word].append(i)

    def containing(self, text: str, longer_only: bool = True) -> list[int]:
        words = set(text.split())
        if not words:
            return []
        rarest = min(words, key=lambda w: len(self.postings.get(w, ())))
        return [
            j
            for j in self.postings.get(rarest, ())
            if (not longer_only or len(self.texts[j]) > len(text)) and _contains(self.texts[j], text)
        ]


def whole_texts_validation(
    texts: list[str], digests: list[str], fraction: float, salt: str
) -> tuple[np.ndarray, np.ndarray]:
    """A validation split that shares no phrase with training: (validation, dropped) indices.

    Validation takes `fraction` of the whole texts (those that no other text contains), by salted
    hash; training then drops every text that occurs inside a validation text (its phrases, and
    shorter texts that happen to occur in it). The rest stays in training.
    """
    index = PhraseIndex(texts)
    whole = [i for i, text in enumerate(texts) if not index.containing(text)]
    ranked = sorted(whole, key=lambda i: hash_position(digests[i], salt))
    validation = np.sort(np.asarray(ranked[: round(fraction * len(whole))], dtype=np.int64))
    chosen = set(validation.tolist())
    held_out = PhraseIndex([texts[i] for i in validation])
    dropped = [i for i, text in enumerate(texts) if i not in chosen and held_out.containing(text, longer_only=False)]
    return validation, np.asarray(dropped, dtype=np.int64)

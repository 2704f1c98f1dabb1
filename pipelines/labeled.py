"""Labeled tables for the tasks and test sets: read, repaired, checked, split, encoded.

A task's table holds every kept example with its split (train, validation, test). Fixed splits
come from the sources (`split: train/validation/test`); `split: auto` examples are split by the
task's rules: a stratified salted-hash test share, then validation (by hash, or `whole_texts`).
Sources of fixed evaluation splits are read first, so a text in both a test and a train file
stays in test.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from lmcore.data import LabeledExamples, TokenStreamWriter, save_labeled
from lmcore.tokenizer import TextTokenizer
from pipelines.corpus import ReadSpec, expand_sources, iter_records
from pipelines.data_params import DataParams, LabeledSetParams, TaskParams
from pipelines.params import ROOT
from pipelines.splits import stratified_count, stratified_pick, whole_texts_validation
from pipelines.stages.common import logger
from pipelines.tables import DocumentCleaner

READ_ORDER = {"test": 0, "validation": 1, "train": 2, "auto": 3}


def read_labeled(labeled: LabeledSetParams, data: DataParams, quarantine: Path) -> tuple[pd.DataFrame, dict]:
    """Every kept example as a row (text, label, source split, location); the per-source counts."""
    cleaner = DocumentCleaner(data, quarantine)
    rows = []
    for source in sorted(labeled.sources, key=lambda s: READ_ORDER[s.split]):
        spec = ReadSpec(
            document_split="line",
            text_field=labeled.text_field,
            label_field=labeled.label_field,
            label=source.label,
            pattern=re.compile(source.pattern) if source.pattern else None,
            encoding=source.encoding,
            format=source.format,
        )
        for location in expand_sources([source.path], ROOT):
            logger.info("reading %s", location)
            for chunk in iter_records(location, spec, data.chunk_rows):
                for record in chunk:
                    cleaned = cleaner.clean(record)
                    if cleaned is not None:
                        rows.append({**cleaned[1], "label": record.label, "split": source.split})
    counts = cleaner.close()
    if not rows:
        raise ValueError(f"no examples were read from {[s.path for s in labeled.sources]}")
    return pd.DataFrame(rows), counts


def split_task(frame: pd.DataFrame, task: TaskParams, salt: str) -> tuple[pd.DataFrame, int]:
    """Assign test and validation to `auto` rows, take the test subset; returns (table, dropped).

    `dropped` counts training rows removed by `whole_texts` because they occur in a validation text.
    """
    frame = frame.reset_index(drop=True)
    split = frame["split"].to_numpy(dtype=object).copy()
    digests, labels, texts = (np.asarray(frame[c].tolist(), dtype=object) for c in ("hash", "label", "text"))
    auto = np.flatnonzero(split == "auto")
    if len(auto) and task.test_fraction:
        split[auto[stratified_pick(list(digests[auto]), list(labels[auto]), task.test_fraction, salt)]] = "test"
    split[split == "auto"] = "train"
    keep = np.ones(len(frame), dtype=bool)
    dropped = 0
    if task.validation_fraction and not (split == "validation").any():
        train = np.flatnonzero(split == "train")
        if task.validation_rule == "whole_texts":
            validation, removed = whole_texts_validation(
                list(texts[train]), list(digests[train]), task.validation_fraction, salt
            )
            keep[train[removed]] = False
            dropped = len(removed)
        else:
            validation = stratified_pick(list(digests[train]), list(labels[train]), task.validation_fraction, salt)
        split[train[validation]] = "validation"
    frame = frame.assign(split=split)[keep]
    return take_test_subset(frame, task.test_subset, salt).reset_index(drop=True), dropped


def take_test_subset(frame: pd.DataFrame, count: int, salt: str) -> pd.DataFrame:
    """Keep a stratified subset of `count` test rows (all of them if fewer, or if count is 0);
    other splits stay."""
    if not count:
        return frame
    test = np.flatnonzero(frame["split"].to_numpy() == "test")
    chosen = stratified_count(frame["hash"].iloc[test].tolist(), frame["label"].iloc[test].tolist(), count, salt)
    drop = np.setdiff1d(test, test[chosen])
    return frame.drop(index=frame.index[drop])


def encode_examples(tokenizer: TextTokenizer, frame: pd.DataFrame, labels: list[str], max_len: int) -> LabeledExamples:
    """Token ids of each text, cut to its last max_len tokens (reviews end with their verdict)."""
    index = {label: i for i, label in enumerate(labels)}
    ids = [row[-max_len:] for row in tokenizer.iter_encoded(frame["text"].tolist())]
    return LabeledExamples(ids, [index[label] for label in frame["label"]])


def write_task_streams(
    tokenizer: TextTokenizer, table: pd.DataFrame, task: TaskParams, out: Path, train_text: Path
) -> dict:
    """The task's examples per split (.npz in `out`) and its train texts as a token stream (LM adaptation)."""
    stats = {}
    for split in ("train", "validation", "test"):
        part = table[table["split"] == split]
        save_labeled(
            out / f"{split}.npz", encode_examples(tokenizer, part, task.labels, task.max_len), tokenizer.vocab_size
        )
        stats[split] = {
            "examples": len(part),
            "classes": part["label"].value_counts().reindex(task.labels, fill_value=0).tolist(),
        }
    with TokenStreamWriter(train_text, tokenizer.vocab_size, tokenizer.sha256()) as writer:
        tokenizer.write_documents(table.loc[table["split"] == "train", "text"], writer)
    stats["train_text_tokens"] = writer.meta.num_tokens
    return stats


def read_test_set(labeled: LabeledSetParams, data: DataParams, quarantine: Path) -> tuple[pd.DataFrame, dict]:
    """A test set's kept texts (all of them test; a stratified subset with test_subset) and counts."""
    frame, counts = read_labeled(labeled, data, quarantine)
    return take_test_subset(frame.assign(split="test"), labeled.test_subset, data.split_salt), counts


def write_test_set(
    tokenizer: TextTokenizer, frame: pd.DataFrame, labeled: LabeledSetParams, task: TaskParams, path: Path
) -> None:
    """A test set encoded for a task: its labels mapped onto the task's by name (MR's "pos" is SST-2's "1")."""
    as_task = {
        raw: task.labels[task.label_names.index(n)] for raw, n in zip(labeled.labels, labeled.label_names, strict=True)
    }
    mapped = frame.assign(label=frame["label"].map(as_task))
    save_labeled(path, encode_examples(tokenizer, mapped, task.labels, task.max_len), tokenizer.vocab_size)

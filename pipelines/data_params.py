"""The data sections of params.yaml: how sources are read and checked, the pretraining corpus,
the downstream tasks and the test sets they are also scored on.

A task is data, not code: a params entry under `tasks` (its sources, fields, labels, split rules,
label-budget curve and extra test sets) becomes the DVC stages `prepare@<task>` and
`finetune@<task>` through dvc.yaml's `foreach`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

SPLITS = ("train", "validation", "test")


def check_fractions(**fractions: float) -> None:
    """Split fractions: each in [0, 1), and together below 1 so that training keeps documents."""
    for name, value in fractions.items():
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {value}")
    if sum(fractions.values()) >= 1.0:
        raise ValueError(f"{' + '.join(fractions)} = {sum(fractions.values())} leaves no training documents")


@dataclass(frozen=True)
class DataParams:
    split_salt: str
    chunk_rows: int
    repair_mojibake: bool
    strip_markup: bool
    min_chars: int
    max_chars: int
    max_bad_char_fraction: float

    def __post_init__(self) -> None:
        if self.chunk_rows < 1:
            raise ValueError(f"chunk_rows must be at least 1, got {self.chunk_rows}")
        for name in ("min_chars", "max_chars"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.min_chars > self.max_chars:
            raise ValueError(f"min_chars={self.min_chars} is above max_chars={self.max_chars}")
        if not 0.0 <= self.max_bad_char_fraction <= 1.0:
            raise ValueError(f"max_bad_char_fraction must be in [0, 1], got {self.max_bad_char_fraction}")


@dataclass(frozen=True)
class CorpusParams:
    sources: list[str]
    document_split: Literal["blank_line", "line", "file"]
    text_field: str
    validation_fraction: float
    test_fraction: float

    def __post_init__(self) -> None:
        if not self.sources:
            raise ValueError("sources is empty: name at least one file, folder, glob or URL")
        check_fractions(validation_fraction=self.validation_fraction, test_fraction=self.test_fraction)


@dataclass(frozen=True)
class SourceParams:
    """One labeled file (or folder, glob, URL). A table gives text and label by column; a text file
    gives one example per line, labeled by `label` (one file per class) or by `pattern`."""

    path: str
    split: Literal["auto", "train", "validation", "test"] = "auto"
    label: str | None = None  # the label of every example in this source
    pattern: str | None = None  # a text line as a regex with groups (?P<text>...) and (?P<label>...)
    encoding: Literal["utf-8", "latin-1", "cp1252"] = "utf-8"
    format: Literal["auto", "text", "jsonl", "csv", "tsv", "parquet"] = "auto"  # auto: by the file's suffix

    def __post_init__(self) -> None:
        if self.pattern is None:
            return
        try:
            groups = set(re.compile(self.pattern).groupindex)
        except re.error as error:
            raise ValueError(f"pattern {self.pattern!r} is not a regular expression: {error}") from None
        wanted = {"text"} if self.label is not None else {"text", "label"}
        if not wanted <= groups:
            raise ValueError(f"pattern {self.pattern!r} needs the named groups {sorted(wanted)}, has {sorted(groups)}")


@dataclass(frozen=True)
class LabeledSetParams:
    """Labeled texts: the sources, where text and label are, the label set."""

    sources: list[SourceParams]
    text_field: str  # for table sources
    label_field: str  # for table sources without a fixed label
    labels: list[str]  # raw label values as they appear in the sources, in class-index order
    label_names: list[str]  # human-readable names, same order: what test sets of other tasks match
    test_subset: int  # 0: every test text; N: a stratified subset of N, fixed by data.split_salt

    def __post_init__(self) -> None:
        if not self.sources:
            raise ValueError("sources is empty: name at least one labeled file")
        if len(self.labels) < 2 or len(set(self.labels)) != len(self.labels):
            raise ValueError(f"labels must be two or more distinct values, got {self.labels}")
        if len(self.label_names) != len(self.labels):
            raise ValueError(f"label_names has {len(self.label_names)} names for {len(self.labels)} labels")
        if len(set(self.label_names)) != len(self.label_names):
            raise ValueError(f"label_names must be distinct, got {self.label_names}")
        for i, source in enumerate(self.sources):
            if source.label is not None and source.label not in self.labels:
                raise ValueError(f"sources[{i}].label={source.label!r} is not one of labels {self.labels}")
        if self.test_subset < 0:
            raise ValueError(f"test_subset must be >= 0 (0 is every test text), got {self.test_subset}")


@dataclass(frozen=True)
class TaskParams(LabeledSetParams):
    """A downstream classification task: what `prepare@<task>` and `finetune@<task>` read."""

    min_class_share: float  # validation: each class's share of each split is at least this
    max_class_share: float  # and at most this
    test_fraction: float  # of the `split: auto` texts, held out as test, stratified by label
    validation_fraction: float  # of the training texts, held out for early stopping and selection
    # hash: each text by its salted hash. whole_texts: validation takes only texts that no other
    # text contains, and training drops every text inside one of them (SST-2's train.tsv holds
    # the phrases of its sentences: a hash split puts near-copies of training rows in validation).
    validation_rule: Literal["hash", "whole_texts"]
    max_len: int  # tokens per text; longer texts keep their last max_len tokens
    train: dict[str, Any]  # this task's changes to finetune.train (its texts may be 20x longer)
    curve_labels: list[int]  # label budgets of the label-budget curve; [] for none
    curve_seeds: list[int]  # seeds (draws of the labeled subset) per budget
    test_on: list[str]  # names in test_sets: out-of-domain tests of this task's classifier

    def __post_init__(self) -> None:
        super().__post_init__()
        check_fractions(test_fraction=self.test_fraction, validation_fraction=self.validation_fraction)
        for name in ("min_class_share", "max_class_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.min_class_share > self.max_class_share:
            raise ValueError(f"min_class_share={self.min_class_share} is above max_class_share={self.max_class_share}")
        if self.max_len < 1:
            raise ValueError(f"max_len must be at least 1, got {self.max_len}")
        if len(self.curve_seeds) != len(self.curve_labels):
            raise ValueError(
                f"curve_seeds has {len(self.curve_seeds)} entries for {len(self.curve_labels)} curve_labels"
            )
        if any(n < len(self.labels) for n in self.curve_labels) or any(s < 1 for s in self.curve_seeds):
            raise ValueError(
                f"curve_labels need at least one label per class ({len(self.labels)}) and curve_seeds at least 1,"
                f" got {self.curve_labels} and {self.curve_seeds}"
            )
        if sorted(set(self.curve_labels)) != list(self.curve_labels):
            raise ValueError(f"curve_labels must increase, got {self.curve_labels}")


@dataclass(frozen=True)
class ValidateParams:
    max_quarantined_share: float  # of a table's documents; more fails validation
    min_docs_per_split: int
    min_chars_per_split: int

    def __post_init__(self) -> None:
        for name in ("min_docs_per_split", "min_chars_per_split"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.max_quarantined_share <= 1.0:
            raise ValueError(f"max_quarantined_share must be in [0, 1], got {self.max_quarantined_share}")


def is_task_name(name: str) -> bool:
    """A name DVC stage keys and output folders can carry (tasks, test sets, text tasks)."""
    return re.fullmatch(r"[a-z0-9][a-z0-9_]*", name) is not None


def check_tasks(tasks: dict[str, TaskParams], test_sets: dict[str, LabeledSetParams]) -> None:
    """Task names that DVC and file paths can carry; each task's test sets exist and share its label names."""
    if not tasks:
        raise ValueError("tasks is empty: name at least one downstream task")
    for name in {**tasks, **test_sets}:
        if not is_task_name(name):
            raise ValueError(f"task or test set name {name!r} must be lowercase letters, digits and _")
    for name, task in tasks.items():
        for other in task.test_on:
            if other not in test_sets:
                raise ValueError(f"tasks.{name}.test_on names {other!r}, which is not in test_sets {sorted(test_sets)}")
            if sorted(test_sets[other].label_names) != sorted(task.label_names):
                raise ValueError(
                    f"tasks.{name}.test_on: test set {other!r} has label_names {test_sets[other].label_names},"
                    f" the task {task.label_names}"
                )

import hashlib

import numpy as np
import pandas as pd
import pytest

from pipelines.data_params import SourceParams, TaskParams
from pipelines.labeled import split_task
from pipelines.splits import budget_subset, stratified_count, stratified_pick, whole_texts_validation


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_stratified_pick_takes_each_class_share_and_is_stable():
    labels = ["a"] * 80 + ["b"] * 20
    digests = [digest(str(i)) for i in range(100)]
    picked = stratified_pick(digests, labels, 0.2, "salt")
    assert [labels[i] for i in picked].count("a") == 16 and [labels[i] for i in picked].count("b") == 4
    # adding documents never moves an old one out of the held-out split
    grown = stratified_pick([*digests, *(digest(f"new{i}") for i in range(100))], labels + labels, 0.2, "salt")
    assert len(set(picked) - set(grown)) <= 2  # only the rounding boundary may move
    assert not np.array_equal(picked, stratified_pick(digests, labels, 0.2, "other salt"))
    assert (
        len(stratified_count(digests, labels, 10, "salt")) == 10
        and len(stratified_count(digests, labels, 500, "s")) == 100
    )


@pytest.mark.parametrize("count", [3, 10, 57])
def test_a_label_budget_keeps_class_proportions_and_every_class(count):
    labels = np.array([0] * 90 + [1] * 9 + [2] * 1)
    chosen = budget_subset(labels, count, seed=4)
    assert len(chosen) == count and len(set(chosen)) == count
    assert set(labels[chosen]) == {0, 1, 2}
    assert np.array_equal(chosen, budget_subset(labels, count, seed=4))
    assert not np.array_equal(chosen, budget_subset(labels, count, seed=5)) or count == 100


def test_whole_texts_validation_shares_no_phrase_with_training():
    sentences = [f"the {w} film is {v} ." for w in ("first", "second", "third", "fourth") for v in ("good", "bad")]
    phrases = [s.split(" is ")[1] for s in sentences] + [s.rsplit(" ", 1)[0] for s in sentences]
    texts = sentences + phrases  # every phrase of a sentence is a row too, as in SST-2's train.tsv
    validation, dropped = whole_texts_validation(texts, [digest(t) for t in texts], 0.25, "salt")
    assert len(validation) == 2 and all(texts[i] in sentences for i in validation)
    kept = [t for i, t in enumerate(texts) if i not in set(validation) | set(dropped)]
    for i in validation:
        assert not any(f" {t} " in f" {texts[i]} " for t in kept)  # no training text inside a validation text
    assert all(texts[i] not in sentences for i in dropped)


def task(**changes) -> TaskParams:
    values = dict(
        sources=[SourceParams("x.tsv")],
        text_field="text",
        label_field="label",
        labels=["0", "1"],
        label_names=["neg", "pos"],
        test_subset=0,
        min_class_share=0.0,
        max_class_share=1.0,
        test_fraction=0.2,
        validation_fraction=0.1,
        validation_rule="hash",
        max_len=8,
        train={},
        curve_labels=[],
        curve_seeds=[],
        test_on=[],
    )
    return TaskParams(**{**values, **changes})


def frame(count: int, split: str = "auto") -> pd.DataFrame:
    texts = [f"text number {i}" for i in range(count)]
    return pd.DataFrame(
        {"text": texts, "hash": [digest(t) for t in texts], "label": ["0", "1"] * (count // 2), "split": split}
    )


def test_auto_rows_get_a_stratified_test_then_validation_and_a_test_subset():
    table, dropped = split_task(frame(200), task(), "salt")
    counts = table.groupby(["split", "label"]).size().to_dict()
    assert counts == {("test", "0"): 20, ("test", "1"): 20, ("validation", "0"): 8, ("validation", "1"): 8,
                      ("train", "0"): 72, ("train", "1"): 72} and dropped == 0  # fmt: skip
    subset, _ = split_task(frame(200), task(test_subset=10), "salt")
    assert (subset["split"] == "test").sum() == 10 and (subset["split"] != "test").sum() == 160


def test_fixed_splits_stay_and_validation_comes_from_training():
    fixed = pd.concat([frame(100, "train"), frame(20, "test").assign(text=lambda f: "t" + f["text"])])
    table, _ = split_task(fixed, task(), "salt")
    assert (table["split"] == "test").sum() == 20 and (table["split"] == "validation").sum() == 10

import json

import pandas as pd
import pytest

from pipelines.data_params import DataParams, ValidateParams
from pipelines.expectations import Table, validate_tables
from pipelines.stages.common import json_dump

DATA = DataParams(
    split_salt="s",
    chunk_rows=10,
    repair_mojibake=True,
    strip_markup=True,
    min_chars=1,
    max_chars=50,
    max_bad_char_fraction=0.01,
)
PARAMS = ValidateParams(max_quarantined_share=0.25, min_docs_per_split=1, min_chars_per_split=1)


def table(texts, labels, sources, rows):
    return pd.DataFrame(
        {
            "doc_id": [f"id{i}" for i in range(len(texts))],
            "hash": [f"hash{i}" for i in range(len(texts))],
            "split": ["train"] * len(texts),
            "text": texts,
            "n_chars": [len(t) for t in texts],
            "bad_char_fraction": [0.0] * len(texts),
            "source": sources,
            "row": rows,
            "label": labels,
        }
    )


def quarantined(source, row, reason="longer than max_chars=50"):
    return {"source": source, "row": row, "reason": reason, "n_chars": 80, "bad_char_fraction": 0.0, "text": "x"}


def test_a_failed_row_check_names_file_and_row(tmp_path):
    labeled = table(
        ["fine film", "dull", "odd one"], ["1", "0", "7"], ["data/a.tsv", "data/a.tsv", "data/b.tsv"], [1, 2, 5]
    )
    tables = {"labeled": Table(labeled, ["0", "1"], ["train"], [quarantined("data/notes.txt", 12)] * 2)}
    success, failures, results = validate_tables(tables, DATA, PARAMS, tmp_path)
    assert not success
    described = {(f.suite, f.expectation): f.describe() for f in failures}
    assert described["labeled", "expect_column_values_to_be_in_set"].endswith("examples: ['7']; at data/b.tsv row 5")
    # 2 of 5 documents quarantined is above the 25% allowed; a text file's position is its line
    quarantine = [f for f in failures if f.suite == "labeled.documents"]
    assert len(quarantine) == 1 and quarantine[0].unexpected_count == 2 and quarantine[0].element_count == 5
    assert quarantine[0].describe().endswith("at data/notes.txt line 12, data/notes.txt line 12")
    json_dump(tmp_path / "results.json", results)  # GE's numpy row numbers still serialise
    assert json.loads((tmp_path / "results.json").read_text())["labeled"]["success"] is False


@pytest.mark.parametrize("aside", [0, 1])
def test_clean_tables_pass_with_quarantine_within_its_share(tmp_path, aside):
    labeled = table(["fine film", "dull", "great", "bad"], ["1", "0", "1", "0"], ["data/a.tsv"] * 4, [1, 2, 3, 4])
    tables = {"labeled": Table(labeled, ["0", "1"], ["train"], [quarantined("data/a.tsv", 5)] * aside, (0.4, 0.6))}
    success, failures, _ = validate_tables(tables, DATA, PARAMS, tmp_path)
    assert success and failures == []


def test_class_shares_are_checked_per_split(tmp_path):
    labeled = table(["fine film", "dull", "great", "good"], ["1", "0", "1", "1"], ["data/a.tsv"] * 4, [1, 2, 3, 4])
    tables = {"labeled": Table(labeled, ["0", "1"], ["train"], [], (0.4, 0.6))}
    success, failures, _ = validate_tables(tables, DATA, PARAMS, tmp_path)
    assert not success and {f.suite for f in failures} == {"labeled.train"}

import json

import pandas as pd

from pipelines.corpus import json_dump
from pipelines.expectations import validate_tables
from pipelines.params import ValidateParams

PARAMS = ValidateParams(
    min_chars=1,
    max_chars=50,
    max_bad_char_fraction=0.01,
    min_docs_per_split=1,
    min_chars_per_split=1,
    min_class_share=0.0,
    max_class_share=1.0,
)


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


def test_a_failed_row_check_names_file_and_row(tmp_path):
    labeled = table(
        ["fine film", "dull", "odd one", "x" * 80],
        ["1", "0", "7", "1"],
        ["data/a.tsv", "data/a.tsv", "data/b.tsv", "data/notes.txt"],
        [1, 2, 5, 12],
    )
    success, failures, results = validate_tables({"labeled": (labeled, ["0", "1"], ["train"])}, PARAMS, tmp_path)
    assert not success
    described = {f.expectation: f.describe() for f in failures}
    assert described["expect_column_values_to_be_in_set"].endswith("examples: ['7']; at data/b.tsv row 5")
    # a text file's position is its line
    assert described["expect_column_value_lengths_to_be_between"].endswith("at data/notes.txt line 12")
    json_dump(tmp_path / "results.json", results)  # GE's numpy row numbers still serialise
    assert json.loads((tmp_path / "results.json").read_text())["labeled"]["success"] is False


def test_clean_tables_pass(tmp_path):
    labeled = table(["fine film", "dull"], ["1", "0"], ["data/a.tsv"] * 2, [1, 2])
    success, failures, _ = validate_tables({"labeled": (labeled, ["0", "1"], ["train"])}, PARAMS, tmp_path)
    assert success and failures == []

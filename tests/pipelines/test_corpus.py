import functools
import gzip
import http.server
import json
import threading

import pandas as pd
import pytest

from pipelines.corpus import (
    ReadSpec,
    SourceError,
    expand_sources,
    iter_records,
    iter_text_documents,
    text_hash,
)
from pipelines.splits import assign_split


def records(location, rule="blank_line", text_field="text", label_field=None, chunk_rows=3, **spec):
    spec = ReadSpec(document_split=rule, text_field=text_field, label_field=label_field, **spec)
    return [r for chunk in iter_records(str(location), spec, chunk_rows) for r in chunk]


def test_text_is_normalised_and_split_into_documents(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes("\ufeffOne\r\nline\r\n\r\nCafe\u0301\n\nthree".encode())
    texts = [r.text for r in records(path)]
    assert texts == ["One\nline", "Caf\u00e9", "three"]
    assert [r.text for r in records(path, rule="line") if r.text] == ["One", "line", "Caf\u00e9", "three"]
    assert [r.text for r in records(path, rule="file")] == ["One\nline\n\nCaf\u00e9\n\nthree"]


def test_documents_split_across_read_blocks(tmp_path, monkeypatch):
    import pipelines.corpus as corpus

    monkeypatch.setattr(corpus, "READ_BLOCK", 7)
    path = tmp_path / "a.txt"
    path.write_text("alpha beta\n\ngamma delta epsilon\n\nzeta\u00e9\u00e9\u00e9")
    assert list(iter_text_documents(str(path), "blank_line")) == [
        (1, "alpha beta"),
        (3, "gamma delta epsilon"),
        (5, "zeta\u00e9\u00e9\u00e9"),
    ]


def test_crlf_split_across_read_blocks_stays_one_line_break(tmp_path, monkeypatch):
    import pipelines.corpus as corpus

    monkeypatch.setattr(corpus, "READ_BLOCK", 4)  # the first block ends between a CR and its LF
    path = tmp_path / "a.txt"
    path.write_bytes(b"abc\r\ndef\r\n\r\nghi\r")
    assert [(r.row, r.text) for r in records(path)] == [(1, "abc\ndef"), (4, "ghi")]


def test_text_records_know_their_first_line_and_skip_blank_documents(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("\n\nfirst\n  indented\n\n\n\nsecond\n\n \n\n")
    assert [(r.row, r.text) for r in records(path)] == [(3, "first\n  indented"), (8, "second")]
    assert [(r.row, r.text) for r in records(path, rule="line")] == [(3, "first"), (4, "  indented"), (8, "second")]
    assert [(r.row, r.text) for r in records(path, rule="file")] == [(3, "first\n  indented\n\n\n\nsecond\n\n ")]


@pytest.mark.parametrize("compress", [False, True])
def test_tables_of_every_format(tmp_path, compress):
    frame = pd.DataFrame({"body": ["first text", "second, with comma", "third"], "label": ["1", "0", "1"]})
    frame.to_csv(tmp_path / "t.csv", index=False)
    frame.to_csv(tmp_path / "t.tsv", sep="\t", index=False)
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(row) + "\n" for row in frame.to_dict("records")))
    frame.to_parquet(tmp_path / "t.parquet")
    for name in ("t.csv", "t.tsv", "t.jsonl", "t.parquet"):
        path = tmp_path / name
        if compress:
            gz = tmp_path / (name + ".gz")
            gz.write_bytes(gzip.compress(path.read_bytes()))
            path = gz
        got = records(path, text_field="body", label_field="label", chunk_rows=2)
        assert [(r.text, r.label) for r in got] == list(zip(frame["body"], frame["label"], strict=True)), name
        assert [r.row for r in got] == [1, 2, 3], name  # counted across chunks of 2


def test_expand_folders_and_globs(tmp_path):
    (tmp_path / "c" / "sub").mkdir(parents=True)
    for name in ("c/a.txt", "c/sub/b.md", "c/skip.bin", "c/d.txt.gz"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.split("/c/")[1] for p in expand_sources(["c"], tmp_path)] == ["a.txt", "d.txt.gz", "sub/b.md"]
    assert [p.split("/c/")[1] for p in expand_sources(["c/*.txt"], tmp_path)] == ["a.txt"]
    with pytest.raises(SourceError, match="does not exist"):
        expand_sources(["nope.txt"], tmp_path)
    with pytest.raises(SourceError, match="matched no files"):
        expand_sources(["c/*.csv"], tmp_path)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "the file is empty"),
        (b"ok text\x00\x01\x02", "NUL byte at offset 7"),
        (b"abc\xff\xfe", "invalid UTF-8 at byte offset 3"),
    ],
)
def test_bad_text_names_file_and_problem(tmp_path, content, message):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(SourceError, match=message) as error:
        records(path)
    assert "bad.txt" in str(error.value)


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("t.jsonl", '{"text": "a", "label": 1}\n\n{"text": "b", "label": \n', "line 3 is not valid JSON"),
        ("t.jsonl", '{"text": "a", "label": 1}\n["b", 0]\n', "line 2 is not a JSON object"),
        ("t.jsonl", '{"text": "a", "label": 1}\n{"text": "b"}\n', "line 2: missing column 'label'"),
        ("t.csv", 'text,label\n"a",1\n"b,0\n', "EOF inside string starting at row 2"),
        ("t.tsv", "text\tlabel\na\t1\nb\t0\t9\n", "Expected 2 fields in line 3, saw 3"),
    ],
)
def test_bad_table_rows_name_file_and_line(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(SourceError, match=message) as error:
        records(tmp_path / name, label_field="label")
    assert str(error.value).startswith(str(tmp_path / name))


def test_missing_column_is_named(tmp_path):
    (tmp_path / "t.csv").write_text("text,label\nhello,1\n")
    with pytest.raises(SourceError, match="missing column 'sentence'"):
        records(tmp_path / "t.csv", text_field="sentence", label_field="label")


def test_reads_from_an_http_url(tmp_path):
    (tmp_path / "remote.txt").write_text("served doc one\n\nserved doc two\n")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/remote.txt"
        assert [r.text for r in records(url)] == ["served doc one", "served doc two"]
        with pytest.raises(SourceError, match="cannot download"):
            records(url.replace("remote", "missing"))
    finally:
        server.shutdown()
        server.server_close()


def test_split_assignment_is_stable_and_proportional():
    digests = [text_hash(f"document {i}") for i in range(20000)]
    splits = [assign_split(d, "salt", 0.1, 0.05) for d in digests]
    assert abs(splits.count("validation") / 20000 - 0.1) < 0.01
    assert abs(splits.count("test") / 20000 - 0.05) < 0.01
    # Adding documents never moves an old one: the split depends on its own hash only.
    assert splits[:100] == [assign_split(d, "salt", 0.1, 0.05) for d in digests[:100]]
    assert splits != [assign_split(d, "other salt", 0.1, 0.05) for d in digests]


def test_labeled_text_lines_by_pattern_and_by_source_label(tmp_path):
    import re

    trec = tmp_path / "TREC.train"
    trec.write_bytes("DESC:manner How did serfdom develop ?\nNUM:date When was Caf\xe9 opened ?\n".encode("latin-1"))
    pattern = re.compile(r"(?P<label>[A-Z]+):\S+ (?P<text>.+)")
    found = records(trec, "line", label_field="label", pattern=pattern, encoding="latin-1", format="text")
    assert [(r.row, r.label, r.text) for r in found] == [
        (1, "DESC", "How did serfdom develop ?"),
        (2, "NUM", "When was Caf\u00e9 opened ?"),
    ]
    positive = tmp_path / "rt-polarity.pos"
    positive.write_text("a fine film .\n\nwitty .\n")
    assert [(r.label, r.text) for r in records(positive, "line", label="pos", format="text")] == [
        ("pos", "a fine film ."),
        ("pos", "witty ."),
    ]
    with pytest.raises(
        SourceError, match="rt-polarity.pos: unsupported file type '.pos'.* or give the source a format"
    ):
        records(positive, "line", label="pos")


def test_a_line_that_breaks_the_pattern_or_the_encoding_is_named(tmp_path):
    import re

    sms = tmp_path / "sms.txt"
    sms.write_text("ham\tfine\nspam\tWIN now\nmaybe\tthis\n")
    pattern = re.compile(r"(?P<label>ham|spam)\t(?P<text>.*)")
    with pytest.raises(SourceError, match=r"sms.txt: line 3 does not match the pattern"):
        records(sms, "line", label_field="label", pattern=pattern)
    with pytest.raises(SourceError, match="a text file needs a source label or a pattern"):
        records(sms, "line", label_field="label")
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(SourceError, match="latin.txt: invalid UTF-8 at byte offset 3"):
        records(latin, "line")
    with pytest.raises(SourceError, match="latin.txt: invalid cp1252 at byte offset 0"):
        latin.write_bytes(b"\x81 undefined in cp1252\n")
        records(latin, "line", encoding="cp1252")

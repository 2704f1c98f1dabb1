import json

from pipelines.cleaning import Repairs, repair
from pipelines.corpus import Record
from pipelines.data_params import DataParams
from pipelines.tables import DocumentCleaner

BOTH = Repairs(repair_mojibake=True, strip_markup=True)


def test_mojibake_is_repaired_and_counted():
    # cp1252 punctuation decoded as C1 controls (IMDb's em dash and ellipsis), UTF-8 read as latin-1
    assert repair("It\x97the end\x85", BOTH) == ("It\u2014the end\u2026", ["mojibake"])
    assert repair("caf\u00c3\u00a9", BOTH) == ("caf\u00e9", ["mojibake"])
    # quotes and widths are the writer's: not repaired
    assert repair("\u201cquoted\u201d \uff21", BOTH) == ("\u201cquoted\u201d \uff21", [])
    assert repair("It\x97the end", Repairs(repair_mojibake=False, strip_markup=True)) == ("It\x97the end", [])


def test_markup_goes_but_other_angle_brackets_stay():
    text = "Great.<br /><br />I <i>loved</i> it <sighs> <BR>end<p>"
    assert repair(text, BOTH) == ("Great.\n\nI loved it <sighs> \nend\n", ["markup"])
    assert repair("a < b and c > d", BOTH) == ("a < b and c > d", [])


def test_a_document_that_breaks_a_rule_is_quarantined_with_its_place(tmp_path):
    data = DataParams("s", 10, True, True, min_chars=3, max_chars=20, max_bad_char_fraction=0.1)
    cleaner = DocumentCleaner(data, tmp_path / "quarantine.jsonl")
    source = "/elsewhere/reviews.jsonl"
    kept = [
        cleaner.clean(Record(text, source, row))
        for row, text in enumerate(
            ["fine <br />film", "ok", "x" * 30, "\ufffd\ufffdbad", "fine <br />film", "go\x85"], 1
        )
    ]
    assert [k[1]["text"] if k else None for k in kept] == ["fine \nfilm", None, None, None, None, "go\u2026"]
    assert kept[0][1]["row"] == 1 and kept[0][1]["source"] == source
    counts = cleaner.close()[source]
    assert counts == {
        "read": 6,
        "repaired_markup": 2,
        "repaired_mojibake": 1,
        "quarantined": 3,
        "duplicates_dropped": 1,
        "kept": 2,
    }
    aside = [json.loads(line) for line in (tmp_path / "quarantine.jsonl").read_text().splitlines()]
    assert [(q["row"], q["reason"].split(" ")[0]) for q in aside] == [(2, "shorter"), (3, "longer"), (4, "bad")]

"""Extractive QA: SQuAD v1.1's normalization, exact match and F1, the file reader and its errors,
the prompts, and the baseline."""

import gzip
import json
from pathlib import Path

import pytest
import yaml

from lmcore.text_to_text import RESPONSE_MARKER
from lmcore.tokenizer import TokenizerConfig, train_tokenizer
from pipelines.params import load_params
from pipelines.qa import (
    ANSWER_CUE,
    Question,
    best_sentence,
    exact_match,
    normalize_answer,
    qa_scores,
    read_squad,
    template_prompts,
    token_f1,
    zero_shot_prompt,
)

ROOT = Path(__file__).resolve().parents[2]


def test_normalization_exact_match_and_f1_follow_squad_v1_1():
    assert normalize_answer("The  Denver Broncos!") == "denver broncos"
    assert normalize_answer("an apple, a pear") == "apple pear"
    assert exact_match("the Denver Broncos.", ("Denver Broncos", "Broncos")) == 1.0
    assert exact_match("Broncos of Denver", ("Denver Broncos",)) == 0.0
    # 2 words in common: precision 2/3, recall 2/2, F1 0.8; the best over the gold answers
    assert token_f1("Denver Broncos team", ("Denver Broncos",)) == pytest.approx(0.8)
    assert token_f1("Denver Broncos team", ("Carolina", "Denver Broncos team")) == 1.0
    assert token_f1("", ("Denver",)) == 0.0 and token_f1("the", ("a",)) == 0.0  # nothing left after normalizing


def test_the_shipped_xquad_file_reads_as_squad():
    questions = read_squad(ROOT / "data/xquad/xquad.en.json.gz")
    assert len(questions) == 1190 and len({q.id for q in questions}) == 1190
    first = questions[0]
    assert first.question == "How many points did the Panthers defense surrender?" and first.answers == ("308",)
    assert first.context.startswith("The Panthers defense gave up just 308 points")
    spread = read_squad(ROOT / "data/xquad/xquad.en.json.gz", limit=5)  # evenly through the file
    assert spread == [questions[i] for i in (0, 297, 594, 892, 1189)]
    assert read_squad(ROOT / "data/xquad/xquad.en.json.gz", limit=1) == questions[:1]


def write_squad(path: Path, paragraph: dict) -> Path:
    path.write_bytes(gzip.compress(json.dumps({"data": [{"title": "t", "paragraphs": [paragraph]}]}).encode()))
    return path


@pytest.mark.parametrize(
    "paragraph, message",
    [
        ({"qas": []}, r"data\[0\].paragraphs\[0\] needs a 'context' string"),
        ({"context": "c", "qas": [{"question": "q?", "answers": []}]}, r"data\[0\].paragraphs\[0\].qas\[0\] needs"),
        ({"context": "c", "qas": [{"answers": [{"text": "a"}]}]}, r"qas\[0\] needs a 'question'"),
        ({"context": "c", "qas": []}, "no questions"),
    ],
)
def test_a_malformed_squad_file_is_named_with_the_entry(tmp_path, paragraph, message):
    path = write_squad(tmp_path / "bad.json.gz", paragraph)
    with pytest.raises(ValueError, match=message) as error:
        read_squad(path)
    assert "bad.json.gz" in str(error.value)


def test_a_file_that_is_not_json_is_named(tmp_path):
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(ValueError, match="junk.json: not a readable SQuAD JSON file"):
        read_squad(tmp_path / "junk.json")


def test_scores_are_percent_with_intervals():
    questions = [Question(str(i), "c", "q?", (answer,)) for i, answer in enumerate(["red", "blue car", "green"])]
    perfect = qa_scores(["Red.", "the blue car", "green"], questions, bootstrap=200)
    assert (perfect["exact_match"], perfect["f1"]) == (100.0, 100.0)
    partial = qa_scores(["red", "blue", "yellow"], questions, bootstrap=200)
    assert partial["exact_match"] == pytest.approx(33.33) and partial["f1"] == pytest.approx(
        100 * (1 + 2 / 3) / 3, abs=0.01
    )
    assert partial["f1_ci_low"] <= partial["f1"] <= partial["f1_ci_high"]


def test_the_baseline_answers_with_the_sentence_closest_to_the_question():
    context = "The sky is blue. The Panthers scored 24 points in the game. Rain fell."
    question = Question("1", context, "How many points did the Panthers score?", ("24",))
    assert best_sentence(question) == "The Panthers scored 24 points in the game."


@pytest.fixture(scope="module")
def tokenizer():
    text = "abcdefgh Question: Answer:\n?" + RESPONSE_MARKER + "Read: "
    return train_tokenizer([text], TokenizerConfig(kind="char"))


def test_a_long_passage_loses_its_start_and_the_question_stays(tokenizer):
    question = Question("1", "abcdefgh" * 20, "ab?", ("a",))
    ids = zero_shot_prompt(tokenizer, question, max_len=40)
    assert len(ids) == 40 and ids[0] == tokenizer.eot_id
    assert tokenizer.decode(ids[1:]).endswith(f"\nQuestion: ab?{ANSWER_CUE}")
    (prompt,) = template_prompts(tokenizer, [question], "Read: ", max_len=40)
    assert len(prompt) < 40 and prompt[0] == tokenizer.eot_id  # room is left for the response
    assert tokenizer.decode(prompt[1:]).endswith(f"\nQuestion: ab?{RESPONSE_MARKER}")


def test_bad_qa_settings_are_refused_by_key(tmp_path):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["qa"]["questions"] = -1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ValueError, match="qa.questions must be >= 0"):
        load_params(tmp_path / "params.yaml")


def test_the_report_tables_each_model_beside_the_baseline():
    from pipelines.report import build_summary, qa_lines

    questions = [Question(str(i), "c", "q?", (answer,)) for i, answer in enumerate(["red", "blue car"])]
    scores = qa_scores(["red", "car"], questions, bootstrap=100)
    qa = {"questions": 2, "models": {"zero_shot": scores}, "baselines": {"best_sentence": scores}}
    summary = build_summary({}, {}, qa=qa)
    assert summary["qa"] == qa
    lines = qa_lines(summary, "question: q?")
    assert lines[0] == "## Question answering, never trained on (2 questions)"
    assert f"| zero shot | 50.00 ({scores['exact_match_ci_low']:.2f}-" in "\n".join(lines)
    assert any(line.startswith("| baseline: best sentence |") for line in lines) and "question: q?" in lines

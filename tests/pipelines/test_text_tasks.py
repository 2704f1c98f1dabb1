"""Text-to-text tasks: their params, the four source formats and their errors, the scores."""

import gzip
import json
from pathlib import Path

import pytest
import yaml

from pipelines.params import load_params
from pipelines.text_params import PairSourceParams, lora_settings, train_config
from pipelines.text_tasks import dialogue_scores, distinct, read_pairs, task_pairs, translation_scores

ROOT = Path(__file__).resolve().parents[2]


def write_params(tmp_path: Path, change) -> Path:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    change(params["text_tasks"]["translate_en_de"], params)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def test_the_shipped_translation_task_reads_multi30k():
    params = load_params(ROOT / "params.yaml")
    task = params.text_tasks["translate_en_de"]
    pairs = task_pairs(task, ROOT)
    assert {split: len(rows) for split, rows in pairs.items()} == {"train": 29000, "validation": 1014, "test": 200}
    prompt, response = pairs["test"][0]
    assert prompt == "Translate English to German: A man in an orange hat starring at something."
    assert response == "Ein Mann mit einem orangefarbenen Hut, der etwas anstarrt."
    recipe = train_config(params.finetune.train, task, "translate_en_de")
    assert (recipe.max_steps, recipe.batch_size, recipe.early_stopping_patience) == (300, 32, 0)
    assert recipe.learning_rate == params.finetune.train.learning_rate  # the rest is finetune.train's
    assert lora_settings(task, "translate_en_de") is None  # rank 0: full finetuning


def test_the_shipped_dialogue_task_reads_dailydialog_turn_by_turn():
    task = load_params(ROOT / "params.yaml").text_tasks["dailydialog"]
    pairs = task_pairs(task, ROOT)
    # 87,170 training turns of 11,118 dialogues: every turn but each dialogue's first is a response
    assert {split: len(rows) for split, rows in pairs.items()} == {"train": 76052, "validation": 7069, "test": 200}
    assert pairs["test"][0] == ("Reply to the conversation:\nHey man , you wanna buy some weed ?", "Some what ?")
    prompt, response = pairs["test"][3]  # two turns of history, one line each
    assert prompt.split("\n")[1:] == [
        "Weed ! You know ? Pot , Ganja , Mary Jane some chronic !",
        "Oh , umm , no thanks .",
    ]
    assert response == "I also have blow if you prefer to do a few lines ."


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda t, p: t["sources"].pop(), "sources name no test split"),
        (lambda t, p: t["train"].update(max_stepz=3), "text_tasks.translate_en_de.train"),
        (lambda t, p: t["lora"].update(rank=-1), "lora.rank must be >= 0"),
        (lambda t, p: t["lora"].update(rank=4, alpha=0), "LoRA alpha must be > 0"),
        (lambda t, p: t["decode"].update(beam_size=0), "beam_size and max_new_tokens must be >= 1"),
        (lambda t, p: t.update(metric="rouge"), "metric"),
        (lambda t, p: t.update(arch="gpt"), "arch is for init: scratch"),
        (lambda t, p: t.update(init="scratch", arch="transformer"), "text_tasks.translate_en_de.arch"),
        (lambda t, p: t.update(init="scratch", arch="gpt", max_len=300), "max_len=300 exceeds model.gpt.block_size"),
        (lambda t, p: p["text_tasks"].update(sst2=p["text_tasks"]["translate_en_de"]), "not a task's name"),
    ],
)
def test_a_bad_text_task_is_refused_by_key(tmp_path, change, message):
    with pytest.raises(ValueError, match=message) as error:
        load_params(write_params(tmp_path, change))
    assert "params.yaml" in str(error.value)


def test_lora_settings_come_from_params(tmp_path):
    params = load_params(write_params(tmp_path, lambda t, p: t.update(lora={"rank": 4, "alpha": 8.0})))
    task = params.text_tasks["translate_en_de"]
    settings = lora_settings(task, "translate_en_de")
    assert (settings.rank, settings.alpha) == (4, 8.0)
    assert train_config(params.finetune.train, task, "translate_en_de").batch_threads == 1  # unsharded
    with pytest.raises(ValueError, match="batch_threads must be 0 or 1 with LoRA"):
        load_params(write_params(tmp_path, lambda t, p: t.update(lora={"rank": 4}, train={"batch_threads": 2})))


def write_gz(path: Path, lines: list[str]) -> str:
    path.write_bytes(gzip.compress("".join(line + "\n" for line in lines).encode()))
    return path.name


def test_each_source_format_gives_prompt_response_pairs(tmp_path):
    prompts, responses = (
        write_gz(tmp_path / "a.en.gz", ["one", "two"]),
        write_gz(tmp_path / "a.de.gz", ["eins", "zwei"]),
    )
    parallel = PairSourceParams(path=prompts, split="train", response_path=responses)
    assert read_pairs(parallel, tmp_path) == [("one", "eins"), ("two", "zwei")]
    rows = [
        {"prompt": "Q?", "response": "A."},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
    ]
    (tmp_path / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    assert read_pairs(PairSourceParams(path="rows.jsonl", split="test"), tmp_path) == [
        ("Q?", "A."),
        ("user: hi", "hello"),
    ]


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", r"rows.jsonl:2: not JSON"),
        ('{"prompt": "Q?"}', r"rows.jsonl:2: a row needs 'prompt' and 'response', or 'messages'"),
        ('{"prompt": "Q?", "response": 3}', r"rows.jsonl:2: 'prompt' and 'response' must be strings"),
        ('{"messages": [{"role": "assistant", "content": "x"}]}', r"rows.jsonl:2: a chat needs at least one turn"),
    ],
)
def test_a_bad_row_is_named_by_file_and_line(tmp_path, line, message):
    (tmp_path / "rows.jsonl").write_text('{"prompt": "ok", "response": "ok"}\n' + line + "\n")
    with pytest.raises(ValueError, match=message):
        read_pairs(PairSourceParams(path="rows.jsonl", split="train"), tmp_path)


def test_a_parallel_text_of_unequal_lengths_names_both_files(tmp_path):
    source = PairSourceParams(
        path=write_gz(tmp_path / "p.gz", ["a", "b"]), split="train", response_path=write_gz(tmp_path / "r.gz", ["x"])
    )
    with pytest.raises(ValueError, match="p.gz has 2 lines, r.gz 1"):
        read_pairs(source, tmp_path)


def test_translation_scores_rank_the_reference_above_copying_the_source():
    references = ["ein Hund läuft über die Wiese", "zwei Männer spielen Fußball im Park", "eine Frau liest ein Buch"]
    sources = ["a dog runs across the meadow", "two men play football in the park", "a woman reads a book"]
    perfect = translation_scores(references, references, sources, bootstrap=100)
    assert perfect["bleu"] == pytest.approx(100.0) and perfect["chrf"] == pytest.approx(100.0)
    copy_source = perfect["baselines"]["copy_source"]
    assert copy_source["bleu"] < 5 and copy_source["chrf"] < perfect["chrf"]
    copied = translation_scores(sources, references, sources, bootstrap=100)
    assert copied["bleu"] == copy_source["bleu"]
    assert copied["bleu_ci_low"] <= copied["bleu"] + 1e-9 and "nrefs:1" in copied["bleu_signature"]
    assert copied["baselines"]["copy_source"]["paired"]["bleu"] == {"diff": 0.0, "ci_low": 0.0, "ci_high": 0.0}
    gain = perfect["baselines"]["copy_source"]["paired"]["chrf"]
    assert gain["diff"] == pytest.approx(perfect["chrf"] - copy_source["chrf"], abs=0.011)
    assert 0 < gain["ci_low"] <= gain["diff"] <= gain["ci_high"]


def test_a_dialogue_gives_one_pair_per_turn_after_the_first(tmp_path):
    write_gz(
        tmp_path / "d.gz",
        ["Hi . __eou__ Hello ! __eou__ How are you ? __eou__ Fine . __eou__", "", "A __eou__ B __eou__"],
    )
    whole = read_pairs(PairSourceParams(path="d.gz", split="train", turn_separator="__eou__"), tmp_path)
    assert whole == [
        ("Hi .", "Hello !"),
        ("Hi .\nHello !", "How are you ?"),
        ("Hi .\nHello !\nHow are you ?", "Fine ."),
        ("A", "B"),
    ]
    last = read_pairs(PairSourceParams(path="d.gz", split="train", turn_separator="__eou__", history_turns=1), tmp_path)
    assert [prompt for prompt, _ in last] == ["Hi .", "Hello !", "How are you ?", "A"]


@pytest.mark.parametrize("line", ["Only one turn . __eou__", "A __eou__ __eou__ B __eou__"])
def test_a_dialogue_without_two_turns_is_named_by_file_and_line(tmp_path, line):
    write_gz(tmp_path / "d.gz", ["A __eou__ B __eou__", line])
    with pytest.raises(ValueError, match=r"d.gz:2: a dialogue needs two or more non-empty turns"):
        read_pairs(PairSourceParams(path="d.gz", split="train", turn_separator="__eou__"), tmp_path)


def test_a_source_is_parallel_text_or_dialogues_not_both():
    with pytest.raises(ValueError, match="a.gz: a source is a parallel text .* or dialogues"):
        PairSourceParams(path="a.gz", split="train", response_path="b.gz", turn_separator="__eou__")
    with pytest.raises(ValueError, match="history_turns must be >= 0"):
        PairSourceParams(path="a.gz", split="train", turn_separator="__eou__", history_turns=-1)


def test_distinct_n_counts_distinct_ngrams_over_all_ngrams():
    assert distinct(["a b a b"], 1) == 0.5  # 2 of 4 unigrams
    assert distinct(["a b a b"], 2) == pytest.approx(0.6667)  # ab, ba, ab
    assert distinct(["Yes .", "yes ."], 2) == 0.5  # lowercased, 13a-tokenized
    assert distinct(["one"], 2) == 0.0  # no bigram at all


def test_dialogue_scores_rank_the_references_above_both_baselines():
    references = ["You are welcome .", "Fine , and you ?", "Yes , please , with milk ."]
    histories = ["Thanks a lot .", "Hello .\nHow are you ?", "Do you want tea ?"]
    perfect = dialogue_scores(references, references, histories, "Thank you .", bootstrap=100)
    assert perfect["bleu1"] == pytest.approx(100.0) and perfect["bleu2"] == pytest.approx(100.0)
    assert (perfect["distinct_1"], perfect["distinct_2"]) == (
        perfect["reference_distinct_1"],
        perfect["reference_distinct_2"],
    )
    copied, common = perfect["baselines"]["copy_last_turn"], perfect["baselines"]["most_common_response"]
    repeated = dialogue_scores([h.split("\n")[-1] for h in histories], references, histories, "Thank you .", 100)
    # the baseline is the last turn, scored the same way: no difference
    assert {k: repeated[k] for k in copied if k != "paired"} == {k: v for k, v in copied.items() if k != "paired"}
    assert repeated["baselines"]["copy_last_turn"]["paired"]["bleu2"]["diff"] == 0.0
    assert perfect["baselines"]["most_common_response"]["paired"]["bleu2"]["ci_low"] > 0
    assert common["response"] == "Thank you ." and common["distinct_1"] == pytest.approx(1 / 3, abs=1e-4)
    assert max(copied["bleu2"], common["bleu2"]) < 20 < perfect["bleu2"]


def test_the_summary_and_report_carry_each_metric_kinds_scores_and_baselines():
    from pipelines.report import build_summary, text_task_lines

    references = ["ein Hund läuft über die Wiese", "zwei Männer spielen Fußball im Park"]
    sources = ["a dog runs across the meadow", "two men play football in the park"]
    translation = translation_scores(references, references, sources, bootstrap=50)
    dialogue = dialogue_scores(["Yes ."], ["Yes , please ."], ["Tea ?"], "Thank you .", bootstrap=50)
    metrics = {
        name: {
            "metric": kind,
            "test": {**scores, "pairs": 2, "response_perplexity": 3.5},
            "bytes_per_token": {"sources": 3.1, "references": 2.4},
        }
        for name, kind, scores in (("translate", "translation", translation), ("chat", "dialogue", dialogue))
    }
    summary = build_summary({}, {}, text_results=metrics)["text_tasks"]
    assert summary["translate"]["metric"] == "translation" and set(summary["chat"]["baselines"]) == {
        "copy_last_turn",
        "most_common_response",
    }
    assert summary["chat"]["finetuned"]["distinct_2"] == dialogue["distinct_2"]
    assert "baselines" not in summary["chat"]["finetuned"] and summary["chat"]["pairs"] == 2
    report = "\n".join(text_task_lines({"text_tasks": summary}, {"chat": "history: Tea ?"}))
    assert "| translate | 2 | 100.00 (" in report and "copy source: BLEU / chrF" in report
    assert "| chat | 2 | " in report and "most common response: BLEU-1 / BLEU-2 / distinct-1 / distinct-2" in report
    assert "The references' own distinct-1 / distinct-2: chat" in report and "history: Tea ?" in report
    assert "translate 3.10 / 2.40; chat 3.10 / 2.40" in report
    assert "translate over copy source: BLEU +" in report and "chat over most common response: BLEU-1 " in report


def test_the_shipped_french_task_is_the_same_captions_to_french():
    params = load_params(ROOT / "params.yaml")
    german, french = (task_pairs(params.text_tasks[name], ROOT) for name in ("translate_en_de", "translate_en_fr"))
    assert [len(rows) for rows in french.values()] == [len(rows) for rows in german.values()]
    prompt, response = french["test"][0]
    assert prompt == "Translate English to French: A man in an orange hat starring at something."
    assert response == "Un homme avec un chapeau orange regardant quelque chose."
    assert params.text_tasks["translate_en_fr"].registered_name == "lmcore-translation-en-fr"

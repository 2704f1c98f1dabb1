"""The real pipeline on a tiny copy of the project: DVC runs it, MLflow records it."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch
import yaml

from lmcore.checkpoint import load_folder_tokenizer, load_model
from lmcore.text_to_text import folder_prompt
from pipelines.qa import read_squad
from pipelines.text_tasks import HEADLINE
from tests.lmcore.helpers import open_in_transformers
from tests.pipelines.conftest import ROOT, dvc, project_env
from tests.pipelines.e2e_helpers import STAGES, TASKS, TEXT_TASKS, mlflow_client, stage_runs, strict_json

pytestmark = pytest.mark.e2e


def test_outputs_and_dvc_metrics(tiny_project):
    for path in [
        "outputs/ingest/corpus.parquet",
        "outputs/ingest/quarantine.jsonl",
        "outputs/validate/summary.json",
        "outputs/validate/data_docs/index.html",
        "outputs/tokenizer/tokenizer.json",
        "outputs/tokenizer/streams/corpus_train.bin",
        "outputs/pretrain/model/model.safetensors",
        "outputs/pretrain/checkpoints/checkpoint.pt",
        "outputs/tasks/sst2/labeled.parquet",
        "outputs/tasks/sst2/test_mr.npz",
        "outputs/tasks/trec/train_text.bin",
        "outputs/finetune/sst2/models/finetuned/config.json",
        "outputs/finetune/trec/models/scratch/config.json",
        "outputs/evaluate/report.md",
        "outputs/evaluate/plots/generality.png",
        "outputs/evaluate/plots/curve_sst2.png",
        "outputs/evaluate/samples.txt",
    ]:
        assert (tiny_project / path).exists(), path
    metrics = json.loads(dvc(tiny_project, "metrics", "show", "--json").stdout)
    files = next(iter(metrics.values()))["data"]
    assert files["outputs/pretrain/metrics.json"]["data"]["steps"] == 30
    sst2 = files["outputs/finetune/sst2/metrics.json"]["data"]["test"]
    assert set(sst2) == {"finetuned", "scratch", "tfidf", "majority"}
    table = pd.read_parquet(tiny_project / "outputs/tasks/sst2/labeled.parquet")
    assert (table["split"] == "test").sum() == 200  # the slice of GLUE dev
    trec = pd.read_parquet(tiny_project / "outputs/tasks/trec/labeled.parquet")
    assert set(trec["label"]) <= {"ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"} and trec["row"].min() == 1


def test_summary_json_has_its_documented_schema(tiny_project):
    summary = strict_json(tiny_project / "outputs/evaluate/summary.json")
    assert set(summary) == {
        "tasks", "tasks_mean", "paired", "curves", "generalization", "lm", "lm_eval", "text_tasks", "qa"
    }  # fmt: skip
    assert summary["qa"]["questions"] == 8 and set(summary["qa"]["models"]) == {"zero_shot", *TEXT_TASKS}
    for scores in (*summary["qa"]["models"].values(), summary["qa"]["baselines"]["best_sentence"]):
        assert set(scores) == {f"{m}{s}" for m in ("exact_match", "f1") for s in ("", "_ci_low", "_ci_high")}
        assert 0 <= scores["f1_ci_low"] <= scores["f1"] <= scores["f1_ci_high"] <= 100
    for name, metric, baselines in (
        ("translate_en_de", "translation", {"copy_source"}),
        ("dailydialog", "dialogue", {"copy_last_turn", "most_common_response"}),
    ):
        entry = summary["text_tasks"][name]
        assert set(entry) == {"metric", "finetuned", "baselines", "pairs", "bytes_per_token"} and entry["pairs"] == 8
        assert all(1 <= b <= 8 for b in entry["bytes_per_token"].values())
        assert entry["metric"] == metric and set(entry["baselines"]) == baselines
        scores = entry["finetuned"]
        for score in HEADLINE[metric]:
            if score.startswith("bleu") or score == "chrf":
                assert scores[f"{score}_ci_low"] <= scores[score] <= scores[f"{score}_ci_high"] + 1e-6
                assert "version:" in scores[f"{score}_signature"]
            assert all(score in baseline for baseline in entry["baselines"].values())
        assert scores["response_perplexity"] > 1
    for task in TASKS:
        for model in ("finetuned", "scratch", "tfidf", "majority"):
            entry = summary["tasks"][task][model]
            calibrated = {"ece", "ece_calibrated"} if model in ("finetuned", "scratch") else set()
            assert set(entry) == {"accuracy", "macro_f1", "ci_low", "ci_high"} | calibrated
            assert entry["ci_low"] <= entry["accuracy"] <= entry["ci_high"]
        assert set(summary["paired"][task]) == {"scratch", "tfidf", "majority"}
    majority = summary["tasks"]["sst2"]["majority"]["accuracy"]
    # training's majority is positive; the slice's test split is 101 negative, 99 positive
    assert majority == pytest.approx(99 / 200)
    # the tiny curve: 20 labels x 2 seeds and 40 x 1, for each of the three models
    points = {(p["labels"], p["seed"], p["model"]) for p in summary["curves"]["sst2"]}
    assert points == {
        (n, seed, m) for n, seed in ((20, 0), (20, 1), (40, 0)) for m in ("finetuned", "scratch", "tfidf")
    }
    assert set(summary["generalization"]) == {"sst2"} and set(summary["generalization"]["sst2"]) == {"mr"}
    assert set(summary["lm"]) == {"imdb", "wikitext2", "shakespeare"}
    # lm-evaluation-harness on the exported LM: the same texts, and each task zero-shot
    judged = summary["lm_eval"]
    assert set(judged) == {f"text_{t}" for t in summary["lm"]} | {f"zeroshot_{t}" for t in TASKS}
    for text, figures in summary["lm"].items():  # one model, the same bytes, lm-eval's windows and ours
        assert judged[f"text_{text}"]["bits_per_byte"] == pytest.approx(figures["bits_per_byte"], rel=0.05)
    assert all(judged[f"zeroshot_{t}"]["acc_stderr"] > 0 for t in TASKS)  # an interval comes with each
    for text in summary["lm"].values():
        assert text["bits_per_byte"] > 0 and 0 < text["xz_bits_per_byte"] < text["gzip_bits_per_byte"] + 1


def test_mlflow_runs_params_metrics_artifacts_and_lineage(tiny_project):
    mlflow, client = mlflow_client(tiny_project)
    runs = stage_runs(tiny_project)
    assert set(runs) == set(STAGES)
    groups = {run.data.tags["pipeline_group"] for run in runs.values()}
    assert len(groups) == 1
    assert runs["finetune@sst2"].data.tags["upstream.pretrain"] == runs["pretrain"].info.run_id
    assert runs["finetune@sst2"].data.tags["upstream.prepare"] == runs["prepare@sst2"].info.run_id
    assert runs["evaluate"].data.tags["upstream.finetune@trec"] == runs["finetune@trec"].info.run_id
    for run in runs.values():
        assert run.data.tags["git_commit"] and run.data.tags["git_dirty"] in ("true", "false")
    assert runs["pretrain"].data.params["pretrain.max_steps"] == "30"
    assert runs["prepare@trec"].data.params["tasks.trec.max_len"] == "32"
    assert runs["pretrain"].data.tags["dvc.dep.outputs/tokenizer/tokenizer.json"]
    assert runs["finetune@sst2"].data.tags["dvc.dep.outputs/tasks/sst2"]
    history = client.get_metric_history(runs["pretrain"].info.run_id, "train/loss")
    assert len(history) == 6 and [m.step for m in history] == [5, 10, 15, 20, 25, 30]
    assert "val/bits_per_byte" in runs["pretrain"].data.metrics
    artifacts = {a.path for a in client.list_artifacts(runs["validate"].info.run_id)}
    assert "data_docs" in artifacts and "summary.json" in artifacts
    assert "tokenizer.json" in {a.path for a in client.list_artifacts(runs["tokenizer"].info.run_id)}
    assert {"report.md", "summary.json", "plots"} <= {
        a.path for a in client.list_artifacts(runs["evaluate"].info.run_id)
    }
    assert (tiny_project / "mlartifacts").is_dir() and not (tiny_project / "mlruns").exists()  # one git-ignored store
    inputs = runs["ingest"].inputs.dataset_inputs
    assert {d.dataset.name for d in inputs} == {"corpus"} and all(d.dataset.digest for d in inputs)
    # each curve point is a run nested under its task's finetune run
    experiment = client.get_experiment_by_name("lmcore-test")
    points = client.search_runs([experiment.experiment_id], "tags.stage = 'curve' and tags.task = 'sst2'")
    assert len(points) == 9
    assert {p.data.tags["mlflow.parentRunId"] for p in points} == {runs["finetune@sst2"].info.run_id}
    assert {p.data.params["model"] for p in points} == {"finetuned", "scratch", "tfidf"}


def test_registered_models_load_and_predict(tiny_project):
    mlflow, client = mlflow_client(tiny_project)
    for name in ("lmcore-lm", "lmcore-classifier-sst2", "lmcore-classifier-trec"):
        assert [str(v.version) for v in client.search_model_versions(f"name='{name}'")] == ["1"]
    classifier = mlflow.pyfunc.load_model("models:/lmcore-classifier-sst2/1")
    predicted = classifier.predict(pd.DataFrame({"text": ["a fine film .", "boring ."]}))
    assert set(predicted["label"]) <= {"negative", "positive"} and len(predicted) == 2
    assert classifier.predict(pd.DataFrame({"text": pd.Series([], dtype=str)})).empty
    # the served probabilities are the calibrated ones: the temperature fitted on validation
    temperature = strict_json(tiny_project / "outputs/finetune/sst2/results.json")["test"]["finetuned"]["temperature"]
    config = strict_json(tiny_project / "outputs/finetune/sst2/models/finetuned/config.json")
    assert config["temperature"] == temperature and temperature > 0
    trec = mlflow.pyfunc.load_model("models:/lmcore-classifier-trec/1")
    assert set(trec.predict(pd.DataFrame({"text": ["Who wrote Hamlet ?"]}))["label"]) <= {
        "abbreviation", "description", "entity", "human", "location", "number"
    }  # fmt: skip
    lm = mlflow.pyfunc.load_model("models:/lmcore-lm/1")
    generated = lm.predict(pd.DataFrame({"text": ["This movie"]}), params={"max_new_tokens": 5, "seed": 1})
    assert isinstance(generated["generated"][0], str)
    # the translation model renders its instruction and template: what it answers is the response alone
    translator = mlflow.pyfunc.load_model("models:/lmcore-translation-en-de/1")
    answer = translator.predict(
        pd.DataFrame({"text": ["A dog runs."]}), params={"max_new_tokens": 8, "temperature": 0.0}
    )
    assert isinstance(answer["generated"][0], str) and "### Response" not in answer["generated"][0]


def test_a_text_task_writes_aligned_outputs(tiny_project):
    """hypotheses.txt, references.txt and sources.txt line up with the test pairs; the model folder
    says its template; the MLflow run links to pretraining."""
    out = tiny_project / "outputs/text_tasks/translate_en_de"
    lines = {
        name: (out / f"{name}.txt").read_text(encoding="utf-8").splitlines()
        for name in ("hypotheses", "references", "sources")
    }
    assert {len(v) for v in lines.values()} == {8}
    assert (
        lines["sources"][0] == gzip.open(tiny_project / "data/multi30k/test_2016_flickr.en.gz", "rt").readline().strip()
    )
    config = strict_json(out / "model/config.json")
    assert config["template"] == "prompt_response" and config["instruction"] == "Translate English to German: "
    metrics = strict_json(out / "metrics.json")
    assert metrics["training"]["steps"] == 12 and metrics["training"]["lora_rank"] == 0
    runs = stage_runs(tiny_project)
    run = runs["text_task@translate_en_de"]
    assert run.data.tags["upstream.pretrain"] == runs["pretrain"].info.run_id
    assert "final/test.bleu" in run.data.metrics and "val/loss" in run.data.metrics


def test_the_qa_stage_answers_every_question_with_every_model(tiny_project):
    """outputs/qa/predictions/<model>.json maps each question id to an answer of one line, the
    form SQuAD's evaluate-v1.1.py scores; the run links to pretraining and each text task."""
    asked = [q.id for q in read_squad(tiny_project / "data/xquad/xquad.en.json.gz", limit=8)]
    for model in ("zero_shot", *TEXT_TASKS):
        predictions = strict_json(tiny_project / f"outputs/qa/predictions/{model}.json")
        assert list(predictions) == asked
        assert all(isinstance(p, str) and "\n" not in p for p in predictions.values())
    assert (
        "question: How many points did the Panthers defense surrender?"
        in (tiny_project / "outputs/qa/samples.txt").read_text()
    )
    runs = stage_runs(tiny_project)
    tags = runs["qa"].data.tags
    assert tags["upstream.pretrain"] == runs["pretrain"].info.run_id
    assert tags["upstream.text_task@dailydialog"] == runs["text_task@dailydialog"].info.run_id
    assert "models.zero_shot.f1" in runs["qa"].data.metrics
    assert (
        "Question answering, never trained on (8 questions)"
        in (tiny_project / "outputs/evaluate/report.md").read_text()
    )


def test_a_dialogue_task_answers_each_test_turn_from_its_history(tiny_project):
    """DailyDialog's test turns: sources.txt holds each history (its turns joined by a written
    \\n), references.txt the turn that followed; the run and its registered model are tracked."""
    out = tiny_project / "outputs/text_tasks/dailydialog"
    sources, references, hypotheses = (
        (out / f"{name}.txt").read_text(encoding="utf-8").splitlines()
        for name in ("sources", "references", "hypotheses")
    )
    first = gzip.open(tiny_project / "data/dailydialog/test.txt.gz", "rt").readline().split("__eou__")
    assert len(sources) == len(references) == len(hypotheses) == 8
    assert (sources[0], references[0]) == (first[0].strip(), first[1].strip())
    assert sources[1] == first[0].strip() + "\\n" + first[1].strip()
    assert sources[2] == first[1].strip() + "\\n" + first[2].strip()  # at most two turns of history
    metrics = strict_json(out / "metrics.json")
    assert metrics["metric"] == "dialogue" and 0 <= metrics["test"]["distinct_1"] <= 1
    run = stage_runs(tiny_project)["text_task@dailydialog"]
    assert "final/test.bleu2" in run.data.metrics and "final/test.baselines.copy_last_turn.bleu1" in run.data.metrics


def test_a_text_task_with_lora_trains_adapters_and_saves_the_merged_model(tiny_project):
    """`lora.rank` > 0: a few percent of the parameters train (peft on the LSTM's weights, unsharded)
    and the saved folder is the plain model again, its trainable count the pretrained model's."""
    params_path = tiny_project / "params.yaml"
    params = yaml.safe_load(params_path.read_text())
    params["text_tasks"]["translate_en_de"]["lora"] = {"rank": 2, "alpha": 4.0}
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    dvc(tiny_project, "repro", "text_task@translate_en_de")
    out = tiny_project / "outputs/text_tasks/translate_en_de"
    training = strict_json(out / "metrics.json")["training"]
    assert training["lora_rank"] == 2 and 0 < training["trainable_parameters"] < 0.5 * training["parameters"]
    merged, _ = load_model(out / "model")
    pretrained, _ = load_model(tiny_project / "outputs/pretrain/model")
    assert set(merged.state_dict()) == set(pretrained.state_dict())
    assert any(not torch.equal(merged.state_dict()[k], v) for k, v in pretrained.state_dict().items())


def test_a_text_task_from_scratch_trains_another_architecture(tiny_project):
    """`init: scratch` with `arch: gpt` beside the pretrained LSTM: a GPT of params.yaml's
    model.gpt shape from random weights, every parameter trained, saved and loadable as a GPT."""
    params_path = tiny_project / "params.yaml"
    params = yaml.safe_load(params_path.read_text())
    assert params["model"]["arch"] == "lstm"
    params["text_tasks"]["translate_en_de"] |= {"init": "scratch", "arch": "gpt"}
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    dvc(tiny_project, "repro", "text_task@translate_en_de")
    out = tiny_project / "outputs/text_tasks/translate_en_de"
    model, config = load_model(out / "model")
    assert config["arch"] == "gpt" and config["model"]["n_embd"] == params["model"]["gpt"]["n_embd"]
    assert config["template"] == "prompt_response"
    metrics = strict_json(out / "metrics.json")
    assert metrics["training"]["trainable_parameters"] == sum(p.numel() for p in model.parameters())
    assert len((out / "hypotheses.txt").read_text(encoding="utf-8").splitlines()) == 8


def test_the_export_folders_open_in_transformers_without_the_project(tiny_project, tmp_path):
    listing = strict_json(tiny_project / "outputs/export/export.json")
    assert set(listing) == {"lm", *TASKS, *TEXT_TASKS} and {f["class"] for f in listing.values()} == {
        "LmcoreForCausalLM", "LmcoreForSequenceClassification"
    }  # fmt: skip
    lm, config = load_model(tiny_project / "outputs/pretrain/model")
    tokenizer = load_folder_tokenizer(tiny_project / "outputs/pretrain/model", config)
    ids = tokenizer.encode("This movie was a fine one, and the cast")
    classifier, classifier_config = load_model(tiny_project / "outputs/finetune/sst2/models/finetuned")
    export = tiny_project / "outputs/export"
    results = open_in_transformers(
        [
            {
                "folder": str(export / "lm"),
                "kind": "lm",
                "texts": ["a film"],
                "ids": ids,
                "prompt": ids[:3],
                "max_new_tokens": 5,
            },
            {"folder": str(export / "sst2"), "kind": "classifier", "texts": ["a fine film ."]},
            {
                "folder": str(export / "translate_en_de"),
                "kind": "lm",
                "texts": ["a dog"],
                "ids": ids,
                "prompt": ids[:3],
                "max_new_tokens": 2,
                "chat": [{"role": "user", "content": "A dog runs on the grass."}],
            },
        ],
        tmp_path,
    )
    with torch.no_grad():
        logits = lm(torch.tensor([ids]))[0]
        text = torch.tensor([tokenizer.encode("a fine film .")])
        scores = classifier(text, torch.tensor([text.size(1)])) / classifier_config["temperature"]
    assert (torch.tensor(results[0]["logits"]) - logits).abs().max() < 1e-4
    assert (torch.tensor(results[1]["logits"]) - scores).abs().max() < 1e-4
    translator = tiny_project / "outputs/text_tasks/translate_en_de/model"
    _, translator_config = load_model(translator)
    prompt = folder_prompt(
        load_folder_tokenizer(translator, translator_config), translator_config, "A dog runs on the grass."
    )
    assert results[2]["chat_ids"] == prompt  # the chat template renders the translation prompt
    _, client = mlflow_client(tiny_project)
    run = stage_runs(tiny_project)["export"]
    exported = {f"hf/{n}" for n in ("lm", *TASKS, *TEXT_TASKS)}
    assert {a.path for a in client.list_artifacts(run.info.run_id, "hf")} == exported


def test_nothing_changed_is_a_fast_no_op(tiny_project):
    start = time.perf_counter()
    result = dvc(tiny_project, "repro")
    assert "is up to date" in result.stdout or "didn't change" in result.stdout, result.stdout
    assert time.perf_counter() - start < 10


def test_misspelled_params_key_is_an_error_naming_it(tiny_project):
    params_path = tiny_project / "params.yaml"
    params = yaml.safe_load(params_path.read_text())
    params["pretrain"]["max_stepz"] = params["pretrain"].pop("max_steps")
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    result = dvc(tiny_project, "repro", check=False)
    assert result.returncode != 0
    assert "pretrain.max_stepz" in result.stdout + result.stderr


def named_nodes(node: object, name: str) -> list[dict]:
    """Every JSON object in `node` whose "name" is `name` and that holds "data"."""
    if isinstance(node, list):
        return [found for item in node for found in named_nodes(item, name)]
    if not isinstance(node, dict):
        return []
    own = [node] if node.get("name") == name and "data" in node else []
    return own + [found for value in node.values() for found in named_nodes(value, name)]


def test_dvc_exp_run_tries_another_architecture_beside_the_workspace(tiny_project):
    """`dvc exp run -S model.arch=gpt`: the GPT instead of the default LSTM, through every model stage."""
    params_before = (tiny_project / "params.yaml").read_text()
    dvc(tiny_project, "exp", "run", "--temp", "--name", "gpt-arch", "-S", "model.arch=gpt")
    assert (tiny_project / "params.yaml").read_text() == params_before
    shown = json.loads(dvc(tiny_project, "exp", "show", "--json").stdout)
    (experiment,) = named_nodes(shown, "gpt-arch")
    assert experiment["data"]["params"]["params.yaml"]["data"]["model"]["arch"] == "gpt"
    evaluation = experiment["data"]["metrics"]["outputs/evaluate/metrics.json"]["data"]
    assert set(evaluation["tasks"]) == set(TASKS) and evaluation["lm"]["imdb"]["bits_per_byte"] > 0
    runs = stage_runs(tiny_project)  # the experiment ran in a temporary copy but logged to the project's store
    assert runs["pretrain"].data.params["model.arch"] == "gpt"
    assert runs["finetune@trec"].data.tags["upstream.pretrain"] == runs["pretrain"].info.run_id


def test_the_finetune_sweep_bench_scores_a_recipe_on_validation(tiny_project):
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench/finetune_sweep.py"), "trec", "--labels", "60", "--seeds", "0", "1"]
        + ["--set", "max_steps=5", "--set", "learning_rate=1e-3", "--lm-adapt", "--finetune", "lm_steps=3"],
        cwd=tiny_project, env=project_env(tiny_project), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    adapted, *rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert adapted["lm_adapt"]["steps"] == 3
    assert [(r["seed"], r["labels"], r["steps"]) for r in rows] == [(0, 60, 5), (1, 60, 5)]
    assert rows[0]["train"] == {"max_steps": 5, "learning_rate": 1e-3, "min_lr": 1e-4}
    assert rows[0]["finetune"] == {"lm_steps": 3} and rows[0]["lm_adapt"]

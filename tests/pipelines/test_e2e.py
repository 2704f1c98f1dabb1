"""The real pipeline on a tiny copy of the project: DVC runs it, MLflow records it."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings

import pandas as pd
import pytest
import yaml

from lmcore.checkpoint import load_checkpoint
from tests.pipelines.conftest import ROOT, dvc, project_env

pytestmark = pytest.mark.e2e
TASKS = ["sst2", "trec"]  # the tiny project's (tests/pipelines/conftest.py)
STAGES = [
    "ingest",
    "validate",
    "tokenizer",
    "pretrain",
    *(f"{s}@{t}" for s in ("prepare", "finetune") for t in TASKS),
    "evaluate",
]


def mlflow_client(project):
    import mlflow

    warnings.filterwarnings("ignore")
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    return mlflow, mlflow.MlflowClient()


def stage_runs(project) -> dict[str, object]:
    mlflow, client = mlflow_client(project)
    experiment = client.get_experiment_by_name("lmcore-test")
    runs = client.search_runs(
        [experiment.experiment_id], "attributes.status = 'FINISHED'", order_by=["attributes.start_time DESC"]
    )
    latest = {}
    for run in runs:
        task = run.data.tags.get("task")
        if run.data.tags["stage"] != "curve":
            latest.setdefault(f"{run.data.tags['stage']}@{task}" if task else run.data.tags["stage"], run)
    return latest


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
    assert set(summary) == {"tasks", "tasks_mean", "paired", "curves", "generalization", "lm"}
    for task in TASKS:
        for model in ("finetuned", "scratch", "tfidf", "majority"):
            entry = summary["tasks"][task][model]
            assert set(entry) == {"accuracy", "macro_f1", "ci_low", "ci_high"}
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
    trec = mlflow.pyfunc.load_model("models:/lmcore-classifier-trec/1")
    assert set(trec.predict(pd.DataFrame({"text": ["Who wrote Hamlet ?"]}))["label"]) <= {
        "abbreviation", "description", "entity", "human", "location", "number"
    }  # fmt: skip
    lm = mlflow.pyfunc.load_model("models:/lmcore-lm/1")
    generated = lm.predict(pd.DataFrame({"text": ["This movie"]}), params={"max_new_tokens": 5, "seed": 1})
    assert isinstance(generated["generated"][0], str)


def test_nothing_changed_is_a_fast_no_op(tiny_project):
    start = time.perf_counter()
    result = dvc(tiny_project, "repro")
    assert "is up to date" in result.stdout or "didn't change" in result.stdout, result.stdout
    assert time.perf_counter() - start < 10


def test_pretraining_again_from_scratch_gives_the_same_weights(tiny_project):
    weights, metrics = (
        tiny_project / "outputs/pretrain/model/model.safetensors",
        tiny_project / "outputs/pretrain/metrics.json",
    )
    before, trained = hashlib.sha256(weights.read_bytes()).hexdigest(), strict_json(metrics)
    dvc(tiny_project, "repro", "--force", "--single-item", "pretrain")  # replays the final checkpoint
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == before
    replayed = strict_json(metrics)
    assert replayed["val"] == trained["val"] and replayed["train_loss"] == trained["train_loss"]
    assert trained["tokens_per_sec"] > 0 and replayed["tokens_per_sec"] is None  # nothing trained: no speed
    shutil.rmtree(tiny_project / "outputs/pretrain/checkpoints")  # no checkpoint to resume from
    dvc(tiny_project, "repro", "--force", "--single-item", "pretrain")
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == before


def test_a_terminated_dvc_repro_stops_its_stage_at_a_checkpointed_step(tiny_project):
    """SIGTERM to `dvc repro` (a scheduler's preemption, a `kill`): DVC does not pass it on, so
    the stage must notice that dvc died, finish its step, checkpoint it and mark its run."""
    params_path, pretrain = tiny_project / "params.yaml", tiny_project / "outputs/pretrain"
    params = yaml.safe_load(params_path.read_text())
    params["pretrain"].update(max_steps=10**6, checkpoint_interval=10**6, eval_interval=20)
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.rmtree(pretrain / "checkpoints")
    command = [sys.executable, "-m", "dvc", "repro", "--single-item", "pretrain"]
    # Without $SHELL, DVC runs the stage through /bin/sh; Debian's (dash) stays alive in between.
    env = {k: v for k, v in project_env(tiny_project).items() if k != "SHELL"}
    process = subprocess.Popen(
        command, cwd=tiny_project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    head = []
    try:
        for line in process.stdout:  # the stage writes to dvc's stdout: it is training once it logs a step
            head.append(line.decode())
            if "pretrain step 20/" in head[-1]:
                break
        process.send_signal(signal.SIGTERM)
        # The stage holds the pipe open too: its end is the stage's exit.
        rest = process.communicate(timeout=60)[0].decode()
    except subprocess.TimeoutExpired as timeout:
        raise AssertionError(
            "the stage trained on:\n" + "".join(head) + (timeout.output or b"").decode()[-4000:]
        ) from None
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # a stage that trained on must not outlive the test
    stopped = re.search(r"stopped: training stopped on request at step (\d+); checkpoint (\S+) resumes it", rest)
    assert stopped, "".join(head) + rest
    assert "SIGHUP: stopping after the current training step" in rest  # sent by the stage's watch on dvc
    assert load_checkpoint(tiny_project / stopped[2])["step"] == int(stopped[1]) > 20
    mlflow, client = mlflow_client(tiny_project)
    experiment = client.get_experiment_by_name("lmcore-test")
    (latest,) = client.search_runs([experiment.experiment_id], "tags.stage = 'pretrain'", max_results=1)
    assert latest.info.status == "KILLED"


def test_misspelled_params_key_is_an_error_naming_it(tiny_project):
    params_path = tiny_project / "params.yaml"
    params = yaml.safe_load(params_path.read_text())
    params["pretrain"]["max_stepz"] = params["pretrain"].pop("max_steps")
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    result = dvc(tiny_project, "repro", check=False)
    assert result.returncode != 0
    assert "pretrain.max_stepz" in result.stdout + result.stderr


def strict_json(path):
    def refuse(constant):
        raise AssertionError(f"{path} holds {constant}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


BAD_INPUTS = {
    "empty file": ("corpus.txt", b"", "corpus", "the file is empty"),
    "binary junk": ("corpus.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "corpus", "NUL byte"),
    "invalid utf-8": ("corpus.txt", "caf\u00e9 ".encode("latin-1") * 20, "corpus", "invalid UTF-8 at byte offset 3"),
    "too much quarantined": (
        "corpus.txt",
        b"\n\n".join(b"x" * 200_000 for _ in range(3)),  # each above data.max_chars
        "corpus",
        "expect_column_values_to_be_in_set on column 'quarantine_reason' failed: 3 of",
    ),
    "missing column": ("extra.tsv", b"text\tlabel\nfine film\t1\n", "task", "missing column 'sentence'"),
    "unknown label": (
        "extra.tsv",
        b"sentence\tlabel\nfine film\t1\nodd film\t7\n",
        "task",
        "expect_column_values_to_be_in_set on column 'label' failed: 1 of",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_fails_closed_and_keeps_previous_outputs(tiny_project, case):
    name, content, table, message = BAD_INPUTS[case]
    bad = tiny_project / "data" / "bad" / name
    bad.parent.mkdir(exist_ok=True)
    bad.write_bytes(content)
    params_path = tiny_project / "params.yaml"
    params = yaml.safe_load(params_path.read_text())
    if table == "corpus":
        params["ingest"]["sources"].append(f"data/bad/{name}")
    else:
        params["tasks"]["sst2"]["sources"].append({"path": f"data/bad/{name}", "split": "train"})
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    kept = {
        p: digest(tiny_project / p)
        for p in (
            "outputs/ingest/corpus.parquet",
            "outputs/tasks/sst2/labeled.parquet",
            "outputs/validate/summary.json",
        )
    }
    result = dvc(tiny_project, "repro", check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert message in output, output[-3000:]
    assert name in output
    if case == "unknown label":
        assert "examples: ['7']; at data/bad/extra.tsv row 2" in output
        assert "exited with 3" in output  # validation failed
    if case == "too much quarantined":
        assert "longer than max_chars=100000" in output and "at data/bad/corpus.txt line 1" in output
    for path, before in kept.items():
        if case == "too much quarantined" and path.startswith("outputs/ingest"):
            continue  # ingest succeeded, quarantining; validation is what stopped it
        assert digest(tiny_project / path) == before, path
    failed = "ingest" if case in ("empty file", "binary junk", "invalid utf-8") else "validate"
    failed = "prepare@sst2" if table == "task" else failed
    assert f"failed to reproduce '{failed}'" in output
    assert "Running stage 'finetune@sst2'" not in output


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


def test_an_interrupted_finetune_resumes_every_phase_exactly(tiny_project):
    """SIGTERM in the classifier phase, then the stage again: the LM phase replays from its final
    checkpoint, the classifier continues from its stop, and the weights are those of a run that
    was never interrupted."""
    params_path, finetune = tiny_project / "params.yaml", tiny_project / "outputs/finetune/sst2"
    params = yaml.safe_load(params_path.read_text())
    params["finetune"]["train"].update(max_steps=600, eval_interval=100, checkpoint_interval=10**6)
    params["finetune"].update(recipe="lm_then_classification", min_steps=600, scratch_baseline=False)
    params["tasks"]["sst2"].update(curve_labels=[], curve_seeds=[])
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    command = [sys.executable, "-m", "pipelines.stages.finetune", "sst2"]
    weights = finetune / "models/finetuned/model.safetensors"

    def run_stage(stop_after: str | None = None) -> str:
        process = subprocess.Popen(
            command, cwd=tiny_project, env=project_env(tiny_project), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        head = []
        try:
            for line in process.stdout:
                head.append(line.decode())
                if stop_after and stop_after in head[-1]:
                    process.send_signal(signal.SIGTERM)
                    break
            return "".join(head) + process.communicate(timeout=120)[0].decode()
        finally:
            process.kill()

    shutil.rmtree(finetune / "checkpoints", ignore_errors=True)
    stopped = run_stage(stop_after="finetuned step 100/600")
    assert re.search(r"stopped on request at step \d+; checkpoint \S+/finetuned/checkpoint.pt", stopped), stopped
    resumed = run_stage()
    assert "resumed from outputs/finetune/sst2/checkpoints/lm/checkpoint.pt at step 10" in resumed, resumed
    assert "resumed from outputs/finetune/sst2/checkpoints/finetuned/checkpoint.pt" in resumed, resumed
    resumed_weights = digest(weights)
    shutil.rmtree(finetune / "checkpoints")
    uninterrupted = run_stage()
    assert "resumed" not in uninterrupted
    assert digest(weights) == resumed_weights


def test_a_curve_interrupted_keeps_its_finished_points(tiny_project):
    """The label-budget curve's finished points are kept beside the checkpoints: a re-run trains
    only the points that were missing, and ends with the same curve."""
    finetune = tiny_project / "outputs/finetune/sst2"
    before = strict_json(finetune / "results.json")["curve"]
    done = finetune / "checkpoints/curve.jsonl"
    lines = done.read_text().splitlines()
    done.write_text("\n".join(lines[:4]) + "\n")  # as if the stage had stopped after four points
    output = subprocess.run(
        [sys.executable, "-m", "pipelines.stages.finetune", "sst2"],
        cwd=tiny_project, env=project_env(tiny_project), capture_output=True, text=True, check=True,
    ).stderr  # fmt: skip
    # the first four points (20 labels: seed 0 of each model, seed 1 finetuned) are not trained again
    assert "curve finetuned labels=20 seed=0" not in output and "curve finetuned labels=20 seed=1" not in output
    assert "curve scratch labels=20 seed=1" in output and "curve finetuned labels=40 seed=0" in output
    after = strict_json(finetune / "results.json")["curve"]
    assert [(p["labels"], p["seed"], p["model"], p["accuracy"]) for p in after] == [
        (p["labels"], p["seed"], p["model"], p["accuracy"]) for p in before
    ]


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

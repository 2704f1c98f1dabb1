from pathlib import Path

import pytest
import yaml

from pipelines.params import flatten, load_params, load_raw_params

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path, mutate) -> Path:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    mutate(params)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def test_the_shipped_params_load():
    params = load_params(ROOT / "params.yaml")
    assert params.model.arch in ("gpt", "lstm", "gru")
    assert params.pretrain.max_steps > 0


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda p: p["pretrain"].update(max_stepz=3), "unknown config key 'pretrain.max_stepz'"),
        (lambda p: p["model"]["gpt"].update(n_layr=3), "unknown config key 'model.gpt.n_layr'"),
        (lambda p: p["model"]["gpt"].update(n_embd=30), "n_embd=30 is not divisible"),
        (lambda p: p["model"].update(arch="mamba"), "model.arch='mamba'"),
        (lambda p: p["finetune"]["train"].pop("learning_rate"), "missing config key 'finetune.train.learning_rate'"),
        (lambda p: p.update(trainng={}), "unknown config key 'trainng'"),
        (lambda p: p["finetune"].update(length_buckets=0), "finetune.length_buckets must be at least 1, got 0"),
        (lambda p: p["finetune"].update(epochs=0), "finetune.epochs must be positive, got 0"),
        (lambda p: p["tokenizer"].update(kind="wordpiece"), "'tokenizer.kind' must be one of"),
        (lambda p: p["tokenizer"].update(eot_token="<eos>"), "tokenizer.eot_token='<eos>' is not listed"),
        (lambda p: p["tokenizer"].update(max_train_chars=-1), "tokenizer.max_train_chars must be >= 0"),
        (lambda p: p["pretrain"].update(batch_size=0), "pretrain.batch_size must be positive, got 0"),
        (lambda p: p["finetune"]["train"].update(beta2=1.5), r"finetune.train.beta2 must be in \[0, 1\), got 1.5"),
        (lambda p: p["model"]["gru"].update(dropout=1.0), r"model.gru.dropout must be in \[0, 1\)"),
        (
            lambda p: p["ingest"].update(validation_fraction=0.5, test_fraction=0.5),
            "ingest.validation_fraction \\+ test_fraction = 1.0 leaves no training documents",
        ),
        (lambda p: p["tasks"]["sst2"].update(validation_fraction=-0.1), "tasks.sst2.validation_fraction"),
        (
            lambda p: p["tasks"]["imdb"]["train"].update(batch_sise=8),
            "unknown config key 'tasks.imdb.train.batch_sise'",
        ),
        (lambda p: p["tasks"]["imdb"]["train"].update(max_steps=0), "tasks.imdb.train.max_steps must be positive"),
        (lambda p: p["data"].update(chunk_rows=0), "data.chunk_rows must be at least 1, got 0"),
        (lambda p: p["ingest"].update(sources=[]), "ingest.sources is empty"),
        (lambda p: p.update(tasks={}), "tasks is empty"),
        (
            lambda p: p["finetune"]["train"].update(early_stopping_metric="acc"),
            r"finetune.train.early_stopping_metric='acc' is not reported by its evaluation: one of \['accuracy'",
        ),
        (
            lambda p: p["pretrain"].update(early_stopping_patience=3, early_stopping_metric="accuracy"),
            "pretrain.early_stopping_metric='accuracy' is not reported",
        ),
        (
            lambda p: (p["model"].update(arch="gpt"), p["tasks"]["imdb"].update(max_len=512)),
            "tasks.imdb.max_len=512 exceeds model.gpt.block_size=256",
        ),
        (
            lambda p: p["tasks"]["sst2"].update(labels=["0", "0"]),
            r"tasks.sst2.labels must be two or more distinct values, got \['0', '0'\]",
        ),
        (
            lambda p: p["tasks"]["sst2"].update(labels=["0", "1", "2"]),
            "tasks.sst2.label_names has 2 names for 3 labels",
        ),
        (
            lambda p: p["tasks"]["sst2"].update(curve_seeds=[3]),
            "tasks.sst2.curve_seeds has 1 entries for 4 curve_labels",
        ),
        (
            lambda p: p["tasks"]["sst2"].update(curve_labels=[300, 100, 1000, 3000]),
            r"tasks.sst2.curve_labels must increase",
        ),
        (
            lambda p: p["tasks"]["sst2"].update(test_on=["mrr"]),
            "tasks.sst2.test_on names 'mrr', which is not in test_sets",
        ),
        (
            lambda p: p["tasks"]["sst2"].update(test_on=["mr"], label_names=["bad", "good"]),
            r"tasks.sst2.test_on: test set 'mr' has label_names \['negative', 'positive'\], the task \['bad', 'good'\]",
        ),
        (lambda p: p["tasks"].update({"SST 2": p["tasks"]["sst2"]}), "name 'SST 2' must be lowercase"),
        (
            lambda p: p["tasks"]["trec"]["sources"][0].update(pattern="(?P<txt>.+)"),
            r"needs the named groups \['label', 'text'\], has \['txt'\]",
        ),
        (
            lambda p: p["test_sets"]["mr"]["sources"][0].update(label="negative"),
            r"test_sets.mr.sources\[0\].label='negative' is not one of labels \['neg', 'pos'\]",
        ),
        (
            lambda p: p["tasks"]["sst2"]["sources"][0].update(split="dev"),
            r"'tasks.sst2.sources\[0\].split' must be one of",
        ),
        (
            lambda p: p["tasks"]["sst2"]["sources"][0].update(encoding="utf-16"),
            r"'tasks.sst2.sources\[0\].encoding' must be one of",
        ),
        (lambda p: p["data"].update(min_chars=10, max_chars=5), "data.min_chars=10 is above max_chars=5"),
        (lambda p: p["tasks"]["sst2"].update(max_class_share=1.5), r"tasks.sst2.max_class_share must be in \[0, 1\]"),
        (lambda p: p["finetune"].update(classifier_dropout=1.0), r"finetune.classifier_dropout must be in \[0, 1\)"),
        (
            lambda p: p["finetune"].update(recipe="lm_then_classification", lm_steps=0),
            "finetune.lm_steps must be at least 1 for recipe lm_then_classification",
        ),
        (lambda p: p["evaluate"].update(bootstrap_samples=0), "evaluate.bootstrap_samples must be at least 1, got 0"),
        (lambda p: p["evaluate"].update(lm_texts={}), "evaluate.lm_texts is empty"),
        (
            lambda p: p["evaluate"]["lm_eval"]["zero_shot"]["trec"]["choices"].pop(),
            "evaluate.lm_eval.zero_shot.trec.choices has 5 choices, but tasks.trec has 6 labels",
        ),
        (
            lambda p: p["evaluate"]["lm_eval"]["zero_shot"].update(cola={"template": "{{text}}", "choices": []}),
            "evaluate.lm_eval.zero_shot.cola: there is no task 'cola'",
        ),
        (
            lambda p: p["evaluate"]["lm_eval"]["zero_shot"]["sst2"].update(template="Sentiment:"),
            "evaluate.lm_eval.zero_shot.sst2.template must use",
        ),
        (lambda p: p["evaluate"]["samples"].update(top_p=0.0), r"evaluate.samples.top_p must be in \(0, 1\], got 0.0"),
        (lambda p: p["evaluate"]["samples"].update(temperature=-1), "evaluate.samples.temperature must be >= 0"),
        (
            lambda p: p["finetune"]["train"].update(batch_threads=2),  # the classifier has dropout 0.1
            r"finetune.train.batch_threads=2 needs dropout 0: .* \(finetune.classifier_dropout=0.1\)",
        ),
        (
            lambda p: (p["pretrain"].update(batch_threads=2), p["model"]["lstm"].update(dropout=0.2)),
            r"pretrain.batch_threads=2 needs dropout 0: .* \(model.lstm.dropout=0.2\)",
        ),
        (
            lambda p: (
                p["finetune"].update(recipe="lm_then_classification", lm_batch_size=1, classifier_dropout=0.0),
                p["finetune"]["train"].update(batch_threads=2),
            ),
            "finetune.train with finetune.lm_batch_size=1: batch_threads=2 is more than batch_size=1",
        ),
    ],
)
def test_errors_name_file_and_key(tmp_path, mutate, message):
    path = write(tmp_path, mutate)
    with pytest.raises(ValueError, match=message) as error:
        load_params(path)
    assert str(path) in str(error.value)


def test_lm_batch_size_bounds_the_threads_only_when_the_recipe_has_an_lm_phase(tmp_path):
    def mutate(p):
        p["finetune"].update(recipe="classification", lm_batch_size=1, classifier_dropout=0.0)
        p["finetune"]["train"].update(batch_threads=2)

    assert load_params(write(tmp_path, mutate)).finetune.train.batch_threads == 2


def test_a_source_entry_may_leave_out_its_defaulted_keys(tmp_path):
    params = load_params(ROOT / "params.yaml")
    sst2 = params.tasks["sst2"].sources[0]
    assert (sst2.label, sst2.pattern, sst2.encoding, sst2.format) == (None, None, "utf-8", "auto")


def test_classifier_steps_are_epochs_within_bounds_of_the_tasks_own_train_settings():
    params = load_params(ROOT / "params.yaml")
    finetune = params.finetune
    own = yaml.safe_load((ROOT / "params.yaml").read_text())["tasks"]["imdb"]["train"]
    imdb = finetune.train_for(params.tasks["imdb"], "imdb")
    assert {key: getattr(imdb, key) for key in own} == own
    assert any(getattr(finetune.train, key) != value for key, value in own.items()), "imdb overrides nothing"
    assert imdb.learning_rate == finetune.train.learning_rate
    train = finetune.train_for(params.tasks["trec"], "trec")
    assert train == finetune.train
    batch = train.batch_size
    assert finetune.classifier_steps(10, train) == finetune.min_steps
    assert finetune.classifier_steps(10**7, train) == train.max_steps
    middle = int(finetune.min_steps * batch / finetune.epochs) + batch
    assert finetune.classifier_steps(middle, train) == -(-finetune.epochs * middle // batch)


def test_flatten():
    assert flatten({"a": {"b": 1, "c": {"d": [1]}}, "e": 2}) == {"a.b": 1, "a.c.d": [1], "e": 2}


def test_the_lm_metrics_named_for_early_stopping_are_what_evaluate_lm_reports():
    import numpy as np

    from lmcore.evaluate import evaluate_lm
    from pipelines.params import LM_EVAL_METRICS
    from tests.lmcore.helpers import tiny_model

    data = np.arange(200) % 40
    assert set(evaluate_lm(tiny_model("lstm"), data, 16, num_windows=4, bytes_per_token=1.0)) == set(LM_EVAL_METRICS)


def test_exponent_floats_load_as_dvc_writes_them(tmp_path):
    """`dvc exp run -S pretrain.min_lr=1e-5` writes `min_lr: 1e-05`, a string to YAML 1.1 readers."""
    from dvc.utils.hydra import apply_overrides

    path = tmp_path / "params.yaml"
    path.write_text((ROOT / "params.yaml").read_text())
    apply_overrides(str(path), ["pretrain.min_lr=1e-5", "pretrain.learning_rate=3e-4", "finetune.train.min_lr=2E-5"])
    assert "min_lr: 1e-05" in path.read_text()
    params = load_params(path)
    assert (params.pretrain.min_lr, params.pretrain.learning_rate) == (1e-5, 3e-4)
    assert params.finetune.train.min_lr == 2e-5
    assert load_raw_params(path)["pretrain"]["min_lr"] == 1e-5
    assert params.data.split_salt == "lmcore-split-v1"  # strings stay strings


def test_a_yaml_syntax_error_names_the_file_and_line(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("pretrain:\n  learning_rate: [0.1\n")
    with pytest.raises(ValueError, match=r'(?s)params.yaml is not valid YAML: .*in ".*params.yaml", line 2, column 18'):
        load_params(path)

from pathlib import Path

import pytest
import yaml

from pipelines.params import flatten, load_params, load_raw_params, stage_params

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
        (lambda p: p["tokenizer"].update(kind="wordpiece"), "'tokenizer.kind' must be one of"),
        (lambda p: p["tokenizer"].update(eot_token="<eos>"), "tokenizer.eot_token='<eos>' is not listed"),
        (lambda p: p["pretrain"].update(batch_size=0), "pretrain.batch_size must be positive, got 0"),
        (lambda p: p["finetune"]["train"].update(beta2=1.5), r"finetune.train.beta2 must be in \[0, 1\), got 1.5"),
        (lambda p: p["model"]["gru"].update(dropout=1.0), r"model.gru.dropout must be in \[0, 1\)"),
        (
            lambda p: p["ingest"]["pretrain"].update(validation_fraction=0.5, test_fraction=0.5),
            "ingest.pretrain.validation_fraction \\+ test_fraction = 1.0 leaves no training documents",
        ),
        (lambda p: p["ingest"]["labeled"].update(validation_fraction=-0.1), "ingest.labeled.validation_fraction"),
        (lambda p: p["ingest"].update(chunk_rows=0), "ingest.chunk_rows must be at least 1, got 0"),
        (lambda p: p["ingest"]["pretrain"].update(sources=[]), "ingest.pretrain.sources is empty"),
        (
            lambda p: p["finetune"]["train"].update(early_stopping_metric="acc"),
            r"finetune.train.early_stopping_metric='acc' is not reported by its evaluation: one of \['accuracy'",
        ),
        (
            lambda p: p["pretrain"].update(early_stopping_patience=3, early_stopping_metric="accuracy"),
            "pretrain.early_stopping_metric='accuracy' is not reported",
        ),
        (
            lambda p: (p["model"].update(arch="gpt"), p["finetune"].update(max_len=256)),
            "finetune.max_len=256 exceeds model.gpt.block_size=128",
        ),
        (
            lambda p: p["ingest"]["labeled"].update(labels=["0", "0"]),
            r"ingest.labeled.labels must be two or more distinct values, got \['0', '0'\]",
        ),
        (
            lambda p: p["ingest"]["labeled"].update(labels=["0", "1", "2"]),
            "ingest.labeled.label_names has 2 names for 3 labels",
        ),
        (lambda p: p["tokenizer"].update(train_on=[]), "tokenizer.train_on must name pretrain, labeled or both"),
        (
            lambda p: p["tokenizer"].update(special_tokens=["<|endoftext|>", "<|pad|>", "<|pad|>"]),
            "tokenizer.special_tokens lists a token twice",
        ),
        (lambda p: p["validate"].update(min_chars=10, max_chars=5), "validate.min_chars=10 is above max_chars=5"),
        (lambda p: p["validate"].update(max_class_share=1.5), r"validate.max_class_share must be in \[0, 1\]"),
        (lambda p: p["finetune"].update(classifier_dropout=1.0), r"finetune.classifier_dropout must be in \[0, 1\)"),
        (
            lambda p: p["finetune"].update(lm_steps=0),
            "finetune.lm_steps must be at least 1 for task lm_then_classification",
        ),
        (lambda p: p["evaluate"].update(bootstrap_samples=0), "evaluate.bootstrap_samples must be at least 1, got 0"),
        (lambda p: p["evaluate"]["samples"].update(top_p=0.0), r"evaluate.samples.top_p must be in \(0, 1\], got 0.0"),
        (lambda p: p["evaluate"]["samples"].update(temperature=-1), "evaluate.samples.temperature must be >= 0"),
        (
            lambda p: p["finetune"]["train"].update(batch_threads=2),  # the classifier has dropout 0.1
            r"finetune.train.batch_threads=2 needs finetune.classifier_dropout 0, got 0.1",
        ),
        (
            lambda p: (p["pretrain"].update(batch_threads=2), p["model"]["lstm"].update(dropout=0.2)),
            r"pretrain.batch_threads=2 needs model.lstm.dropout 0, got 0.2",
        ),
        (
            lambda p: (
                p["finetune"].update(lm_batch_size=1, classifier_dropout=0.0),
                p["finetune"]["train"].update(batch_threads=2),
            ),
            "finetune.train.batch_threads=2 is more than finetune.lm_batch_size=1",
        ),
        (
            lambda p: p["ingest"]["labeled"]["sources"][0].update(split="dev"),
            r"'ingest.labeled.sources\[0\].split' must be one of",
        ),
    ],
)
def test_errors_name_file_and_key(tmp_path, mutate, message):
    path = write(tmp_path, mutate)
    with pytest.raises(ValueError, match=message) as error:
        load_params(path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize(
    "mutate",
    [
        # task lm trains no classifier, so its dropout does not stop the LM phase from splitting
        lambda p: (p["finetune"].update(task="lm"), p["finetune"]["train"].update(batch_threads=2)),
        # task classification has no LM phase, so lm_batch_size does not bound the threads
        lambda p: (
            p["finetune"].update(task="classification", lm_batch_size=1, classifier_dropout=0.0),
            p["finetune"]["train"].update(batch_threads=2),
        ),
    ],
)
def test_batch_threads_checks_only_the_phases_the_task_trains(tmp_path, mutate):
    assert load_params(write(tmp_path, mutate)).finetune.train.batch_threads == 2


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
    assert params.ingest.split_salt == "lmcore-split-v1"  # strings stay strings


def test_a_yaml_syntax_error_names_the_file_and_line(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("pretrain:\n  learning_rate: [0.1\n")
    with pytest.raises(ValueError, match=r'(?s)params.yaml is not valid YAML: .*in ".*params.yaml", line 2, column 18'):
        load_params(path)


def test_stage_params_are_the_values_of_the_keys_dvc_yaml_lists(tmp_path):
    """What a stage's checkpoint fingerprint covers: every setting whose change makes DVC re-run it."""
    raw = load_raw_params(ROOT / "params.yaml")
    pretrain = stage_params("pretrain", raw)
    assert set(pretrain) == {"model", "pretrain", "evaluate.num_windows", "evaluate.batch_size"}
    assert pretrain["evaluate.num_windows"] == raw["evaluate"]["num_windows"]
    assert stage_params("finetune", raw)["ingest.labeled.label_names"] == raw["ingest"]["labeled"]["label_names"]
    dvc_yaml = tmp_path / "dvc.yaml"
    dvc_yaml.write_text(
        "stages:\n  s:\n    cmd: x\n    params:\n      - model.arch\n      - params.yaml:\n          - seed\n"
    )
    assert stage_params("s", {"model": {"arch": "gpt"}, "seed": 3}, dvc_yaml) == {"model.arch": "gpt", "seed": 3}

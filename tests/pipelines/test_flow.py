"""Flow logic without a server: stage order from DVC, parameter mapping, retries, the lock."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from prefect.states import Completed, Failed

from pipelines.dvc_runner import (
    DataValidationFailed,
    StageFailed,
    StageInputError,
    apply_overrides,
    run_stage,
    stage_order,
    stages_from,
)
from pipelines.flow import checkout_lock, is_transient, metrics_markdown, run_stage_task
from tests.pipelines.e2e_helpers import stage_names

ROOT = Path(__file__).resolve().parents[2]
TASKS = ["sst2", "imdb", "trec", "sms_spam", "subj"]  # params.yaml's
STAGES = stage_names(TASKS, ["translate_en_de", "translate_en_fr", "dailydialog"])


def test_stage_order_is_read_from_dvc_yaml():
    assert stage_order(ROOT) == STAGES


def dvc_project(tmp_path: Path, stages: dict) -> Path:
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=tmp_path, check=True)
    layout = yaml.safe_load((ROOT / "dvc.yaml").read_text())["vars"]  # where stages leave their outcomes
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"vars": layout, "stages": stages}, sort_keys=False))
    return tmp_path


def test_stage_order_follows_dependencies_not_file_order(tmp_path):
    stages = {
        "report": {"cmd": "cat b > c", "deps": ["b"], "outs": ["c"]},
        "middle": {"cmd": "cat a > b", "deps": ["a"], "outs": ["b"]},
        "first": {"cmd": "echo x > a", "outs": ["a"]},
    }
    assert stage_order(dvc_project(tmp_path, stages)) == ["first", "middle", "report"]


STAGE_SCRIPT = """
import sys
from pipelines.stages.common import ValidationFailed, run_stage


def main():
    if sys.argv[1] == "refuse":
        raise ValueError("params.yaml: pretrain.beta2 must be in [0, 1)")
    raise ValidationFailed("data validation failed (1 expectations)", ["[corpus] expect_column_values_to_be_in_set failed"])


run_stage(main)
"""


def test_run_stage_streams_output_and_reports_failure_by_outcome(tmp_path):
    (tmp_path / "stage.py").write_text(STAGE_SCRIPT)
    python = sys.executable
    stages = {
        "good": {"cmd": "echo hello-from-stage > out.txt && echo printed-line", "outs": ["out.txt"]},
        "bad": {"cmd": "echo about-to-fail && exit 3", "deps": ["out.txt"]},
        # the message is logged, not echoed: the runner reads the stage's outcome file, not its text
        "refused": {"cmd": f"{python} stage.py refuse", "deps": ["out.txt"]},
        "invalid": {"cmd": f"{python} stage.py invalid", "deps": ["out.txt"]},
    }
    root = dvc_project(tmp_path, stages)
    lines: list[str] = []
    result = run_stage(root, "good", False, lines.append)
    assert result.ran and "printed-line" in lines
    assert not run_stage(root, "good", False, lines.append).ran  # DVC's cache decides
    assert run_stage(root, "good", True, lines.append).ran  # forced
    with pytest.raises(StageFailed, match="about-to-fail") as failure:
        run_stage(root, "bad", False, lines.append)  # exit 3 without an outcome: not a validation failure
    assert type(failure.value) is StageFailed
    with pytest.raises(StageInputError, match=r"pretrain.beta2 must be in \[0, 1\)") as refused:
        run_stage(root, "refused", False, lines.append)
    assert refused.value.returncode == 2
    with pytest.raises(DataValidationFailed, match="expect_column_values_to_be_in_set") as invalid:
        run_stage(root, "invalid", False, lines.append)
    assert invalid.value.returncode == 3


def test_a_checkout_locked_by_another_dvc_command_is_said_so(tmp_path):
    from dvc.lock import make_lock

    from pipelines.dvc_runner import RepoLocked

    root = dvc_project(tmp_path, {"only": {"cmd": "echo x > y", "outs": ["y"]}})
    lock = make_lock(str(root / ".dvc/tmp/lock"), tmp_dir=str(root / ".dvc/tmp"))
    lock.lock()
    try:
        with pytest.raises(RepoLocked, match="locked by another command"):
            run_stage(root, "only", False, lambda line: None)
    finally:
        lock.unlock()
    assert run_stage(root, "only", False, lambda line: None).ran


def test_an_interrupted_task_stops_its_dvc_repro(tmp_path):
    """A cancelled flow run must not leave `dvc repro` (and so its stage) running on."""
    import psutil

    root = dvc_project(tmp_path, {"slow": {"cmd": "echo started && sleep 30"}})

    def interrupt_once_started(line: str) -> None:
        if "started" in line:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_stage(root, "slow", False, interrupt_once_started)
    assert not [p.cmdline() for p in psutil.Process().children() if "repro" in p.cmdline()]


def test_task_body_runs_without_a_server(tmp_path):
    root = dvc_project(tmp_path, {"only": {"cmd": "echo x > y", "outs": ["y"]}})
    outcome = run_stage_task.fn(str(root), "only", False, {})
    assert outcome["stage"] == "only" and outcome["ran"] is True


def test_overrides_are_applied_like_dvc_exp_run(tmp_path):
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    patterns = apply_overrides(
        tmp_path, {"pretrain.max_steps": 7, "model.arch": "lstm", "finetune.freeze_backbone": True}
    )
    assert patterns == ["pretrain.max_steps=7", "model.arch=lstm", "finetune.freeze_backbone=true"]
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    assert params["pretrain"]["max_steps"] == 7 and params["model"]["arch"] == "lstm"
    assert params["finetune"]["freeze_backbone"] is True
    with pytest.raises(ValueError, match="override .pretrain.max_stepz.: no such key"):
        apply_overrides(tmp_path, {"pretrain.max_stepz": 7})


def test_force_from_selects_the_stage_and_everything_after():
    later = {
        *(f"text_task@{t}" for t in ("translate_en_de", "translate_en_fr", "dailydialog")),
        "qa",
        "export",
        "evaluate",
    }
    assert stages_from(STAGES, "finetune") == {*(f"finetune@{task}" for task in TASKS), *later}
    assert stages_from(STAGES, "finetune@sms_spam") == {"finetune@sms_spam", "finetune@subj", *later}
    assert stages_from(STAGES, None) == set()
    with pytest.raises(ValueError, match="force_from='trian'"):
        stages_from(STAGES, "trian")


def test_retry_policy_retries_transient_failures_but_not_validation():
    assert is_transient(None, None, Failed(data=StageFailed("pretrain", -9, "Killed")))
    assert is_transient(None, None, Failed(data=RuntimeError("tracking server did not answer")))
    assert not is_transient(None, None, Failed(data=DataValidationFailed("validate", 1, "VALIDATION FAILED")))
    assert not is_transient(None, None, Failed(data=StageInputError("ingest", 2, "source 'x.txt' does not exist")))
    assert is_transient(None, None, Completed())


def test_second_run_waits_then_is_skipped(tmp_path):
    (tmp_path / ".dvc").mkdir()
    with checkout_lock(tmp_path, 0) as first:
        assert first
        with checkout_lock(tmp_path, 0.3) as second:
            assert not second
    with checkout_lock(tmp_path, 0) as again:
        assert again


def test_metrics_markdown_lists_numbers():
    text = metrics_markdown(
        {"classification": {"finetuned": {"accuracy": 0.81, "confusion_matrix": [[1]]}}}, "http://x"
    )
    assert "| classification.finetuned.accuracy | 0.8100 |" in text and "http://x" in text

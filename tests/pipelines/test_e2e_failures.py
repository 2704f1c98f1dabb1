"""End to end, what goes wrong: a terminated repro, bad inputs, interrupted finetunes and curves;
nothing already produced is lost and a re-run ends where an uninterrupted run would."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys

import pytest
import yaml

from lmcore.checkpoint import load_checkpoint
from tests.pipelines.conftest import dvc, project_env
from tests.pipelines.e2e_helpers import digest, mlflow_client, strict_json

pytestmark = pytest.mark.e2e


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

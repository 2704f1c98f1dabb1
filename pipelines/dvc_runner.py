"""DVC adapter for orchestrators: the stage graph, parameter overrides, running one stage.

The order of stages is DVC's own graph of `dvc.yaml` (never declared a second time); overrides
go through DVC's Hydra override parser, exactly as `dvc exp run -S key=value` applies them; a
stage runs as `dvc repro --single-item`, so DVC's cache still decides what is up to date. How a
failed stage ended comes from the outcome JSON it leaves (its exit code, kind and failures), and
a checkout busy with another DVC command from DVC's own lock, never from their printed text.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipelines.layout import outputs


class StageFailed(RuntimeError):
    """A stage exited non-zero; `output` holds the end of what it printed."""

    def __init__(self, stage: str, returncode: int, output: str) -> None:
        super().__init__(f"stage '{stage}' failed with exit code {returncode}:\n{output}")
        self.stage, self.returncode, self.output = stage, returncode, output


class DataValidationFailed(StageFailed):
    """The data failed its expectations: not transient, never retried."""


class StageInputError(StageFailed):
    """The stage refused its config or input (it exited 2 with one clear line): never retried."""


class RepoLocked(RuntimeError):
    """Another DVC command holds this checkout's lock (transient: the other run will finish)."""


def outcomes_dir(root: Path) -> Path:
    """Where pipelines.stages.common.write_outcome leaves `<stage>.json` for each stage."""
    return outputs("outcomes", root=root).dir


def stage_order(root: Path) -> list[str]:
    """The stages of root/dvc.yaml in execution order (dependencies first, then file order)."""
    import networkx as nx
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        graph = repo.index.graph  # edges point from a stage to the stages it depends on
        position = {stage: i for i, stage in enumerate(graph.nodes)}
        ordered = nx.lexicographical_topological_sort(graph.reverse(copy=True), key=lambda s: position[s])
        return [stage.name for stage in ordered]


def apply_overrides(root: Path, overrides: dict[str, object]) -> list[str]:
    """Write `key=value` overrides into params.yaml the way `dvc exp run -S` does."""
    from dvc.utils.hydra import apply_overrides as hydra_apply

    from pipelines.params import read_yaml

    params = read_yaml(root / "params.yaml") or {}
    for key in overrides:
        node = params
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                raise ValueError(f"override '{key}': no such key in {root / 'params.yaml'} (at '{part}')")
            node = node[part]
    patterns = [f"{key}={_hydra_value(value)}" for key, value in overrides.items()]
    if patterns:
        hydra_apply(str(root / "params.yaml"), patterns)
    return patterns


def _hydra_value(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | dict):
        import json

        return json.dumps(value)
    return str(value)


def stages_from(order: list[str], first: str | None) -> set[str]:
    """The stages to force: `first` and everything after it in the order. `first` may name a
    foreach stage as a whole (`finetune`: from the first of its `finetune@<task>` stages)."""
    if first is None:
        return set()
    matches = [i for i, stage in enumerate(order) if stage == first or stage.startswith(f"{first}@")]
    if not matches:
        raise ValueError(f"force_from={first!r} is not a stage of dvc.yaml ({', '.join(order)})")
    return set(order[matches[0] :])


@dataclass
class StageResult:
    stage: str
    ran: bool
    output: str


def run_stage(
    root: Path, stage: str, force: bool, on_line: Callable[[str], None], env: dict[str, str] | None = None
) -> StageResult:
    """`dvc repro --single-item stage`, streaming each output line to `on_line`."""
    cmd = [sys.executable, "-m", "dvc", "repro", "--single-item", stage, *(["--force"] if force else [])]
    (outcomes_dir(root) / f"{stage}.json").unlink(missing_ok=True)
    environment = {**os.environ, **(env or {})}
    # Stage commands call `python`: make it this interpreter's.
    environment["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{environment.get('PATH', '')}"
    process = subprocess.Popen(
        cmd, cwd=root, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    lines: list[str] = []
    assert process.stdout is not None
    try:
        for line in process.stdout:
            line = line.rstrip("\n")
            lines.append(line)
            on_line(line)
        returncode = process.wait()
    except BaseException:  # a cancelled or interrupted flow run: stop `dvc repro`, and with it the stage
        process.terminate()
        process.wait()
        raise
    output = "\n".join(lines[-60:])
    if returncode != 0:
        outcome = read_outcome(root, stage)
        if outcome is None and repo_is_locked(root):
            raise RepoLocked(f"the DVC repository at {root} is locked by another command")
        if outcome is not None and outcome["kind"] == "validation_failed":
            raise DataValidationFailed(
                stage, outcome["exit_code"], "\n".join([outcome["message"], *outcome["failures"]])
            )
        if outcome is not None and outcome["kind"] == "input_error":
            raise StageInputError(stage, outcome["exit_code"], outcome["message"])
        raise StageFailed(stage, returncode, output)
    ran = any(text.startswith(f"Running stage '{stage}'") for text in lines)
    return StageResult(stage, ran, output)


def read_outcome(root: Path, stage: str) -> dict | None:
    """The outcome the stage wrote in this run (run_stage removed any older one first)."""
    path = outcomes_dir(root) / f"{stage}.json"
    return json.loads(path.read_text()) if path.exists() else None


def repo_is_locked(root: Path) -> bool:
    """Whether another DVC command holds the checkout's lock (DVC's own lock, tried without waiting)."""
    from dvc.lock import LockError, make_lock

    lock = make_lock(str(root / ".dvc" / "tmp" / "lock"), tmp_dir=str(root / ".dvc" / "tmp"), wait=False)
    try:
        lock.lock()
    except LockError:
        return True
    lock.unlock()
    return False

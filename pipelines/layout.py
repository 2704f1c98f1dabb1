"""What dvc.yaml says of each stage: where its outputs live, its entry as DVC resolves it, and the
values of the params it lists.

The output paths are named once, in the `out` of dvc.yaml's `vars`.
dvc.yaml's deps and outs interpolate them (`${out.pretrain.dir}/${out.pretrain.model}`) and the
stages read them here (`outputs("pretrain").model`), so the map and the code cannot disagree.
Each stage has a folder (`dir`) and names of paths inside it; a foreach stage's folder holds one
folder per task (`outputs("finetune", "sst2").results`).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from pipelines.params import PARAMS_FILE, ROOT, read_yaml


class StageOutputs:
    """A stage's folder and the paths in it by name; `at(folder)` gives the same names in another
    folder (the `.tmp` sibling a stage builds in before swapping it in)."""

    def __init__(self, stage: str, folder: Path, names: dict[str, str]) -> None:
        self.stage, self.dir, self._names = stage, folder, names

    def __getattr__(self, name: str) -> Path:
        if name.startswith("_"):
            raise AttributeError(name)
        if name not in self._names:
            raise AttributeError(
                f"dvc.yaml's vars name no output {name!r} of {self.stage} (they name {sorted(self._names)})"
            )
        return self.dir / self._names[name]

    def at(self, folder: Path) -> StageOutputs:
        return StageOutputs(self.stage, folder, self._names)

    @property
    def failed_dir(self) -> Path:
        """Where a run that failed validation leaves its outputs, beside the last good ones."""
        return self.dir.with_name(self.dir.name + "-failed")


@functools.cache
def _layout(dvc_yaml: Path) -> dict[str, Any]:
    """The entry of dvc.yaml's vars that holds `out` (and `run_file`)."""
    for entry in read_yaml(dvc_yaml).get("vars", []):
        if isinstance(entry, dict) and "out" in entry:
            return entry
    raise ValueError(f"{dvc_yaml}: its vars have no `out` (the output paths of the stages)")


def outputs(stage: str, task: str | None = None, root: Path | None = None) -> StageOutputs:
    """The outputs of `stage` (of its `task` entry, for a foreach stage) of the project at `root`;
    by default this one's, relative to the working directory (DVC starts each stage at the root)."""
    layout = _layout((root or ROOT) / "dvc.yaml")["out"]
    if stage not in layout:
        raise ValueError(f"dvc.yaml's vars name no outputs of a stage {stage!r}")
    names = dict(layout[stage])
    folder = Path(names.pop("dir"))
    folder = root / folder if root else folder
    return StageOutputs(f"{stage}@{task}" if task else stage, folder / task if task else folder, names)


def run_file(folder: Path) -> Path:
    """The file in a stage's folder that names its MLflow run (later stages link to it)."""
    return folder / _layout(ROOT / "dvc.yaml")["run_file"]


@functools.cache
def stage_definition(stage: str, root: Path = ROOT) -> dict[str, Any]:
    """A stage's entry of root/dvc.yaml as DVC resolves it: vars interpolated, and for one item of
    a foreach stage (`finetune@sst2`) its `do` entry with `${key}` filled in."""
    from dvc.dvcfile import load_file
    from dvc.repo import Repo

    with Repo(str(root), uninitialized=True) as repo:
        return load_file(repo, str(Path(root).resolve() / "dvc.yaml")).resolver.resolve_one(stage)[stage]


def stage_params(stage: str, raw: dict[str, Any], root: Path = ROOT) -> dict[str, Any]:
    """The values of the params that dvc.yaml lists for `stage`: the settings whose change re-runs it."""
    values = {}
    for entry in stage_definition(stage, root).get("params", []):
        for key in [entry] if isinstance(entry, str) else entry.get(PARAMS_FILE, []):
            node = raw
            for part in key.split("."):
                node = node[part]
            values[key] = node
    return values

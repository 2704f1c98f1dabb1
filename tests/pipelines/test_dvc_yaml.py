"""dvc.yaml is the true map: each stage's code deps are exactly the repository modules it imports.

The closure is read from the source (every `import` and `from ... import`, also those inside
functions, with the packages they pass through); a folder dep stands for every module in it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from pipelines.layout import outputs, stage_definition, stage_params
from pipelines.params import load_raw_params, read_yaml
from tests.imports import PACKAGES, ROOT, imported_modules, module_file


def import_closure(module: str) -> set[Path]:
    """Every repository file that importing `module` executes."""
    seen: set[Path] = set()
    pending = [module]
    while pending:
        name = pending.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__.py and a/b/__init__.py too
            path = module_file(".".join(parts[:i]))
            if path is not None and path not in seen:
                seen.add(path)
                pending.extend(imported_modules(path))
    return seen


def code_deps(deps: list[str]) -> set[Path]:
    """The Python files a stage's deps name (a folder: every .py file in it); data deps are left out."""
    files = set()
    for dep in deps:
        path = ROOT / dep
        if dep.split("/")[0] not in PACKAGES:
            continue
        files.update(path.rglob("*.py") if path.is_dir() else [path])
    return {f for f in files if "__pycache__" not in f.parts}


def logs_a_model(module: str) -> bool:
    """A stage that logs an MLflow model ships all of lmcore inside it, and the pyfunc wrapper
    (pipelines/tracking/log_lmcore_model): both are its inputs, though it imports neither whole."""
    tree = ast.parse(module_file(module).read_text())
    return any(isinstance(n, ast.Attribute) and n.attr == "log_lmcore_model" for n in ast.walk(tree))


def stage_inputs(module: str) -> set[Path]:
    files = import_closure(module)
    if ROOT / "lmcore/hf.py" in files:  # Hugging Face export copies the modeling code it ships
        files |= set((ROOT / "lmcore/hf_remote").glob("*.py"))
    if logs_a_model(module):
        files |= {p for p in (ROOT / "lmcore").rglob("*.py") if "__pycache__" not in p.parts}
        files.add(ROOT / "pipelines/tracking/pyfunc_model.py")
    return files


def stages() -> dict[str, dict]:
    resolved = {}
    for name, stage in read_yaml(ROOT / "dvc.yaml")["stages"].items():
        if "foreach" in stage:
            name, stage = f"{name}@<task>", stage["do"]
        resolved[name] = stage
    return resolved


@pytest.mark.parametrize("name", list(stages()))
def test_each_stage_depends_on_exactly_the_modules_it_imports(name):
    stage = stages()[name]
    command = stage["cmd"].split()
    module = command[command.index("-m") + 1]
    closure = {p.relative_to(ROOT).as_posix() for p in stage_inputs(module)}
    listed = {p.relative_to(ROOT).as_posix() for p in code_deps(stage["deps"])}
    assert sorted(closure - listed) == [], f"{name} imports these, dvc.yaml does not list them"
    assert sorted(listed - closure) == [], f"{name} lists these in dvc.yaml, it does not import them"


def test_the_closure_follows_lazy_and_relative_imports(tmp_path, monkeypatch):
    closure = {p.relative_to(ROOT).as_posix() for p in import_closure("pipelines.stages.validate")}
    assert "pipelines/expectations.py" in closure  # imported inside main(): GE is slow to import
    assert "lmcore/models/gpt.py" in import_closure_names("lmcore.models")
    assert "lmcore/__main__.py" not in import_closure_names("pipelines.stages.finetune")


def import_closure_names(module: str) -> set[str]:
    return {p.relative_to(ROOT).as_posix() for p in import_closure(module)}


def test_a_missing_dep_is_found(tmp_path):
    """The check above can fail: a stage's deps without one of its modules differ from its closure."""
    stage = stages()["tokenizer"]
    closure = import_closure("pipelines.stages.tokenizer")
    fewer = [dep for dep in stage["deps"] if dep != "lmcore/tokenizer.py"]
    assert ROOT / "lmcore/tokenizer.py" in closure - code_deps(fewer)


def string_constants(path: Path) -> list[str]:
    """The strings a module's code holds, docstrings left out."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef) and node.body
        if isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        n.value
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings
    ]


def test_each_output_path_is_written_once():
    """dvc.yaml's stages and the pipeline's code name outputs only through the `out` vars."""
    written = [
        f"{path.relative_to(ROOT)}: {text!r}"
        for path in sorted((ROOT / "pipelines").rglob("*.py"))
        for text in string_constants(path)
        if "outputs/" in text or text == "outputs"
    ]
    assert written == []
    stages_text = (ROOT / "dvc.yaml").read_text().split("\nstages:\n", 1)[1]
    assert [line for line in stages_text.splitlines() if "outputs/" in line.split("#")[0]] == []


def test_the_layout_names_what_dvc_resolves():
    finetune = outputs("finetune", "trec")
    assert finetune.results == Path("outputs/finetune/trec/results.json")
    resolved = stage_definition("finetune@trec")["outs"]
    assert finetune.results.as_posix() in resolved
    persisted = [next(iter(out)) for out in resolved if isinstance(out, dict)]  # outs with options
    assert finetune.checkpoints.as_posix() in persisted
    tmp = outputs("ingest").at(Path("outputs/ingest.tmp"))
    assert tmp.corpus == Path("outputs/ingest.tmp/corpus.parquet")
    with pytest.raises(AttributeError, match="no output 'corpse' of ingest"):
        _ = outputs("ingest").corpse
    with pytest.raises(ValueError, match="no outputs of a stage 'ingets'"):
        outputs("ingets")


def test_stage_params_are_the_values_of_the_keys_dvc_yaml_lists(tmp_path):
    """What a stage's checkpoint fingerprint covers: every setting whose change makes DVC re-run it."""
    raw = load_raw_params(ROOT / "params.yaml")
    pretrain = stage_params("pretrain", raw)
    assert set(pretrain) == {"model", "pretrain", "evaluate.num_windows", "evaluate.batch_size"}
    assert pretrain["evaluate.num_windows"] == raw["evaluate"]["num_windows"]
    # a foreach stage's entry, for one task: ${key} filled in
    assert stage_params("finetune@trec", raw)["tasks.trec"] == raw["tasks"]["trec"]
    (tmp_path / "dvc.yaml").write_text(
        "vars:\n  - key_name: arch\nstages:\n  s:\n    cmd: x\n    params:\n      - model.${key_name}\n"
        "      - params.yaml:\n          - seed\n"
    )
    assert stage_params("s", {"model": {"arch": "gpt"}, "seed": 3}, tmp_path) == {"model.arch": "gpt", "seed": 3}

"""export: the pretrained language model and each task's finetuned classifier as Hugging Face folders.

`outputs/export/lm` and `outputs/export/<task>` open with `transformers` alone
(`AutoModelForCausalLM` / `AutoModelForSequenceClassification`, `trust_remote_code=True` unless the
model is a Llama): lmcore/hf.py says how. `export.json` lists each folder, its class and whether it
is native or carries its modeling code; every folder is logged to MLflow under `hf/<name>`.
"""

from __future__ import annotations

import json
from pathlib import Path

from lmcore.hf import export_hf
from pipelines import tracking
from pipelines.params import load_params
from pipelines.stages.common import json_dump, logger, run_stage, stage_dir
from pipelines.stages.sinks import ComputeClock


def exported_sources(tasks: list[str]) -> dict[str, Path]:
    """The lmcore folders to export, by the name of their Hugging Face folder."""
    return {"lm": stage_dir("pretrain") / "model"} | {
        task: stage_dir("finetune") / task / "models" / "finetuned" for task in tasks
    }


def describe(folder: Path) -> dict:
    config = json.loads((folder / "config.json").read_text())
    return {
        "path": folder.as_posix(),
        "class": config["architectures"][0],
        "remote_code": "auto_map" in config,
        "bytes": sum(p.stat().st_size for p in folder.iterdir()),
    }


def main() -> None:
    params = load_params()
    out = stage_dir("export")
    sources = exported_sources(list(params.tasks))
    upstream = {"pretrain": stage_dir("pretrain"), **{t: stage_dir("finetune") / t for t in params.tasks}}
    with tracking.stage_run("export", params.tracking.experiment, {"tasks": list(params.tasks)}, out, upstream):
        clock = ComputeClock()
        with clock.measure():
            folders = {name: describe(export_hf(source, out / name)) for name, source in sources.items()}
        json_dump(out / "export.json", folders)
        tracking.log_metrics({"bytes": {name: f["bytes"] for name, f in folders.items()}, **clock.metrics()})
        tracking.log_artifacts(out / "export.json")
        for name in folders:
            tracking.log_artifacts(out / name, artifact_path=f"hf/{name}")
        logger.info("export: %s", {name: f["class"] for name, f in folders.items()})


if __name__ == "__main__":
    run_stage(main)

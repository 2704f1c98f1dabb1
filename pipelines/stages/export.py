"""export: the pretrained language model, each task's finetuned classifier and each text task's
model as Hugging Face folders.

`outputs/export/lm`, `outputs/export/<task>` and `outputs/export/<text task>` open with
`transformers` alone (`AutoModelForCausalLM` / `AutoModelForSequenceClassification`,
`trust_remote_code=True` unless the model is a Llama): lmcore/hf.py says how. A text task's
tokenizer carries its prompt as a chat template (`tokenizer.apply_chat_template`). `export.json`
lists each folder, its class and whether it is native or carries its modeling code; every folder
is logged to MLflow under `hf/<name>`.
"""

from __future__ import annotations

import json
from pathlib import Path

from lmcore.hf import export_hf
from pipelines import tracking
from pipelines.layout import StageOutputs, outputs
from pipelines.params import load_params
from pipelines.stages.common import json_dump, logger, run_stage
from pipelines.stages.sinks import ComputeClock


def exported_sources(tasks: list[str], text_tasks: list[str], out: StageOutputs) -> dict[Path, Path]:
    """Each Hugging Face folder to write, and the lmcore folder it exports."""
    return (
        {out.lm: outputs("pretrain").model}
        | {out.dir / task: outputs("finetune", task).models / "finetuned" for task in tasks}
        | {out.dir / task: outputs("text_task", task).model for task in text_tasks}
    )


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
    out = outputs("export")
    sources = exported_sources(list(params.tasks), list(params.text_tasks), out)
    upstream = {"pretrain": outputs("pretrain").dir, **{t: outputs("finetune", t).dir for t in params.tasks}}
    upstream |= {f"text_task@{t}": outputs("text_task", t).dir for t in params.text_tasks}
    logged = {"tasks": list(params.tasks), "text_tasks": list(params.text_tasks)}
    with tracking.stage_run("export", params.tracking.experiment, logged, out.dir, upstream):
        clock = ComputeClock()
        with clock.measure():
            folders = {folder.name: describe(export_hf(source, folder)) for folder, source in sources.items()}
        json_dump(out.listing, folders)
        tracking.log_metrics({"bytes": {name: f["bytes"] for name, f in folders.items()}, **clock.metrics()})
        tracking.log_artifacts(out.listing)
        for name in folders:
            tracking.log_artifacts(out.dir / name, artifact_path=f"hf/{name}")
        logger.info("export: %s", {name: f["class"] for name, f in folders.items()})


if __name__ == "__main__":
    run_stage(main)

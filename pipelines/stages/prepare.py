"""prepare@<task>: one task's labeled data, read, repaired, split, validated and encoded.

`python -m pipelines.stages.prepare <task>` reads `tasks.<task>` of params.yaml and the test sets
it names in `test_on`; writes outputs/tasks/<task>/: `labeled.parquet` (every kept example with
its split, source and row), `quarantine.jsonl`, `<split>.npz` with the pretraining tokenizer's
ids, `train_text.bin` (the task's train texts as a token stream, for LM adaptation),
`test_<set>.npz` per test set, `stats.json`, and the validation results with Data Docs. Like
ingest and validate, it swaps its outputs in only after everything passed; a failed validation
leaves them in outputs/tasks/<task>-failed and exits 3.
"""

from __future__ import annotations

import shutil

from lmcore.tokenizer import load_tokenizer
from pipelines import tracking
from pipelines.labeled import read_labeled, read_test_set, split_task, write_task_streams, write_test_set
from pipelines.layout import outputs
from pipelines.params import load_params, load_raw_params
from pipelines.stages.common import (
    ValidationFailed,
    fresh_dir,
    json_dump,
    logger,
    run_stage,
    swap_in,
    task_argument,
)
from pipelines.stages.sinks import ComputeClock
from pipelines.tables import read_quarantine


def main() -> None:
    params = load_params()
    name = task_argument(params)
    task = params.tasks[name]
    out = outputs("tasks", name)
    tmp = out.at(fresh_dir(out.dir))
    raw = load_raw_params()
    logged = {f"tasks.{name}": raw["tasks"][name], "data": raw["data"], "validate": raw["validate"]}
    upstream = {"tokenizer": outputs("tokenizer").dir}
    with tracking.stage_run("prepare", params.tracking.experiment, logged, tmp.dir, upstream, task=name) as run:
        from pipelines.expectations import Table, validate_tables  # GE costs 3-4 s to import; only here

        clock = ComputeClock()
        with clock.measure():
            frame, sources = read_labeled(task, params.data, tmp.dir / "quarantine.jsonl")
            table, dropped = split_task(frame, task, params.data.split_salt)
            table.to_parquet(tmp.dir / "labeled.parquet", index=False)
            shares = (task.min_class_share, task.max_class_share)
            splits = ["train", "validation", "test"]
            tables = {name: Table(table, task.labels, splits, read_quarantine(tmp.dir / "quarantine.jsonl"), shares)}
            test_sets = {}
            for other in task.test_on:
                quarantine = tmp.dir / f"test_{other}.quarantine.jsonl"
                test_sets[other], counts = read_test_set(params.test_sets[other], params.data, quarantine)
                sources.update(counts)
                labels = params.test_sets[other].labels
                tables[f"{name}.test_{other}"] = Table(test_sets[other], labels, ["test"], read_quarantine(quarantine))
            success, failures, results = validate_tables(tables, params.data, params.validate, tmp.dir / "data_docs")
        summary = {"success": success, "failed_expectations": [f.describe() for f in failures]}
        json_dump(tmp.dir / "validation.json", {**summary, "results": results})
        tracking.log_artifacts(tmp.dir / "validation.json")
        if not success:
            shutil.rmtree(out.failed_dir, ignore_errors=True)
            tmp.dir.rename(out.failed_dir)
            where = f"results in {out.failed_dir}; MLflow run {run.info.run_id}"
            raise ValidationFailed(f"task {name}: data validation failed; {where}", summary["failed_expectations"])
        with clock.measure():
            tokenizer_path = outputs("tokenizer").tokenizer
            tokenizer = load_tokenizer(tokenizer_path, params.tokenizer.eot_token, params.tokenizer.pad_token)
            stats = {"splits": write_task_streams(tokenizer, table, task, tmp.dir, tmp.train_text), "sources": sources}
            stats["dropped_inside_validation_texts"] = dropped
            for other, frame in test_sets.items():
                write_test_set(tokenizer, frame, params.test_sets[other], task, tmp.dir / f"test_{other}.npz")
                stats[f"test_{other}"] = {"examples": len(frame)}
        json_dump(tmp.stats, stats)
        tracking.log_table_input(
            table[["doc_id", "split", "label"]], out.dir / "labeled.parquet", name, context="prepared"
        )
        tracking.log_metrics({**stats, **clock.metrics()})
        tracking.log_artifacts(tmp.stats, tmp.dir / "quarantine.jsonl")
        logger.info("task %s: %s", name, stats["splits"])
    swap_in(tmp.dir, out.dir)
    shutil.rmtree(out.failed_dir, ignore_errors=True)


if __name__ == "__main__":
    run_stage(main)

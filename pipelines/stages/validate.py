"""validate: Great Expectations suites over the ingested corpus; a failure stops the pipeline.

On success the results, a summary and Data Docs replace `outputs/validate`. On failure they go
to `outputs/validate-failed` instead (the last good run's outputs stay), the failed
expectations are printed with counts and examples, and the stage exits 3. The tasks' labeled
tables are validated by the same suites in their `prepare@<task>` stages.
"""

from __future__ import annotations

import shutil

import pandas as pd

from pipelines import tracking
from pipelines.layout import outputs
from pipelines.params import load_params, load_raw_params
from pipelines.stages.common import ValidationFailed, fresh_dir, json_dump, logger, run_stage, swap_in
from pipelines.tables import read_quarantine

SPLITS = ["train", "validation", "test"]


def main() -> None:
    params = load_params()
    ingested, out = outputs("ingest"), outputs("validate")
    tmp = out.at(fresh_dir(out.dir))
    raw = load_raw_params()
    with tracking.stage_run(
        "validate",
        params.tracking.experiment,
        {"validate": raw["validate"], "data": raw["data"]},
        tmp.dir,
        upstream={"ingest": ingested.dir},
    ) as run:
        from pipelines.expectations import Table, validate_tables  # GE costs 3-4 s to import; only here

        quarantined = read_quarantine(ingested.quarantine)
        tables = {"corpus": Table(pd.read_parquet(ingested.corpus), None, SPLITS, quarantined)}
        success, failures, results = validate_tables(tables, params.data, params.validate, tmp.dir / "data_docs")
        summary = {
            "success": success,
            "failed_expectations": [f.describe() for f in failures],
            "rows": {name: len(table.frame) for name, table in tables.items()},
            "quarantined": len(quarantined),
        }
        json_dump(tmp.summary, summary)
        json_dump(tmp.dir / "results.json", results)
        tracking.log_metrics({"success": float(success), "failed_expectations": float(len(failures))})
        tracking.log_artifacts(tmp.summary, tmp.dir / "results.json")
        tracking.log_artifacts(tmp.dir / "data_docs")
        if not success:
            shutil.rmtree(out.failed_dir, ignore_errors=True)
            tmp.dir.rename(out.failed_dir)
            where = f"results and Data Docs in {out.failed_dir}; MLflow run {run.info.run_id}"
            raise ValidationFailed(
                f"data validation failed ({len(failures)} expectations); {where}", summary["failed_expectations"]
            )
    swap_in(tmp.dir, out.dir)
    shutil.rmtree(out.failed_dir, ignore_errors=True)
    logger.info("validation passed: %s", summary["rows"])


if __name__ == "__main__":
    run_stage(main)

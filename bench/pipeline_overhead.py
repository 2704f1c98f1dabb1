"""How much of a full `dvc repro` is spent outside model computation.

Runs `dvc repro --force` (all stages) in the project, timed end to end, then reads each
stage's MLflow run: `timing/process_seconds` (the stage process from start to end: interpreter,
imports, tracking, validation, its work) and `timing/compute_seconds` (reading and encoding
data, training, evaluating, generating). Overhead = wall time minus the compute seconds: imports,
MLflow tracking, Great Expectations, DVC's own hashing and orchestration.

  python bench/pipeline_overhead.py            # run the pipeline, then report
  python bench/pipeline_overhead.py --no-run   # report on the latest pipeline lineage
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--no-run", action="store_true")
    parser.add_argument("--experiment", default="lmcore")
    args = parser.parse_args()
    wall = None
    if not args.no_run:
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "dvc", "repro", "--force"], cwd=ROOT, env=env, check=True)
        wall = time.perf_counter() - start

    import mlflow

    warnings.filterwarnings("ignore")
    mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI", f"sqlite:///{ROOT / 'mlflow.db'}"))
    runs = mlflow.search_runs(
        experiment_names=[args.experiment], output_format="list", order_by=["attributes.start_time DESC"]
    )
    latest_evaluate = next(r for r in runs if r.data.tags.get("stage") == "evaluate")
    group = latest_evaluate.data.tags["pipeline_group"]
    stages: dict[str, object] = {}
    for run in runs:
        tags = run.data.tags
        # one run per stage and task; a curve point's run is a child of its finetune run, whose clock holds it
        if tags.get("pipeline_group") == group and run.info.status == "FINISHED" and tags["stage"] != "curve":
            stages.setdefault(f"{tags['stage']}@{tags['task']}" if tags.get("task") else tags["stage"], run)
    rows = {}
    for name, run in sorted(stages.items(), key=lambda item: item[1].info.start_time):
        metrics = run.data.metrics
        rows[name] = {
            "process_seconds": round(metrics.get("timing/process_seconds", float("nan")), 1),
            "compute_seconds": round(metrics.get("timing/compute_seconds", 0.0), 1),
        }
    compute = sum(r["compute_seconds"] for r in rows.values())
    process = sum(r["process_seconds"] for r in rows.values())
    total = (
        wall
        if wall is not None
        else (max(r.info.end_time for r in stages.values()) - min(r.info.start_time for r in stages.values())) / 1000
    )
    report = {
        "stages": rows,
        "wall_seconds": round(total, 1),
        "stage_process_seconds": round(process, 1),
        "compute_seconds": round(compute, 1),
        "outside_compute_seconds": round(total - compute, 1),
        "outside_compute_share": round((total - compute) / total, 3),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

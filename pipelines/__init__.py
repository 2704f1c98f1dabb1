"""pipelines: the DVC stages, the MLflow/Great Expectations/Prefect adapters, wired to lmcore."""

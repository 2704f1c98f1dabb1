"""One module per DVC stage; `python -m pipelines.stages.<name>` runs it."""

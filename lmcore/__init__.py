"""lmcore: tokenizers, language models, one training loop, evaluation, generation, checkpoints.

A library with no knowledge of the orchestration tools (MLflow, Prefect, DVC, Great
Expectations): metrics come back as dicts and sinks are passed in as callables.
"""

__version__ = "0.1.0"

# The two commands a new user needs: `make repro` (set up, then run the whole pipeline) and
# `make test` (set up, then run the test suite). Both create .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build is what this project's machines use; set TORCH_SPEC="torch" for a CUDA build.
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup repro repro-long test test-fast test-transformers4 lint mlflow-ui bench

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

repro: setup
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH dvc repro

# The long profile (docs/findings.md): a 2x512 LSTM pretrained for 12,000 steps, about 50 minutes
# of pretraining on 2 idle cores and 35 of finetuning (measured 2026-12-03). A DVC experiment: its
# results land in the workspace and in `dvc exp show`; DVC's run cache gives them back later.
LONG_PROFILE ?= -S model.lstm.n_hidden=512 -S pretrain.max_steps=12000
repro-long: setup
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH dvc exp run $(LONG_PROFILE)

# One torch thread: a 2-thread step is 5x slower beside another busy process. The unit tier
# (under 2 minutes) runs first, then the end-to-end tier (the real pipeline, Prefect, DVC).
test: test-fast
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -m e2e

test-fast: setup
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -m "not e2e"

# The oldest transformers pyproject promises (>=4.57): the export tests in a venv of its own, as
# transformers 4 names the generation cache and copies remote code differently. CI runs it after `make test`.
TRANSFORMERS4 ?= transformers==4.57.6
HF4_VENV ?= .venv-transformers4
test-transformers4:
	python3 -m venv $(HF4_VENV)
	$(HF4_VENV)/bin/python -c "import torch" 2>/dev/null || $(HF4_VENV)/bin/pip install -q "$(TORCH_SPEC)"
	$(HF4_VENV)/bin/pip install -q "$(TRANSFORMERS4)" pytest -e .
	OMP_NUM_THREADS=1 $(HF4_VENV)/bin/python -m pytest -q -p no:randomly tests/lmcore/test_hf.py

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

mlflow-ui: setup
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(VENV)/bin/mlflow ui --host 127.0.0.1 --port 5000 --workers 1 \
		--backend-store-uri sqlite:///$(CURDIR)/mlflow.db --default-artifact-root $(CURDIR)/mlartifacts

bench: setup
	$(PY) bench/shakespeare.py

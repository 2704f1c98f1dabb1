"""params.yaml, loaded strictly: every section, every key, before a stage does any work.

The lmcore configs (tokenizer, model, training) are used as they are; the data sections live in
`data_params.py`, the other stage-level sections are the dataclasses below. An unknown or missing key is a ValueError naming it, so
`dvc exp run -S model.gpt.n_layr=2` fails instead of adding a silent new key.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from lmcore.config import config_from_dict
from lmcore.generate import check_sampling
from lmcore.models import ARCHITECTURES, build_model_config
from lmcore.sharding import batch_threads_problem
from lmcore.tokenizer import TokenizerConfig
from lmcore.train import TrainConfig
from pipelines.data_params import CorpusParams, DataParams, LabeledSetParams, TaskParams, ValidateParams, check_tasks
from pipelines.text_params import QaParams, TextTaskParams, check_text_tasks

ROOT = Path(__file__).resolve().parents[1]
PARAMS_FILE = "params.yaml"
# What the stages' periodic evaluations report, so that early stopping can be checked at load:
# pretrain's is lmcore's evaluate_lm (with bits per byte), the classifier's is finetune.classify's.
LM_EVAL_METRICS = ("loss", "perplexity", "top1_accuracy", "top5_accuracy", "bits_per_byte")
CLASSIFIER_EVAL_METRICS = ("accuracy", "macro_f1")


@dataclass(frozen=True)
class ModelParams:
    arch: str
    gpt: dict[str, Any]
    lstm: dict[str, Any]
    gru: dict[str, Any]

    def config_values(self) -> dict[str, Any]:
        return getattr(self, self.arch)


@dataclass(frozen=True)
class FinetuneParams:
    """How every task's classifier trains; the task's own entry says what it trains on."""

    recipe: Literal["classification", "lm_then_classification"]  # the latter: ULMFiT's LM adaptation first
    init: Literal["pretrained", "scratch"]
    freeze_backbone: bool
    pooling: Literal["mean", "last", "concat"]
    classifier_dropout: float
    scratch_baseline: bool  # also train the same architecture from scratch, for comparison
    tfidf_baseline: bool  # also fit TF-IDF + logistic regression, for comparison
    lm_steps: int  # language-model steps on the task's own train text (lm_then_classification)
    lm_batch_size: int  # windows of the task's max_len tokens per language-model step
    length_buckets: int  # classifier batches draw texts of similar length; 1 is plain uniform sampling
    epochs: float  # classifier steps: epochs over the labeled examples, within [min_steps, train.max_steps]
    min_steps: int
    train: TrainConfig

    def __post_init__(self) -> None:
        for name in ("lm_batch_size", "length_buckets", "min_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.recipe == "lm_then_classification" and self.lm_steps < 1:
            raise ValueError(f"lm_steps must be at least 1 for recipe {self.recipe}, got {self.lm_steps}")
        if not 0.0 <= self.classifier_dropout < 1.0:
            raise ValueError(f"classifier_dropout must be in [0, 1), got {self.classifier_dropout}")
        if self.epochs <= 0:
            raise ValueError(f"epochs must be positive, got {self.epochs}")

    def train_for(self, task: TaskParams, name: str) -> TrainConfig:
        """finetune.train with the task's own changes (tasks.<name>.train)."""
        values = {**dataclasses.asdict(self.train), **task.train}
        return config_from_dict(TrainConfig, values, f"tasks.{name}.train")

    def lm_config(self) -> TrainConfig:
        """The LM adaptation phase's training: finetune.train with the phase's steps and batch."""
        return dataclasses.replace(
            self.train, max_steps=self.lm_steps, batch_size=self.lm_batch_size, early_stopping_patience=0
        )

    def classifier_steps(self, examples: int, train: TrainConfig) -> int:
        """Steps for `examples` labeled examples: `epochs` passes, at least min_steps, at most max_steps."""
        passes = math.ceil(self.epochs * examples / (train.batch_size * train.grad_accum_steps))
        return min(train.max_steps, max(self.min_steps, passes))


@dataclass(frozen=True)
class SampleParams:
    prompts: list[str]
    max_new_tokens: int
    temperature: float
    top_k: int
    top_p: float
    seed: int

    def __post_init__(self) -> None:
        check_sampling(self.max_new_tokens, self.temperature, self.top_k, self.top_p)


@dataclass(frozen=True)
class ZeroShotParams:
    template: str  # the context, a Jinja template of the test example's `text`
    choices: list[str]  # one continuation per label of the task, in the task's label order


@dataclass(frozen=True)
class LmEvalParams:
    enabled: bool
    batch_size: int
    limit: int  # documents per task; 0 is all of them
    bootstrap_iters: int  # lm-eval's bootstrap for the standard errors of perplexities (0: none)
    zero_shot: dict[str, ZeroShotParams]  # task name: prompt

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        for name in ("limit", "bootstrap_iters"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for task, prompt in self.zero_shot.items():
            if "text" not in prompt.template:
                raise ValueError(f"zero_shot.{task}.template must use {{{{text}}}}, got {prompt.template!r}")


@dataclass(frozen=True)
class EvaluateParams:
    num_windows: int  # windows of the evaluations during training (fixed, evenly spaced)
    lm_text_windows: int  # windows of each lm_texts entry; 0 is every non-overlapping window
    batch_size: int
    bootstrap_samples: int
    # Texts the pretrained LM is scored on, in bits per byte beside xz and gzip on the same bytes:
    # a path, or `corpus` for the corpus's own held-out test split.
    lm_texts: dict[str, str]
    samples: SampleParams
    lm_eval: LmEvalParams  # lm-evaluation-harness on the exported LM (pipelines/lm_eval_tasks.py)

    def __post_init__(self) -> None:
        for name in ("batch_size", "bootstrap_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.num_windows < 1:
            raise ValueError(f"num_windows must be at least 1, got {self.num_windows}")
        if self.lm_text_windows < 0:
            raise ValueError(f"lm_text_windows must be >= 0 (0 is every window), got {self.lm_text_windows}")
        if not self.lm_texts:
            raise ValueError("lm_texts is empty: name at least one text to score the language model on")


@dataclass(frozen=True)
class TrackingParams:
    experiment: str
    register_models: bool
    lm_model_name: str
    classifier_model_name: str


@dataclass(frozen=True)
class Params:
    data: DataParams
    ingest: CorpusParams
    validate: ValidateParams
    tokenizer: TokenizerConfig
    model: ModelParams
    pretrain: TrainConfig
    tasks: dict[str, TaskParams]
    test_sets: dict[str, LabeledSetParams]
    text_tasks: dict[str, TextTaskParams]
    qa: QaParams
    finetune: FinetuneParams
    evaluate: EvaluateParams
    tracking: TrackingParams


def load_params(path: str | Path | None = None) -> Params:
    """Read and check the whole of params.yaml; errors name the file and the key."""
    path = Path(path) if path is not None else Path.cwd() / PARAMS_FILE
    if not path.exists():
        raise ValueError(f"{path} not found: run stages from the project root")
    raw = read_yaml(path) or {}
    try:
        sections = [f.name for f in fields(Params)]
        unknown = sorted(set(raw) - set(sections))
        if unknown:
            raise ValueError(f"unknown config key '{unknown[0]}' (known sections: {', '.join(sections)})")
        params = config_from_dict(Params, raw, require_all=True)
        if params.model.arch not in ARCHITECTURES:
            raise ValueError(f"model.arch={params.model.arch!r} is not one of {sorted(ARCHITECTURES)}")
        models = {
            arch: build_model_config(arch, {**getattr(params.model, arch), "vocab_size": 1}, f"model.{arch}")
            for arch in ARCHITECTURES
        }
        check_tasks(params.tasks, params.test_sets)
        for name, task in params.tasks.items():
            params.finetune.train_for(task, name)  # an unknown or bad key names the task
        check_text_tasks(params.text_tasks, params.finetune.train, params.tasks)
        gpt_block = models["gpt"].block_size
        for section in ("tasks", "text_tasks"):
            for name, task in getattr(params, section).items():
                arch = getattr(task, "arch", None) or params.model.arch  # a text task's scratch model
                if arch == "gpt" and task.max_len > gpt_block:
                    # the stage would refuse it, but only after the tokenizer and pretrain stages ran
                    raise ValueError(
                        f"{section}.{name}.max_len={task.max_len} exceeds model.gpt.block_size={gpt_block}"
                    )
        check_batch_threads(params)
        check_early_stopping(params)
        check_zero_shot(params)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    return params


def check_batch_threads(params: Params) -> None:
    """lmcore's rules for row-shard threads (dropout, compile; rows per thread), said at load rather
    than after a stage's work, naming the keys."""
    arch = params.model.arch
    backbone = (f"model.{arch}.dropout", params.model.config_values().get("dropout", 0.0))
    classifier = ("finetune.classifier_dropout", params.finetune.classifier_dropout)
    ft = params.finetune
    checks = [("pretrain", params.pretrain, backbone), ("finetune.train", ft.train, backbone)]
    checks.append(("finetune.train", ft.train, classifier))
    for section, config, (dropout_key, dropout) in checks:
        if config.batch_threads > 1 and (problem := batch_threads_problem(config, "cpu", 1, dropout)):
            raise ValueError(f"{section}.batch_threads={config.batch_threads} {problem} ({dropout_key}={dropout})")
    if ft.recipe == "lm_then_classification":
        try:
            ft.lm_config()
        except ValueError as error:
            raise ValueError(f"finetune.train with finetune.lm_batch_size={ft.lm_batch_size}: {error}") from None


def check_early_stopping(params: Params) -> None:
    """An early-stopping metric that the watched evaluation reports (else a KeyError after hours)."""
    watched = [
        ("pretrain", params.pretrain, LM_EVAL_METRICS),
        ("finetune.train", params.finetune.train, CLASSIFIER_EVAL_METRICS),
    ]
    for section, config, reported in watched:
        if config.early_stopping_patience and config.early_stopping_metric not in reported:
            raise ValueError(
                f"{section}.early_stopping_metric={config.early_stopping_metric!r} is not reported by its"
                f" evaluation: one of {list(reported)}"
            )


def read_yaml(path: str | Path) -> Any:
    """A YAML file read as DVC reads params.yaml (YAML 1.2 with ruamel: `1e-5` is a number, where
    PyYAML's YAML 1.1 reads a string); a syntax error is a ValueError naming the file and line."""
    try:
        with open(path, encoding="utf-8") as stream:
            return YAML(typ="safe", pure=True).load(stream)  # safe: no Python objects
    except YAMLError as error:
        raise ValueError(f"{path} is not valid YAML: {error}") from None


def load_raw_params(path: str | Path | None = None) -> dict[str, Any]:
    return read_yaml(Path(path) if path else Path.cwd() / PARAMS_FILE) or {}


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict to dotted keys (the form DVC's -S and MLflow's params use)."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def check_zero_shot(params: Params) -> None:
    """Each zero-shot prompt names a task and offers one choice per label of it."""
    for name, prompt in params.evaluate.lm_eval.zero_shot.items():
        key = f"evaluate.lm_eval.zero_shot.{name}"
        if name not in params.tasks:
            raise ValueError(f"{key}: there is no task {name!r} (tasks: {', '.join(params.tasks)})")
        labels = params.tasks[name].labels
        if len(prompt.choices) != len(labels):
            raise ValueError(
                f"{key}.choices has {len(prompt.choices)} choices, but tasks.{name} has {len(labels)} labels"
            )

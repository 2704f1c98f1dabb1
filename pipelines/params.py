"""params.yaml, loaded strictly: every section, every key, before a stage does any work.

The lmcore configs (tokenizer, model, training) are used as they are; the stage-level sections
are the dataclasses below. An unknown or missing key is a ValueError naming it, so
`dvc exp run -S model.gpt.n_layr=2` fails instead of adding a silent new key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import yaml

from lmcore.config import config_from_dict
from lmcore.generate import check_sampling
from lmcore.models import ARCHITECTURES, build_model_config
from lmcore.tokenizer import TokenizerConfig
from lmcore.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
PARAMS_FILE = "params.yaml"
# What the stages' periodic evaluations report, so that early stopping can be checked at load:
# pretrain's is lmcore's evaluate_lm (with bits per byte), the classifier's is finetune.classify's.
LM_EVAL_METRICS = ("loss", "perplexity", "top1_accuracy", "top5_accuracy", "bits_per_byte")
CLASSIFIER_EVAL_METRICS = ("accuracy", "macro_f1")


@dataclass(frozen=True)
class LabeledSource:
    path: str
    split: Literal["auto", "train", "validation", "test"]


@dataclass(frozen=True)
class CorpusParams:
    sources: list[str]
    document_split: Literal["blank_line", "line", "file"]
    text_field: str
    validation_fraction: float
    test_fraction: float

    def __post_init__(self) -> None:
        if not self.sources:
            raise ValueError("sources is empty: name at least one file, folder, glob or URL")
        check_fractions(validation_fraction=self.validation_fraction, test_fraction=self.test_fraction)


@dataclass(frozen=True)
class LabeledParams:
    sources: list[LabeledSource]
    text_field: str
    label_field: str
    labels: list[str]  # raw label values as they appear in the files, in class-index order
    label_names: list[str]  # human-readable names, same order
    validation_fraction: float

    def __post_init__(self) -> None:
        if not self.sources:
            raise ValueError("sources is empty: name at least one labeled table")
        if len(self.labels) < 2 or len(set(self.labels)) != len(self.labels):
            raise ValueError(f"labels must be two or more distinct values, got {self.labels}")
        if len(self.label_names) != len(self.labels):
            raise ValueError(f"label_names has {len(self.label_names)} names for {len(self.labels)} labels")
        check_fractions(validation_fraction=self.validation_fraction)


@dataclass(frozen=True)
class IngestParams:
    pretrain: CorpusParams
    labeled: LabeledParams
    split_salt: str
    chunk_rows: int

    def __post_init__(self) -> None:
        if self.chunk_rows < 1:
            raise ValueError(f"chunk_rows must be at least 1, got {self.chunk_rows}")


@dataclass(frozen=True)
class ValidateParams:
    min_chars: int
    max_chars: int
    max_bad_char_fraction: float
    min_docs_per_split: int
    min_chars_per_split: int
    min_class_share: float
    max_class_share: float

    def __post_init__(self) -> None:
        for name in ("min_chars", "max_chars", "min_docs_per_split", "min_chars_per_split"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("max_bad_char_fraction", "min_class_share", "max_class_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        for low, high in (("min_chars", "max_chars"), ("min_class_share", "max_class_share")):
            if getattr(self, low) > getattr(self, high):
                raise ValueError(f"{low}={getattr(self, low)} is above {high}={getattr(self, high)}")


@dataclass(frozen=True)
class TokenizerParams:
    train_on: list[Literal["pretrain", "labeled"]]
    kind: Literal["bpe", "char"]
    vocab_size: int
    min_frequency: int
    special_tokens: list[str]
    eot_token: str
    pad_token: str

    def __post_init__(self) -> None:
        if not self.train_on or len(set(self.train_on)) != len(self.train_on):
            raise ValueError(f"train_on must name pretrain, labeled or both, once each; got {self.train_on}")

    def tokenizer_config(self) -> TokenizerConfig:
        values = {f.name: getattr(self, f.name) for f in fields(TokenizerConfig)}
        return config_from_dict(TokenizerConfig, values, "tokenizer")


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
    task: Literal["classification", "lm", "lm_then_classification"]
    init: Literal["pretrained", "scratch"]
    freeze_backbone: bool
    pooling: Literal["mean", "last"]
    max_len: int
    classifier_dropout: float
    scratch_baseline: bool
    lm_steps: int  # language-model steps on the task's own text (task lm / lm_then_classification)
    lm_batch_size: int  # windows of max_len tokens per language-model step
    length_buckets: int  # classifier batches draw texts of similar length; 1 is plain uniform sampling
    train: TrainConfig

    def __post_init__(self) -> None:
        for name in ("max_len", "lm_batch_size", "length_buckets"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.task != "classification" and self.lm_steps < 1:
            raise ValueError(f"lm_steps must be at least 1 for task {self.task}, got {self.lm_steps}")
        if not 0.0 <= self.classifier_dropout < 1.0:
            raise ValueError(f"classifier_dropout must be in [0, 1), got {self.classifier_dropout}")


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
class EvaluateParams:
    num_windows: int
    batch_size: int
    bootstrap_samples: int
    tfidf_baseline: bool
    samples: SampleParams

    def __post_init__(self) -> None:
        for name in ("num_windows", "batch_size", "bootstrap_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class TrackingParams:
    experiment: str
    register_models: bool
    lm_model_name: str
    classifier_model_name: str


@dataclass(frozen=True)
class Params:
    ingest: IngestParams
    validate: ValidateParams
    tokenizer: TokenizerParams
    model: ModelParams
    pretrain: TrainConfig
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
        params.tokenizer.tokenizer_config()
        gpt_block = models["gpt"].block_size
        if params.model.arch == "gpt" and params.finetune.max_len > gpt_block:
            # finetune would refuse it, but only after the tokenizer and pretrain stages ran
            raise ValueError(f"finetune.max_len={params.finetune.max_len} exceeds model.gpt.block_size={gpt_block}")
        check_batch_threads(params)
        check_early_stopping(params)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    return params


def check_batch_threads(params: Params) -> None:
    """Threads refuse dropout (lmcore.train.ShardedBackward): say so at load, not after a stage's work."""
    arch, task = params.model.arch, params.finetune.task
    backbone = (f"model.{arch}.dropout", params.model.config_values().get("dropout", 0.0))
    classifier = ("finetune.classifier_dropout", params.finetune.classifier_dropout)
    finetune_threads = params.finetune.train.batch_threads
    checks = [
        ("pretrain.batch_threads", params.pretrain.batch_threads, backbone),
        ("finetune.train.batch_threads", finetune_threads, backbone),
    ]
    if task != "lm":  # the classifier (and the scratch baseline) only train for classification tasks
        checks.append(("finetune.train.batch_threads", finetune_threads, classifier))
    for key, threads, (dropout_key, dropout) in checks:
        if threads > 1 and dropout > 0:
            raise ValueError(f"{key}={threads} needs {dropout_key} 0, got {dropout}; or use 0 (auto) or 1")
    if task != "classification" and finetune_threads > params.finetune.lm_batch_size:
        raise ValueError(
            f"finetune.train.batch_threads={finetune_threads} is more than finetune.lm_batch_size="
            f"{params.finetune.lm_batch_size}: every thread needs at least one row"
        )


def check_early_stopping(params: Params) -> None:
    """An early-stopping metric that the watched evaluation reports (else a KeyError after hours)."""
    watched = [("pretrain", params.pretrain, LM_EVAL_METRICS)]
    if params.finetune.task != "lm":  # the LM phase never stops early; the classifier phase may
        watched.append(("finetune.train", params.finetune.train, CLASSIFIER_EVAL_METRICS))
    for section, config, reported in watched:
        if config.early_stopping_patience and config.early_stopping_metric not in reported:
            raise ValueError(
                f"{section}.early_stopping_metric={config.early_stopping_metric!r} is not reported by its"
                f" evaluation: one of {list(reported)}"
            )


def check_fractions(**fractions: float) -> None:
    """Split fractions: each in [0, 1), and together below 1 so that training keeps documents."""
    for name, value in fractions.items():
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {value}")
    if sum(fractions.values()) >= 1.0:
        raise ValueError(f"{' + '.join(fractions)} = {sum(fractions.values())} leaves no training documents")


class _Yaml12Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's floats.

    PyYAML implements YAML 1.1, where a float needs a dot: `1e-05` is the string '1e-05'. DVC
    reads and writes params.yaml as YAML 1.2 (ruamel), and `dvc exp run -S pretrain.min_lr=1e-5`
    writes `min_lr: 1e-05`: without this, that value would be refused as "not a number".
    """


_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def read_yaml(path: str | Path) -> Any:
    """A YAML file as DVC reads it (1e-5 is a number); a syntax error is a ValueError naming the file."""
    try:
        with open(path, encoding="utf-8") as stream:  # a stream, so that the error's position names the file
            return yaml.load(stream, Loader=_Yaml12Loader)  # a SafeLoader: no Python objects
    except yaml.YAMLError as error:
        raise ValueError(f"{path} is not valid YAML: {error}") from None


def load_raw_params(path: str | Path | None = None) -> dict[str, Any]:
    return read_yaml(Path(path) if path else Path.cwd() / PARAMS_FILE) or {}


def stage_params(stage: str, raw: dict[str, Any], dvc_yaml: Path = ROOT / "dvc.yaml") -> dict[str, Any]:
    """The values of the params that dvc.yaml lists for `stage`: the settings whose change re-runs it."""
    values = {}
    for entry in read_yaml(dvc_yaml)["stages"][stage].get("params", []):
        for key in [entry] if isinstance(entry, str) else entry.get(PARAMS_FILE, []):
            node = raw
            for part in key.split("."):
                node = node[part]
            values[key] = node
    return values


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

"""params.yaml's `text_tasks` section: each prompt/response task's sources, budget and decoding,
loaded strictly with the rest of params.yaml (pipelines/params.py); pipelines/text_tasks.py reads,
decodes and scores them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from lmcore.config import config_from_dict
from lmcore.lora import LoraSettings
from lmcore.train import TrainConfig
from pipelines.data_params import is_task_name

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class PairSourceParams:
    path: str  # jsonl(.gz) of prompt/response or messages rows, a parallel text's prompt side, or dialogues
    split: Literal["train", "validation", "test"]
    response_path: str | None = None  # a parallel text's response side, line for line with `path`
    turn_separator: str | None = None  # set: `path` holds one dialogue a line, its turns ended by this
    history_turns: int = 0  # a dialogue's pairs: the last N turns before each turn; 0: all of them

    def __post_init__(self) -> None:
        if self.response_path is not None and self.turn_separator is not None:
            raise ValueError(
                f"{self.path}: a source is a parallel text (response_path) or dialogues (turn_separator), not both"
            )
        if self.turn_separator is not None and not self.turn_separator.strip():
            raise ValueError(f"{self.path}: turn_separator must be a visible marker, got {self.turn_separator!r}")
        if self.history_turns < 0:
            raise ValueError(
                f"{self.path}: history_turns must be >= 0 (0 is the whole history), got {self.history_turns}"
            )


@dataclass(frozen=True)
class DecodeParams:
    beam_size: int  # 1: greedy
    max_new_tokens: int

    def __post_init__(self) -> None:
        if self.beam_size < 1 or self.max_new_tokens < 1:
            raise ValueError(f"beam_size and max_new_tokens must be >= 1, got {self.beam_size}, {self.max_new_tokens}")


@dataclass(frozen=True)
class TextTaskParams:
    """One text-to-text task: what `text_task@<name>` reads."""

    # How test outputs are scored (pipelines/text_tasks.py): translation is sacreBLEU's BLEU and chrF;
    # dialogue is BLEU-1 and BLEU-2 and distinct-1 and distinct-2
    metric: Literal["translation", "dialogue"]
    sources: list[PairSourceParams]
    # pretrained: the pretrain stage's LM; scratch: random weights (the row without LM pretraining)
    # of params.yaml's model.<arch>, arch null meaning model.arch
    init: Literal["pretrained", "scratch"]
    arch: Literal["gpt", "lstm", "gru"] | None
    instruction: str  # before every prompt, e.g. "Translate English to German: "
    max_len: int  # tokens per rendered pair; a long prompt loses its start, a long response its end
    test_subset: int  # the first N test pairs are decoded and scored; 0: all of them
    train: dict[str, Any]  # this task's changes to finetune.train
    lora: dict[str, Any]  # lmcore.lora.LoraSettings; rank 0: full finetuning
    decode: DecodeParams
    registered_name: str  # the MLflow model name of the finetuned model

    def __post_init__(self) -> None:
        given = {source.split for source in self.sources}
        if missing := [split for split in SPLITS if split not in given]:
            raise ValueError(f"sources name no {missing[0]} split: each of {list(SPLITS)} needs one")
        if self.arch is not None and self.init != "scratch":
            raise ValueError(
                f"arch is for init: scratch (got arch {self.arch!r} with init {self.init!r}): a pretrained "
                "model keeps the architecture it was pretrained with (model.arch)"
            )
        if self.max_len < 8:
            raise ValueError(f"max_len must be at least 8, got {self.max_len}")
        if self.test_subset < 0:
            raise ValueError(f"test_subset must be >= 0 (0 is every test pair), got {self.test_subset}")
        if self.lora.get("rank", 0) < 0:
            raise ValueError(f"lora.rank must be >= 0 (0 is full finetuning), got {self.lora['rank']}")


@dataclass(frozen=True)
class QaParams:
    """params.yaml's `qa`: extractive questions every model answers untrained (pipelines/qa.py)."""

    path: str  # a SQuAD v1.1 JSON file (optionally gzipped)
    questions: int  # how many, evenly spaced through the file; 0: all of them
    instruction: str  # before the passage, in a prompt/response model's prompt
    max_len: int  # prompt tokens: a longer passage loses its start
    max_new_tokens: int

    def __post_init__(self) -> None:
        if self.questions < 0:
            raise ValueError(f"qa.questions must be >= 0 (0 is every question), got {self.questions}")
        if self.max_len < 16 or self.max_new_tokens < 1:
            raise ValueError(
                f"qa.max_len must be >= 16 and max_new_tokens >= 1, got {self.max_len}, {self.max_new_tokens}"
            )


def train_config(base: TrainConfig, task: TextTaskParams, name: str) -> TrainConfig:
    """finetune.train with the task's changes; no early stopping unless the task asks (the
    periodic evaluation reports the validation responses' loss, not finetune's accuracy)."""
    values = {**dataclasses.asdict(base), "early_stopping_patience": 0, "early_stopping_metric": "loss"}
    values |= {"early_stopping_mode": "min", **task.train}
    if task.lora.get("rank", 0) > 0:
        # The row shards (lmcore/sharding.py) backward through peft's adapted LSTM weights once
        # each, and the first backward frees that graph: LoRA trains unsharded.
        if task.train.get("batch_threads", 0) > 1:
            raise ValueError(f"text_tasks.{name}.train.batch_threads must be 0 or 1 with LoRA (lora.rank > 0)")
        values["batch_threads"] = 1
    return config_from_dict(TrainConfig, values, f"text_tasks.{name}.train")


def lora_settings(task: TextTaskParams, name: str) -> LoraSettings | None:
    """The task's LoRA adapters, or None for full finetuning (rank 0)."""
    values = {"rank": 0, **task.lora}
    if values["rank"] == 0:
        return None
    return config_from_dict(LoraSettings, values, f"text_tasks.{name}.lora")


def check_text_tasks(tasks: dict[str, TextTaskParams], base: TrainConfig, classifier_tasks: dict) -> None:
    """Names DVC and paths can carry, apart from the classification tasks'; train and LoRA keys."""
    for name, task in tasks.items():
        if not is_task_name(name) or name in classifier_tasks:
            raise ValueError(f"text task name {name!r} must be lowercase letters, digits and _, and not a task's name")
        train_config(base, task, name)
        lora_settings(task, name)

"""text_task@<name>: the pretrained LM (or a model from scratch) finetuned on one text-to-text
task, its test split decoded.

`python -m pipelines.stages.text_task <name>` (a key of params.yaml's `text_tasks`). The pairs are
rendered through lmcore's prompt/response template and trained with the loss on the response
(full finetuning, or LoRA adapters merged afterwards); the validation and test responses'
perplexity is measured, the test prompts are decoded (greedy or beam search) and scored
(pipelines/text_tasks.py). Outputs in outputs/text_tasks/<name>/: `model/` (its config says the
template, so `lmcore generate` and the served model apply it), `hypotheses.txt` beside
`references.txt` and `sources.txt` (one test pair per line, for re-scoring; a newline inside a
source, as between a dialogue's turns, is written `\\n`), `metrics.json`, `samples.txt`.
"""

from __future__ import annotations

import hashlib
import math
import time
from pathlib import Path

import pandas as pd
import torch

from lmcore.checkpoint import WEIGHTS_NAME, export_model
from lmcore.lora import add_lora, merge_lora, trainable_share
from lmcore.text_to_text import PROMPT_RESPONSE, encode_pairs, pair_batches, response_loss, response_nll
from lmcore.tokenizer import load_tokenizer
from lmcore.train import train
from pipelines import tracking
from pipelines.layout import outputs, stage_params
from pipelines.params import ROOT, load_params, load_raw_params
from pipelines.stages.common import json_dump, load_backbone, logger, resumable_checkpoints, run_stage, task_argument
from pipelines.stages.sinks import ComputeClock, Progress, fan_out
from pipelines.stages.stopping import stop_requests
from pipelines.text_params import lora_settings, train_config
from pipelines.text_tasks import bytes_per_token, decode_all, score_outputs, task_pairs

SAMPLES = 5


def write_lines(path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def finetune(model, params, raw: dict, name: str, encoded: dict, tokenizer, checkpoints: Path) -> tuple:
    """The model trained on the task's pairs (LoRA merged back in), resuming finished checkpoints;
    and its training figures."""
    task = params.text_tasks[name]
    lora = lora_settings(task, name)
    model = add_lora(model, lora) if lora is not None else model
    trainable, total = trainable_share(model)
    recipe = train_config(params.finetune.train, task, name)
    batches = pair_batches(encoded["train"], tokenizer.pad_id, params.finetune.length_buckets)

    def evaluate(m) -> dict[str, float]:
        nll, count = response_nll(m, encoded["validation"], tokenizer.pad_id, params.evaluate.batch_size)
        return {"loss": nll / count, "perplexity": math.exp(nll / count)}

    # A scratch model's checkpoints do not depend on the pretrained weights, which it never reads.
    weights = outputs("pretrain").model / WEIGHTS_NAME
    digest = hashlib.sha256(weights.read_bytes()).hexdigest() if task.init == "pretrained" else None
    fingerprint = resumable_checkpoints(checkpoints, stage_params(f"text_task@{name}", raw), tokenizer.sha256(), digest)
    start = time.perf_counter()
    with stop_requests() as should_stop:
        result = train(
            model, recipe, lambda g: batches(recipe.batch_size, g), response_loss, evaluate,
            log=fan_out(tracking.metric_logger(), Progress(recipe.max_steps, f"text_task@{name}")),
            checkpoint_dir=checkpoints, checkpoint_extra={"fingerprint": fingerprint}, should_stop=should_stop,
        )  # fmt: skip
    figures = {"steps": result.step, "trainable_parameters": trainable, "parameters": total}
    figures |= {"lora_rank": 0 if lora is None else lora.rank, "seconds": time.perf_counter() - start}
    return (merge_lora(model) if lora is not None else model).eval(), figures


def score_test(model, params, name: str, pairs: dict, encoded: dict, tokenizer) -> tuple[dict, dict[str, list[str]]]:
    """Response perplexity on validation and test, the test prompts decoded and scored; the
    test's sources, references and hypotheses, line for line."""
    task = params.text_tasks[name]
    perplexity = {}
    for split in ("validation", "test"):
        nll, count = response_nll(model, encoded[split], tokenizer.pad_id, params.evaluate.batch_size)
        perplexity[split] = math.exp(nll / count)
    start = time.perf_counter()
    lines = {"hypotheses": decode_all(model, tokenizer, encoded["test"], task.decode)}
    decode_seconds = time.perf_counter() - start
    scores = score_outputs(task, pairs, lines["hypotheses"], params.evaluate.bootstrap_samples)
    sources = [prompt.removeprefix(task.instruction) for prompt, _ in pairs["test"]]
    # A dialogue's history spans lines: sources.txt writes each newline as the two characters \n.
    lines["sources"] = [source.replace("\n", "\\n") for source in sources]
    lines["references"] = [response for _, response in pairs["test"]]
    metrics = {
        "metric": task.metric,
        "bytes_per_token": {
            "sources": bytes_per_token(tokenizer, sources),
            "references": bytes_per_token(tokenizer, lines["references"]),
        },
        "test": {**scores, "pairs": len(lines["references"]), "response_perplexity": perplexity["test"]},
        "validation": {"response_perplexity": perplexity["validation"]},
        "decode": {"beam_size": task.decode.beam_size, "max_new_tokens": task.decode.max_new_tokens},
        "decode_seconds": decode_seconds,
    }
    return metrics, lines


def main() -> None:
    params = load_params()
    name = task_argument(params, "text_tasks")
    task, raw = params.text_tasks[name], load_raw_params()
    out, tok = outputs("text_task", name), outputs("tokenizer")
    out.dir.mkdir(parents=True, exist_ok=True)
    logged = {f"text_tasks.{name}": raw["text_tasks"][name], "finetune.train": raw["finetune"]["train"]}
    upstream = {"tokenizer": tok.dir, "pretrain": outputs("pretrain").dir}
    with tracking.stage_run("text_task", params.tracking.experiment, logged, out.dir, upstream, task=name):
        clock = ComputeClock()
        with clock.measure():
            tokenizer = load_tokenizer(tok.tokenizer, params.tokenizer.eot_token, params.tokenizer.pad_token)
            torch.manual_seed(train_config(params.finetune.train, task, name).seed)  # a scratch model's init
            model, arch, model_values = load_backbone(
                params, task.init, tokenizer.sha256(), tokenizer.vocab_size, task.arch
            )
            pairs = task_pairs(task, ROOT)
            encoded = {split: encode_pairs(tokenizer, rows, task.max_len) for split, rows in pairs.items()}
            model, training = finetune(model, params, raw, name, encoded, tokenizer, out.checkpoints)
            metrics, lines = score_test(model, params, name, pairs, encoded, tokenizer)
            extra = {"tokenizer_sha256": tokenizer.sha256(), "eot_token": tokenizer.eot_token}
            extra |= {"pad_token": tokenizer.pad_token, "template": PROMPT_RESPONSE, "instruction": task.instruction}
            export_model(out.model, model, arch, model_values, tok.tokenizer, extra=extra)
        metrics["training"] = training
        for key, text in lines.items():
            write_lines(getattr(out, key), text)
        columns = zip(lines["sources"], lines["references"], lines["hypotheses"], strict=True)
        write_lines(
            out.samples, [f"source:     {s}\nreference:  {r}\nhypothesis: {h}\n" for s, r, h in columns][:SAMPLES]
        )
        json_dump(out.metrics, metrics)
        tracking.log_metrics(metrics, prefix="final/")
        tracking.log_metrics(clock.metrics())
        tracking.log_artifacts(out.metrics, out.hypotheses, out.references, out.sources, out.samples)
        if params.tracking.register_models:
            example = pd.DataFrame({"text": [pairs["test"][0][0].removeprefix(task.instruction)]})
            tracking.log_lmcore_model(out.model, "model", task.registered_name, example)
        logger.info("text_task@%s: %s", name, {k: v for k, v in metrics["test"].items() if "signature" not in k})


if __name__ == "__main__":
    run_stage(main)

"""Multi30k translation with lmcore's text-to-text pieces, before the pipeline has the task kind:
the pretrained LM or the same model from scratch, full finetuning or LoRA, greedy or beam search,
scored with sacreBLEU (BLEU and chrF, signatures printed) beside copying the source.

    python bench/translation.py --target de --steps 1500                 # pretrained, full finetuning
    python bench/translation.py --target de --steps 1500 --scratch
    python bench/translation.py --target de --steps 1500 --scratch-arch gpt  # params.yaml's GPT, untrained
    python bench/translation.py --target de --steps 1500 --lora-rank 8 --learning-rate 3e-3
    python bench/translation.py --target de --split val --beam-size 4    # choose decoding on val
    python bench/translation.py --split val test_2016_flickr --hypotheses runs/gpt  # one training, two splits

Runs in a project after `dvc repro` (it reads outputs/pretrain/model and outputs/tokenizer) on
data/multi30k. Prints one JSON line per split: the recipe, trainable parameters, bytes per token of
each language, response perplexity, BLEU and chrF of greedy (and beam) decoding, seconds, samples.
`--hypotheses DIR` writes each decoding's outputs, one a line (DIR/<split>.<decoding>.txt, beside
DIR/<split>.references.txt), for bench/paired_text.py. Choose recipes on `--split val`; test_2016_flickr is for the figure reported.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path.cwd()))

from lmcore.checkpoint import load_model  # noqa: E402
from lmcore.lora import LoraSettings, add_lora, merge_lora, trainable_share  # noqa: E402
from lmcore.models import build_model, build_model_config  # noqa: E402
from lmcore.text_to_text import encode_pairs, pair_batches, response_loss, response_nll  # noqa: E402
from lmcore.tokenizer import load_tokenizer  # noqa: E402
from lmcore.train import TrainConfig, train  # noqa: E402
from pipelines.layout import outputs  # noqa: E402
from pipelines.params import read_yaml  # noqa: E402
from pipelines.text_params import DecodeParams  # noqa: E402
from pipelines.text_tasks import corpus_scores, decode_all  # noqa: E402

LANGUAGES = {"en": "English", "de": "German", "fr": "French"}


def read_lines(split: str, language: str) -> list[str]:
    with gzip.open(Path("data/multi30k") / f"{split}.{language}.gz", "rt", encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def translation_pairs(sources: list[str], references: list[str], target: str) -> list[tuple[str, str]]:
    return [(f"Translate English to {LANGUAGES[target]}: {s}", t) for s, t in zip(sources, references, strict=True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", choices=["de", "fr"], default="de")
    parser.add_argument("--split", choices=["val", "test_2016_flickr"], nargs="+", default=["val"])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--max-len", type=int, default=128)
    parser.add_argument("--scratch", action="store_true", help="the same architecture from random weights")
    parser.add_argument(
        "--scratch-arch", choices=["gpt", "lstm", "gru"], help="from random weights, params.yaml's model.<arch> shape"
    )
    parser.add_argument("--lora-rank", type=int, default=0, help="LoRA of this rank; 0: full finetuning")
    parser.add_argument("--beam-size", type=int, default=0, help="also decode with a beam this wide")
    parser.add_argument("--limit", type=int, default=0, help="score the first N sentences only")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--hypotheses", type=Path, help="write each decoding's outputs under this folder")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tokenizer = load_tokenizer(outputs("tokenizer").tokenizer)
    if args.scratch_arch:  # needs no pretrained model
        torch.manual_seed(7)
        shape = {**read_yaml(Path("params.yaml"))["model"][args.scratch_arch], "vocab_size": tokenizer.vocab_size}
        model = build_model(args.scratch_arch, build_model_config(args.scratch_arch, shape))
    else:
        model, config = load_model(outputs("pretrain").model)
    if args.scratch and not args.scratch_arch:
        torch.manual_seed(7)
        model = build_model(config["arch"], build_model_config(config["arch"], config["model"]))
    sources, targets = read_lines("train", "en"), read_lines("train", args.target)
    bytes_per_token = {
        language: sum(len(line.encode()) for line in lines) / sum(len(ids) for ids in tokenizer.encode_batch(lines))
        for language, lines in (("en", sources), (args.target, targets))
    }
    train_set = encode_pairs(tokenizer, translation_pairs(sources, targets, args.target), args.max_len)
    if args.lora_rank:
        model = add_lora(model, LoraSettings(rank=args.lora_rank, alpha=2.0 * args.lora_rank))
    trainable, total = trainable_share(model)
    recipe = TrainConfig(
        max_steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        min_lr=args.learning_rate / 10,
        warmup_steps=50,
        grad_clip=1.0,
        weight_decay=0.0 if args.lora_rank else 0.1,
        dtype="bfloat16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "float32",
        log_interval=100,
        eval_interval=10**9,
    )
    batches = pair_batches(train_set, tokenizer.pad_id, num_buckets=16)
    start = time.perf_counter()
    train(model, recipe, lambda g: batches(args.batch_size, g), response_loss)
    train_seconds = time.perf_counter() - start
    if args.lora_rank:
        model = merge_lora(model)
    model.eval()
    recipe_row = {
        "target": args.target, "scratch": args.scratch_arch or args.scratch, "lora_rank": args.lora_rank,
        "steps": args.steps, "learning_rate": args.learning_rate, "trainable": trainable, "parameters": total,
        "bytes_per_token": bytes_per_token, "train_seconds": round(train_seconds, 1),
    }  # fmt: skip
    for split in args.split:
        print(json.dumps(score_split(model, tokenizer, args, split, recipe_row), ensure_ascii=False), flush=True)


def score_split(model, tokenizer, args, split: str, recipe_row: dict) -> dict:
    """Response perplexity, copying the source and each decoding scored on one split."""
    eval_sources, references = read_lines(split, "en"), read_lines(split, args.target)
    if args.limit:
        eval_sources, references = eval_sources[: args.limit], references[: args.limit]
    eval_set = encode_pairs(tokenizer, translation_pairs(eval_sources, references, args.target), args.max_len)
    nll, count = response_nll(model, eval_set, tokenizer.pad_id)
    row = {**recipe_row, "split": split, "sentences": len(references)}
    row["response_perplexity"] = round(math.exp(nll / count), 3)
    row["copy_source"] = corpus_scores(eval_sources, references, bootstrap=1000)["bleu"]
    for name, beam in [("greedy", 1)] + ([(f"beam{args.beam_size}", args.beam_size)] if args.beam_size > 1 else []):
        start = time.perf_counter()
        hypotheses = decode_all(model, tokenizer, eval_set, DecodeParams(beam_size=beam, max_new_tokens=args.max_len))
        scored = corpus_scores(hypotheses, references, bootstrap=1000)
        row[name] = {**scored, "seconds": round(time.perf_counter() - start, 1)}
        row[name]["samples"] = [[eval_sources[i], hypotheses[i], references[i]] for i in (0, 1, 2)]
        if args.hypotheses:
            write_lines(args.hypotheses / f"{split}.{name}.txt", hypotheses)
    if args.hypotheses:
        write_lines(args.hypotheses / f"{split}.references.txt", references)
    return row


def write_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


if __name__ == "__main__":
    main()

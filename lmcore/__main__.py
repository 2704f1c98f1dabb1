"""Command line: `python -m lmcore generate --model DIR --prompt TEXT`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from lmcore.checkpoint import load_model
from lmcore.generate import generate
from lmcore.models import SequenceClassifier
from lmcore.tokenizer import load_tokenizer
from lmcore.train import resolve_device


def parse_device(name: str) -> torch.device:
    try:
        return resolve_device(name)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lmcore")
    commands = parser.add_subparsers(dest="command", required=True)
    sample = commands.add_parser("generate", help="sample text from an exported model folder")
    sample.add_argument(
        "--model", required=True, type=Path, help="folder with model.safetensors, config.json, tokenizer.json"
    )
    sample.add_argument("--prompt", default="\n")
    sample.add_argument("--max-new-tokens", type=int, default=200)
    sample.add_argument("--temperature", type=float, default=0.8)
    sample.add_argument("--top-k", type=int, default=0)
    sample.add_argument("--top-p", type=float, default=1.0)
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--num-samples", type=int, default=1)
    sample.add_argument("--device", type=parse_device, default="cpu", help="cpu (default), cuda, cuda:N, mps or auto")
    args = parser.parse_args(argv)
    if args.num_samples < 1:
        parser.error(f"--num-samples must be >= 1, got {args.num_samples}")

    try:
        model, config = load_model(args.model, device=args.device)
        tokenizer = load_tokenizer(
            args.model / "tokenizer.json",
            config.get("eot_token", "<|endoftext|>"),  # the pipeline's exports record their special tokens
            config.get("pad_token", "<|pad|>"),
        )
    except ValueError as error:
        parser.error(str(error))
    if isinstance(model, SequenceClassifier):
        parser.error(f"{args.model} holds a classifier; generation needs a language model")
    prompt_ids = tokenizer.encode(args.prompt) or [tokenizer.eot_id]
    for i in range(args.num_samples):
        try:
            ids = generate(
                model,
                prompt_ids,
                args.max_new_tokens,
                args.temperature,
                args.top_k,
                args.top_p,
                args.seed + i,
                tokenizer.eot_id,
            )
        except ValueError as error:
            parser.error(str(error))
        sys.stdout.write(args.prompt + tokenizer.decode(ids) + "\n")
        if i + 1 < args.num_samples:
            sys.stdout.write("-" * 40 + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Command line for exported model folders.

python -m lmcore generate --model DIR --prompt TEXT     # sample text (or answer, for a prompt/response model)
python -m lmcore evaluate --model DIR --text FILE       # loss, perplexity, bits per byte as JSON
python -m lmcore export-hf --model DIR --out HF_DIR     # a folder transformers opens (lmcore/hf.py)
python -m lmcore import-hf --model HF_DIR --out DIR     # and back, to generate, evaluate or finetune
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from lmcore.checkpoint import load_folder_tokenizer, load_model
from lmcore.evaluate import evaluate_lm
from lmcore.generate import GENERATION_DEFAULTS, beam_search, generate
from lmcore.hf import export_hf, import_hf
from lmcore.models import SequenceClassifier
from lmcore.runtime import resolve_device
from lmcore.text_to_text import PROMPT_RESPONSE, folder_prompt, messages_text, template_prompt
from lmcore.tokenizer import TextTokenizer


def device_argument(name: str) -> torch.device:
    try:
        return resolve_device(name)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def load_language_model(
    parser: argparse.ArgumentParser, directory: Path, device: torch.device
) -> tuple[torch.nn.Module, dict, TextTokenizer]:
    """(model, config, tokenizer) of an exported language-model folder; a bad folder is a usage error."""
    try:
        model, config = load_model(directory, device=device)
        tokenizer = load_folder_tokenizer(directory, config)
    except ValueError as error:
        parser.error(str(error))
    if isinstance(model, SequenceClassifier):
        parser.error(f"{directory} holds a classifier; this command needs a language model")
    return model, config, tokenizer


def cut_at_stop(text: str, stops: list[str]) -> str:
    """The text up to the first stop string, which is not included."""
    ends = [text.find(stop) for stop in stops if stop in text]
    return text[: min(ends)] if ends else text


def read_messages(parser: argparse.ArgumentParser, path: str) -> str:
    """The prompt of a chat in a JSON file (`-`: standard input): a list of {"role", "content"}."""
    try:
        raw = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
        return messages_text(json.loads(raw), where=path)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValueError) as error:
        parser.error(f"--messages {path}: {error}")


def run_generate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.num_samples < 1:
        parser.error(f"--num-samples must be >= 1, got {args.num_samples}")
    if args.beam_size < 0 or (args.beam_size > 1 and args.num_samples > 1):
        parser.error(f"--beam-size must be >= 0, and beam search gives one answer (got {args.beam_size})")
    model, config, tokenizer = load_language_model(parser, args.model, args.device)
    if args.messages is not None:
        args.prompt = read_messages(parser, args.messages)
    templated = {"auto": config.get("template") == PROMPT_RESPONSE, "none": False}.get(args.template, True)
    if args.template == "auto" and templated:  # the folder's own instruction, as it was finetuned
        prompt_ids = folder_prompt(tokenizer, config, args.prompt)
    else:
        prompt_ids = template_prompt(tokenizer, args.prompt) if templated else tokenizer.encode(args.prompt)
    prompt_ids = prompt_ids or [tokenizer.eot_id]  # an empty prompt starts a fresh document
    stops = [s for s in args.stop if s]
    stop = (lambda new: any(s in tokenizer.decode(new) for s in stops)) if stops else None
    for i in range(args.num_samples):
        try:
            if args.beam_size > 1:
                ids = beam_search(model, prompt_ids, args.max_new_tokens, args.beam_size, tokenizer.eot_id)
            else:
                ids = generate(
                    model,
                    prompt_ids,
                    args.max_new_tokens,
                    args.temperature,
                    args.top_k,
                    args.top_p,
                    args.seed + i,
                    tokenizer.eot_id,
                    repetition_penalty=args.repetition_penalty,
                    stop=stop,
                )
        except ValueError as error:
            parser.error(str(error))
        text = cut_at_stop(tokenizer.decode(ids), stops)
        sys.stdout.write(("" if templated else args.prompt) + text + "\n")
        if i + 1 < args.num_samples:
            sys.stdout.write("-" * 40 + "\n")


def run_evaluate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    for name, least in (("windows", 1), ("batch_size", 1), ("block_size", 0)):
        if getattr(args, name) < least:
            parser.error(f"--{name.replace('_', '-')} must be >= {least}, got {getattr(args, name)}")
    model, config, tokenizer = load_language_model(parser, args.model, args.device)
    try:
        text = args.text.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        parser.error(f"cannot read {args.text}: {error}")
    ids = tokenizer.encode_to_array(text)
    block_size = args.block_size or config["model"]["block_size"]
    try:
        metrics = evaluate_lm(
            model, ids, block_size, args.batch_size, args.windows, len(text.encode("utf-8")) / max(len(ids), 1)
        )
    except ValueError as error:
        parser.error(f"{args.text}: {error}")
    report = {"text": str(args.text), "tokens": len(ids), "block_size": block_size, **metrics}
    sys.stdout.write(json.dumps(report, indent=2) + "\n")


def run_convert(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    convert = export_hf if args.command == "export-hf" else import_hf
    try:
        sys.stdout.write(f"{convert(args.model, args.out)}\n")
    except ValueError as error:
        parser.error(str(error))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lmcore")
    commands = parser.add_subparsers(dest="command", required=True)
    model_help = "exported model folder: model.safetensors, config.json, tokenizer.json"
    device_help = "cpu (default), cuda, cuda:N, mps or auto"

    sample = commands.add_parser("generate", help="sample text from an exported model folder")
    sample.add_argument("--model", required=True, type=Path, help=model_help)
    prompt = sample.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", default="\n")
    prompt.add_argument(
        "--messages",
        help="a chat to answer: a JSON file (- for standard input) holding a list of {role, content};"
        " the prompt is their contents, one a line, as a text task's chat template renders them",
    )
    sample.add_argument("--max-new-tokens", type=int, default=200)
    sample.add_argument("--temperature", type=float, default=GENERATION_DEFAULTS["temperature"])
    sample.add_argument("--top-k", type=int, default=GENERATION_DEFAULTS["top_k"])
    sample.add_argument("--top-p", type=float, default=GENERATION_DEFAULTS["top_p"])
    sample.add_argument("--seed", type=int, default=GENERATION_DEFAULTS["seed"])
    sample.add_argument("--num-samples", type=int, default=1)
    sample.add_argument("--repetition-penalty", type=float, default=1.0, help="CTRL's; 1 (default) is none")
    sample.add_argument("--stop", action="append", default=[], help="stop at this string (not printed); repeatable")
    sample.add_argument("--beam-size", type=int, default=0, help="beam search of this width (>1) instead of sampling")
    sample.add_argument(
        "--template",
        choices=["auto", "none", PROMPT_RESPONSE],
        default="auto",
        help="render the prompt through the prompt/response template and print only the response; auto (default):"
        " when the folder's config says so",
    )
    sample.add_argument("--device", type=device_argument, default="cpu", help=device_help)

    score = commands.add_parser(
        "evaluate", help="loss, perplexity, bits per byte and next-token accuracy of a model on a text file"
    )
    score.add_argument("--model", required=True, type=Path, help=model_help)
    score.add_argument("--text", required=True, type=Path, help="UTF-8 text file to score")
    score.add_argument("--windows", type=int, default=400, help="evenly spaced windows over the text (default 400)")
    score.add_argument("--block-size", type=int, default=0, help="window length in tokens; default: the model's")
    score.add_argument("--batch-size", type=int, default=32)
    score.add_argument("--device", type=device_argument, default="cpu", help=device_help)

    for name, what, source in (
        ("export-hf", "a Hugging Face folder (transformers opens it) of an exported model", model_help),
        ("import-hf", "an exported model folder of a Hugging Face folder that export-hf wrote", "Hugging Face folder"),
    ):
        convert = commands.add_parser(name, help=f"write {what}")
        convert.add_argument("--model", required=True, type=Path, help=source)
        convert.add_argument("--out", required=True, type=Path, help="folder to write (replaced as a whole)")

    args = parser.parse_args(argv)
    run = {"generate": run_generate, "evaluate": run_evaluate}.get(args.command, run_convert)
    run(parser, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

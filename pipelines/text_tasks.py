"""Text-to-text tasks (params.yaml's `text_tasks`): prompt/response pairs read from files,
finetuned through lmcore's template with the loss on the response (lmcore/text_to_text.py),
decoded on the test split and scored.

A source is a parallel text (`path` holds the prompts, `response_path` the responses, one per
line, optionally gzipped) or a jsonl(.gz) of `{"prompt", "response"}` or chat-style
`{"messages": [{"role", "content"}, ...]}` rows. Each prompt is prefixed by the task's
`instruction`. Translation is scored with sacreBLEU (BLEU and chrF with their signatures and
bootstrap 95% intervals) beside copying the source, the baseline any system must beat.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

from lmcore.generate import beam_search, generate
from lmcore.text_to_text import PromptResponses, render_messages
from lmcore.tokenizer import TextTokenizer
from pipelines.text_params import SPLITS, DecodeParams, PairSourceParams, TextTaskParams


def read_lines(path: Path) -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def jsonl_pair(row: Any, where: str) -> tuple[str, str]:
    if isinstance(row, dict) and "messages" in row:
        return render_messages(row["messages"], where)
    if not isinstance(row, dict) or not {"prompt", "response"} <= set(row):
        raise ValueError(f"{where}: a row needs 'prompt' and 'response', or 'messages'")
    if not all(isinstance(row[key], str) for key in ("prompt", "response")):
        raise ValueError(f"{where}: 'prompt' and 'response' must be strings")
    return row["prompt"], row["response"]


def read_pairs(source: PairSourceParams, root: Path) -> list[tuple[str, str]]:
    """(prompt, response) of each example of one source; errors name the file and the line."""
    path = root / source.path
    if source.response_path is not None:
        prompts, responses = read_lines(path), read_lines(root / source.response_path)
        if len(prompts) != len(responses):
            raise ValueError(
                f"{source.path} has {len(prompts)} lines, {source.response_path} {len(responses)}: a parallel text"
                " needs one response line per prompt line"
            )
        return list(zip(prompts, responses, strict=True))
    pairs = []
    for number, line in enumerate(read_lines(path), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{source.path}:{number}: not JSON ({error.msg})") from None
        pairs.append(jsonl_pair(row, f"{source.path}:{number}"))
    return pairs


def task_pairs(task: TextTaskParams, root: Path) -> dict[str, list[tuple[str, str]]]:
    """Every split's pairs, each prompt prefixed by the task's instruction; the test split cut to
    its first `test_subset` pairs."""
    splits: dict[str, list[tuple[str, str]]] = {split: [] for split in SPLITS}
    for source in task.sources:
        splits[source.split] += [(task.instruction + prompt, response) for prompt, response in read_pairs(source, root)]
    if task.test_subset:
        splits["test"] = splits["test"][: task.test_subset]
    return splits


def decode_all(model, tokenizer: TextTokenizer, examples: PromptResponses, decode: DecodeParams) -> list[str]:
    """Each prompt's response, greedy or by beam search, up to the end-of-text token."""
    hypotheses = []
    for prompt in examples.prompts():
        if decode.beam_size > 1:
            ids = beam_search(model, prompt, decode.max_new_tokens, decode.beam_size, tokenizer.eot_id)
        else:
            ids = generate(model, prompt, decode.max_new_tokens, temperature=0.0, eot_id=tokenizer.eot_id)
        hypotheses.append(tokenizer.decode(ids).strip().replace("\n", " "))  # one line per hypothesis
    return hypotheses


def corpus_scores(hypotheses: list[str], references: list[str], bootstrap: int) -> dict[str, Any]:
    """sacreBLEU's BLEU and chrF, each with its signature and a bootstrap 95% interval."""
    import sacrebleu

    if bootstrap < 2:
        raise ValueError(f"a bootstrap interval needs at least 2 resamples, got {bootstrap}")
    scores: dict[str, Any] = {}
    for name, metric in (("bleu", sacrebleu.BLEU()), ("chrf", sacrebleu.CHRF())):
        result = metric.corpus_score(hypotheses, [references], n_bootstrap=bootstrap)
        scores[name] = round(result.score, 2)
        scores[f"{name}_ci_low"] = round(float(result._mean - result._ci), 2)
        scores[f"{name}_ci_high"] = round(float(result._mean + result._ci), 2)
        scores[f"{name}_signature"] = str(metric.get_signature())
    return scores


def translation_scores(
    hypotheses: list[str], references: list[str], sources: list[str], bootstrap: int
) -> dict[str, Any]:
    """The model's scores and copying the source's (scored the same way), the floor to beat."""
    copied = corpus_scores(sources, references, bootstrap)
    return {**corpus_scores(hypotheses, references, bootstrap), "copy_source": {k: copied[k] for k in ("bleu", "chrf")}}

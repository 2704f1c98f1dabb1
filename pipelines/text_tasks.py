"""Text-to-text tasks (params.yaml's `text_tasks`): prompt/response pairs read from files,
finetuned through lmcore's template with the loss on the response (lmcore/text_to_text.py),
decoded on the test split and scored.

A source is a parallel text (`path` holds the prompts, `response_path` the responses, one per
line, optionally gzipped), a jsonl(.gz) of `{"prompt", "response"}` or chat-style
`{"messages": [{"role", "content"}, ...]}` rows, or dialogues (one a line, each turn ended by
`turn_separator`, as DailyDialog's `__eou__`): every turn after the first is the response to the
`history_turns` turns before it, one line each. Each prompt is prefixed by the task's
`instruction`.

Scores, each beside the baselines any system must beat, scored the same way:
- translation: sacreBLEU's BLEU and chrF, with their signatures and bootstrap 95% intervals;
  baseline: copying the source.
- dialogue: BLEU-1 and BLEU-2 (sacreBLEU's corpus BLEU up to 1- and 2-grams, signatures and
  intervals as above), and distinct-1 and distinct-2 (Li et al., NAACL 2016: the distinct n-grams
  of all responses over their count, after sacreBLEU's 13a tokenization, lowercased), beside the
  references' own distinct-n; baselines: repeating the last turn, and answering every prompt with
  the training split's most common response.
"""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

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


def dialogue_pairs(source: PairSourceParams, lines: list[str]) -> list[tuple[str, str]]:
    """Each turn after a dialogue's first, as the response to the turns before it (the last
    `history_turns` of them, one line each)."""
    pairs = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        turns = [turn.strip() for turn in line.split(source.turn_separator)]
        turns = turns[:-1] if not turns[-1] else turns  # the separator ends each turn, the last one too
        if len(turns) < 2 or not all(turns):
            raise ValueError(
                f"{source.path}:{number}: a dialogue needs two or more non-empty turns, each ended by"
                f" {source.turn_separator!r}"
            )
        for i in range(1, len(turns)):
            first = max(0, i - source.history_turns) if source.history_turns else 0
            pairs.append(("\n".join(turns[first:i]), turns[i]))
    return pairs


def read_pairs(source: PairSourceParams, root: Path) -> list[tuple[str, str]]:
    """(prompt, response) of each example of one source; errors name the file and the line."""
    path = root / source.path
    if source.turn_separator is not None:
        return dialogue_pairs(source, read_lines(path))
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


def bytes_per_token(tokenizer: TextTokenizer, texts: list[str]) -> float:
    """UTF-8 bytes per token of texts: how well the tokenizer (trained on the pretraining corpus)
    fits a language."""
    tokens = sum(len(ids) for ids in tokenizer.encode_batch(texts))
    return round(sum(len(text.encode("utf-8")) for text in texts) / max(tokens, 1), 3)


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


def sacrebleu_metrics(kind: str) -> dict[str, Any]:
    import sacrebleu

    if kind == "translation":
        return {"bleu": sacrebleu.BLEU(), "chrf": sacrebleu.CHRF()}
    # force: DailyDialog comes tokenized (a space before punctuation), references and outputs alike;
    # sacreBLEU would warn on every call that the text looks tokenized.
    return {f"bleu{n}": sacrebleu.BLEU(max_ngram_order=n, force=True) for n in (1, 2)}


# What summary.json and the run's metrics carry of each kind's scores, headline first.
HEADLINE = {"translation": ("bleu", "chrf"), "dialogue": ("bleu1", "bleu2", "distinct_1", "distinct_2")}


def corpus_scores(
    hypotheses: list[str], references: list[str], bootstrap: int, kind: str = "translation"
) -> dict[str, Any]:
    """sacreBLEU's scores of a metric kind (translation: BLEU and chrF; dialogue: BLEU-1 and
    BLEU-2), each with its signature and a bootstrap 95% interval."""
    if bootstrap < 2:
        raise ValueError(f"a bootstrap interval needs at least 2 resamples, got {bootstrap}")
    scores: dict[str, Any] = {}
    for name, metric in sacrebleu_metrics(kind).items():
        result = metric.corpus_score(hypotheses, [references], n_bootstrap=bootstrap)
        scores[name] = round(result.score, 2)
        scores[f"{name}_ci_low"] = round(float(result._mean - result._ci), 2)
        scores[f"{name}_ci_high"] = round(float(result._mean + result._ci), 2)
        scores[f"{name}_signature"] = str(metric.get_signature())
    return scores


def distinct(texts: list[str], n: int) -> float:
    """Distinct-n: the distinct n-grams of all texts over their count (0 when there are none)."""
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    tokenize = Tokenizer13a()
    grams: Counter[tuple[str, ...]] = Counter()
    for text in texts:
        words = tokenize(text.lower()).split()
        grams.update(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    return round(len(grams) / sum(grams.values()), 4) if grams else 0.0


def kind_scores(hypotheses: list[str], references: list[str], bootstrap: int, kind: str) -> dict[str, Any]:
    scores = corpus_scores(hypotheses, references, bootstrap, kind)
    if kind == "dialogue":
        scores |= {f"distinct_{n}": distinct(hypotheses, n) for n in (1, 2)}
    return scores


def paired_differences(
    system: list[str], baseline: list[str], references: list[str], bootstrap: int, kind: str
) -> dict[str, dict[str, float]]:
    """System minus baseline in each sacreBLEU score of the kind, with a paired bootstrap 95%
    interval: both scored on the same resampled sentences (sacreBLEU's paired test draws them so,
    but reports only a p-value). Uses sacreBLEU's sufficient statistics, as its bootstrap does."""
    rng = np.random.default_rng(12345)
    resamples = rng.choice(len(references), size=(bootstrap, len(references)), replace=True)  # (S, N)
    differences = {}
    for name, metric in sacrebleu_metrics(kind).items():
        stats = [np.array(metric._extract_corpus_statistics(h, [references]), dtype=float) for h in (system, baseline)]

        def score(rows: np.ndarray, metric=metric) -> float:
            return metric._compute_score_from_stats(rows.sum(0)).score

        boot = np.array([score(stats[0][i]) - score(stats[1][i]) for i in resamples])
        differences[name] = {
            "diff": round(float(score(stats[0]) - score(stats[1])), 2),
            "ci_low": round(float(np.percentile(boot, 2.5)), 2),
            "ci_high": round(float(np.percentile(boot, 97.5)), 2),
        }
    return differences


def with_baselines(
    hypotheses: list[str], references: list[str], baselines: dict[str, list[str]], bootstrap: int, kind: str
) -> dict[str, Any]:
    """The model's scores of a kind; each baseline's headline scores and the model minus it
    (`paired`), scored the same way."""
    scores = kind_scores(hypotheses, references, bootstrap, kind)
    scores["baselines"] = {}
    for name, outputs in baselines.items():
        scored = kind_scores(outputs, references, bootstrap, kind)
        scores["baselines"][name] = {k: scored[k] for k in HEADLINE[kind]}
        scores["baselines"][name]["paired"] = paired_differences(hypotheses, outputs, references, bootstrap, kind)
    return scores


def translation_scores(
    hypotheses: list[str], references: list[str], sources: list[str], bootstrap: int
) -> dict[str, Any]:
    """The model's scores beside copying the source's (scored the same way), the floor to beat."""
    return with_baselines(hypotheses, references, {"copy_source": sources}, bootstrap, "translation")


def dialogue_scores(
    hypotheses: list[str], references: list[str], histories: list[str], common_response: str, bootstrap: int
) -> dict[str, Any]:
    """The model's BLEU-1/2 and distinct-1/2, the references' distinct-n, and the baselines':
    repeating the history's last turn, and the training split's most common response."""
    baselines = {
        "copy_last_turn": [history.rsplit("\n", 1)[-1] for history in histories],
        "most_common_response": [common_response] * len(references),
    }
    scores = with_baselines(hypotheses, references, baselines, bootstrap, "dialogue")
    scores |= {f"reference_distinct_{n}": distinct(references, n) for n in (1, 2)}
    scores["baselines"]["most_common_response"]["response"] = common_response
    return scores


def score_outputs(
    task: TextTaskParams, pairs: dict[str, list[tuple[str, str]]], hypotheses: list[str], bootstrap: int
) -> dict[str, Any]:
    """The test split's scores of the task's metric kind, with its baselines."""
    sources = [prompt.removeprefix(task.instruction) for prompt, _ in pairs["test"]]
    references = [response for _, response in pairs["test"]]
    if task.metric == "translation":
        return translation_scores(hypotheses, references, sources, bootstrap)
    common = Counter(response for _, response in pairs["train"]).most_common(1)[0][0]
    return dialogue_scores(hypotheses, references, sources, common, bootstrap)

"""Extractive question answering, scored without training on it (params.yaml's `qa`).

SQuAD v1.1-format questions (XQuAD English by default: 1,190 questions on 240 passages, no
training split) are answered by the pretrained LM zero-shot, the passage and question followed by
`Answer:`, and by each text task's model through its prompt/response template
(lmcore/text_to_text.py) with the `qa.instruction` in front: SFT on translation or dialogue, then
asked a question. Greedy decoding; the answer is the generated text up to its first newline.

Exact match and F1 are the SQuAD v1.1 official script's (Rajpurkar et al., EMNLP 2016): both texts
lowercased, punctuation and the articles a/an/the removed, whitespace collapsed; F1 over the
words in common; each question's score the best over its gold answers; the corpus score the mean
in percent, with a 95% percentile bootstrap interval over questions. The baseline is the passage
sentence that shares the most words with the question (the floor any reader must pass).
"""

from __future__ import annotations

import gzip
import json
import re
import string
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lmcore.evaluate import bootstrap_accuracy
from lmcore.generate import generate
from lmcore.text_to_text import encode_pairs
from lmcore.tokenizer import TextTokenizer

ANSWER_CUE = "\nAnswer:"  # what the zero-shot prompt ends with
PUNCTUATION = frozenset(string.punctuation)


@dataclass(frozen=True)
class Question:
    id: str
    context: str
    question: str
    answers: tuple[str, ...]


def read_squad(path: Path, limit: int = 0) -> list[Question]:
    """The questions of a SQuAD v1.1 JSON file (optionally gzipped), in file order: `limit` of
    them evenly spaced through the file, so every article is asked (0: all); a malformed entry is
    an error naming the file and where in it."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            document = json.load(f)
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a readable SQuAD JSON file ({error})") from None
    if not isinstance(document, dict) or not isinstance(document.get("data"), list):
        raise ValueError(f"{path}: a SQuAD file is {{'data': [articles]}}")
    questions = []
    for i, article in enumerate(document["data"]):
        for j, paragraph in enumerate(article.get("paragraphs", [])):
            where = f"{path}: data[{i}].paragraphs[{j}]"
            if not isinstance(paragraph.get("context"), str) or not isinstance(paragraph.get("qas"), list):
                raise ValueError(f"{where} needs a 'context' string and a 'qas' list")
            for k, qa in enumerate(paragraph["qas"]):
                answers = tuple(a.get("text") for a in qa.get("answers", []) if isinstance(a, dict))
                if (
                    not isinstance(qa.get("question"), str)
                    or not answers
                    or not all(isinstance(a, str) for a in answers)
                ):
                    raise ValueError(f"{where}.qas[{k}] needs a 'question' and at least one answer 'text'")
                questions.append(
                    Question(str(qa.get("id", f"{i}.{j}.{k}")), paragraph["context"], qa["question"], answers)
                )
    if not questions:
        raise ValueError(f"{path}: no questions")
    if not limit or limit >= len(questions):
        return questions
    return [questions[round(i * (len(questions) - 1) / max(limit - 1, 1))] for i in range(limit)]


def normalize_answer(text: str) -> str:
    """SQuAD v1.1's normalization: lowercase, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in PUNCTUATION)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def exact_match(prediction: str, answers: tuple[str, ...]) -> float:
    return max(float(normalize_answer(prediction) == normalize_answer(a)) for a in answers)


def token_f1(prediction: str, answers: tuple[str, ...]) -> float:
    def f1(gold: str) -> float:
        predicted, expected = normalize_answer(prediction).split(), normalize_answer(gold).split()
        common = sum((Counter(predicted) & Counter(expected)).values())
        if common == 0:
            return 0.0
        precision, recall = common / len(predicted), common / len(expected)
        return 2 * precision * recall / (precision + recall)

    return max(f1(a) for a in answers)


def qa_scores(predictions: list[str], questions: list[Question], bootstrap: int) -> dict[str, float]:
    """Exact match and F1 in percent, each with its 95% bootstrap interval over questions."""
    scores = {}
    for name, score in (("exact_match", exact_match), ("f1", token_f1)):
        values = np.array([score(p, q.answers) for p, q in zip(predictions, questions, strict=True)])
        interval = bootstrap_accuracy(values, num_samples=bootstrap)
        scores[name] = round(100 * interval["accuracy"], 2)
        scores[f"{name}_ci_low"] = round(100 * interval["ci_low"], 2)
        scores[f"{name}_ci_high"] = round(100 * interval["ci_high"], 2)
    return scores


def best_sentence(question: Question) -> str:
    """The passage sentence sharing the most normalized words with the question (the first of ties)."""
    asked = set(normalize_answer(question.question).split())
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", question.context) if s.strip()]
    return max(sentences, key=lambda s: len(asked & set(normalize_answer(s).split())))


def zero_shot_prompt(tokenizer: TextTokenizer, question: Question, max_len: int) -> list[int]:
    """The passage, the question and the answer cue, as plain text after an end-of-text token
    (how every pretraining document starts); a long passage loses its start."""
    ids = tokenizer.encode(f"{question.context}\nQuestion: {question.question}{ANSWER_CUE}")
    return [tokenizer.eot_id, *ids[-(max_len - 1) :]]


def template_prompts(
    tokenizer: TextTokenizer, questions: list[Question], instruction: str, max_len: int
) -> list[list[int]]:
    """The prompts of a prompt/response model: the template around the instruction, passage and question."""
    pairs = [(f"{instruction}{q.context}\nQuestion: {q.question}", "") for q in questions]
    return list(encode_pairs(tokenizer, pairs, max_len).prompts())


def answer(model, tokenizer: TextTokenizer, prompt: list[int], max_new_tokens: int) -> str:
    """Greedy decoding up to the end-of-text token or the first newline."""
    ids = generate(
        model, prompt, max_new_tokens, temperature=0.0, eot_id=tokenizer.eot_id,
        stop=lambda new: "\n" in tokenizer.decode(new),
    )  # fmt: skip
    return tokenizer.decode(ids).split("\n", 1)[0].strip()


def baseline_scores(questions: list[Question], bootstrap: int) -> dict[str, Any]:
    return {"best_sentence": qa_scores([best_sentence(q) for q in questions], questions, bootstrap)}

"""lm-evaluation-harness judges an exported model on the project's task files: its bits per byte
agree with lmcore's evaluator on the same text, and its zero-shot accuracy is the one lmcore's
own likelihoods give."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lmcore.checkpoint import export_model
from lmcore.evaluate import evaluate_lm
from lmcore.hf import export_hf
from lmcore.tokenizer import TokenizerConfig, train_tokenizer
from pipelines.lm_eval_tasks import rolling_task, run_lm_eval, zero_shot_task
from pipelines.params import LmEvalParams, ZeroShotParams
from tests.lmcore.helpers import TINY, tiny_model

pytest.importorskip("lm_eval")

TEXT = "".join(
    f"Review {i}: the film was {'great' if i % 3 else 'dull'}, and the cast {i % 7} times better.\n" for i in range(150)
)
PROMPT = ZeroShotParams(template="{{text}} All in all, it was", choices=["dull", "great"])
ROWS = [{"text": f"Review {i}: the film", "label": int(i % 3 > 0)} for i in range(24)]
SETTINGS = LmEvalParams(enabled=True, batch_size=8, limit=0, bootstrap_iters=100, zero_shot={})


@pytest.fixture(scope="module")
def judged(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm_eval")
    tokenizer = train_tokenizer([TEXT], TokenizerConfig(kind="bpe", vocab_size=300))
    tokenizer.save(root / "tokenizer.json")
    torch.manual_seed(0)
    model = tiny_model("lstm", vocab_size=tokenizer.vocab_size)
    torch.nn.init.normal_(model.wte.weight, std=1.0)  # peaked predictions, so that the figures tell models apart
    config = {**TINY["lstm"], "vocab_size": tokenizer.vocab_size}
    extra = {"eot_token": tokenizer.eot_token, "pad_token": tokenizer.pad_token}
    export_model(root / "lm", model, "lstm", config, root / "tokenizer.json", extra=extra)
    hf = export_hf(root / "lm", root / "hf")
    names = [rolling_task(root / "tasks", "story", [TEXT]), zero_shot_task(root / "tasks", "films", PROMPT, ROWS)]
    results = run_lm_eval(hf, root / "tasks", names, config["block_size"], "cpu", SETTINGS)
    return model.eval(), tokenizer, results


def test_lm_eval_bits_per_byte_agree_with_lmcore_on_the_same_text(judged):
    model, tokenizer, results = judged
    ids = tokenizer.encode_to_array(TEXT)
    ours = evaluate_lm(model, ids, TINY["lstm"]["block_size"], 8, 0, len(TEXT.encode()) / len(ids))  # every window
    assert set(results["text_story"]) >= {"word_perplexity", "byte_perplexity", "bits_per_byte"}
    assert results["text_story"]["bits_per_byte"] == pytest.approx(ours["bits_per_byte"], rel=0.01)
    assert results["text_story"]["byte_perplexity"] == pytest.approx(2 ** results["text_story"]["bits_per_byte"])


def likeliest_choice(model, tokenizer, context: str, choices: list[str]) -> int:
    """lm-eval's rule: the choice whose tokens (after a space) are likeliest given the context."""
    scores = []
    for choice in choices:
        whole = tokenizer.encode(f"{context} {choice}")
        start = len(tokenizer.encode(context))
        with torch.no_grad():
            logprobs = F.log_softmax(model(torch.tensor([whole[:-1]]))[0].float(), -1)
        scores.append(sum(logprobs[i - 1, whole[i]].item() for i in range(start, len(whole))))
    return int(np.argmax(scores))


def test_lm_eval_zero_shot_accuracy_is_the_one_lmcore_likelihoods_give(judged):
    model, tokenizer, results = judged
    contexts = [PROMPT.template.replace("{{text}}", row["text"]) for row in ROWS]
    picked = [likeliest_choice(model, tokenizer, c, PROMPT.choices) for c in contexts]
    correct = [p == row["label"] for p, row in zip(picked, ROWS, strict=True)]
    assert results["zeroshot_films"]["acc"] == pytest.approx(np.mean(correct))
    # its standard error, for the interval the report gives: the closed form over the examples
    assert results["zeroshot_films"]["acc_stderr"] == pytest.approx(np.std(correct, ddof=1) / np.sqrt(len(ROWS)))

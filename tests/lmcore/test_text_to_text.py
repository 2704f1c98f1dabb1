import math

import pytest
import torch
import torch.nn as nn

from lmcore.text_to_text import (
    IGNORE,
    RESPONSE_MARKER,
    encode_pairs,
    fit_lengths,
    pad_pairs,
    pair_batches,
    render_messages,
    response_loss,
    response_nll,
)
from lmcore.tokenizer import TokenizerConfig, train_tokenizer
from lmcore.train import TrainConfig, train
from tests.lmcore.helpers import tiny_model

LETTERS = "abcdefgh"


@pytest.fixture(scope="module")
def tokenizer():
    # One id per character, and the template's marker and role names seen in training.
    return train_tokenizer([LETTERS + RESPONSE_MARKER + "user: assistant:"], TokenizerConfig(kind="char"))


def lookup_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """A text-to-text task a tiny model learns in seconds: each letter has its own 4-letter answer,
    so the response is known from the prompt alone."""
    g = torch.Generator().manual_seed(seed)
    answers = {letter: (LETTERS[i:] + LETTERS[:i])[::-1][:4] for i, letter in enumerate(LETTERS)}
    return [(letter, answers[letter]) for letter in (LETTERS[int(i)] for i in torch.randint(8, (n,), generator=g))]


def test_an_example_is_the_template_and_its_prompt_length(tokenizer):
    examples = encode_pairs(tokenizer, [("abc", "cba")], max_len=64)
    ids, start = examples.ids[0], examples.prompt_lengths[0]
    assert ids[0] == ids[-1] == tokenizer.eot_id
    assert tokenizer.decode(ids[1:start]) == "abc" + RESPONSE_MARKER
    assert tokenizer.decode(ids[start:-1]) == "cba"
    assert next(examples.responses()) == ids[start:-1] and next(examples.prompts()) == ids[:start]


def test_a_long_example_keeps_the_prompt_end_and_the_response_start(tokenizer):
    assert fit_lengths(10, 5, 20) == (10, 5)
    assert fit_lengths(30, 5, 20) == (15, 5)  # the prompt loses its start
    assert fit_lengths(3, 30, 20) == (3, 17)  # the response loses its end
    assert fit_lengths(30, 30, 20) == (10, 10)  # the response keeps half of the window
    marker = len(RESPONSE_MARKER)  # one token a character
    examples = encode_pairs(tokenizer, [("abcdefgh" * 4, "hgfedcba" * 4)], max_len=marker + 21)
    ids, start = examples.ids[0], examples.prompt_lengths[0]
    assert len(ids) == marker + 21 and ids[0] == tokenizer.eot_id  # 20 for the prompt and the response
    assert tokenizer.decode(ids[1:start]) == "cdefghabcdefgh"[4:] + RESPONSE_MARKER  # the prompt's last 10
    assert tokenizer.decode(ids[start:]) == "hgfedcbahg"  # the response's first 10, no end-of-text
    with pytest.raises(ValueError, match=f"max_len must be at least {marker + 3}"):
        encode_pairs(tokenizer, [("a", "b")], max_len=marker + 2)


def test_a_chat_is_its_history_and_the_assistant_turn():
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    messages += [{"role": "user", "content": "bye"}, {"role": "assistant", "content": "see you"}]
    assert render_messages(messages) == ("user: hi\nassistant: hello\nuser: bye", "see you")
    with pytest.raises(ValueError, match="must be the assistant's"):
        render_messages(messages[:3])
    with pytest.raises(ValueError, match=r"row 7\[1\]: a message is"):
        render_messages([messages[0], {"role": "assistant"}], where="row 7")


def test_batches_target_only_the_response(tokenizer):
    examples = encode_pairs(tokenizer, [("abc", "cba"), ("ab", "bab"), ("abcdefgh", "h")], max_len=64)
    inputs, targets = pad_pairs(examples, [0, 1, 2], tokenizer.pad_id)
    for row, (ids, start) in enumerate(zip(examples.ids, examples.prompt_lengths, strict=True)):
        assert inputs[row, : len(ids) - 1].tolist() == ids[:-1]
        learned = targets[row][targets[row] != IGNORE].tolist()
        assert learned == ids[start:]  # the response and its closing end-of-text, nothing else
        assert (targets[row, : start - 1] == IGNORE).all()
    sampler = pair_batches(examples, tokenizer.pad_id, num_buckets=2)
    drawn = sampler(8, torch.Generator().manual_seed(0))
    assert drawn[0].shape == drawn[1].shape and drawn[0].size(0) == 8


class KeepLogits(nn.Module):
    """The model, with the logits of its last forward kept to read their gradient."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, idx):
        self.logits = self.model(idx)
        self.logits.retain_grad()
        return self.logits


@pytest.mark.parametrize("name", ["gpt", "lstm"])
def test_prompt_tokens_get_no_gradient(tokenizer, name):
    model = KeepLogits(tiny_model(name, vocab_size=tokenizer.vocab_size, block_size=48))
    examples = encode_pairs(tokenizer, [("abcd", "dcba"), ("ab", "ba")], max_len=48)
    batch = pad_pairs(examples, [0, 1], tokenizer.pad_id)
    response_loss(model, batch).backward()
    gradient = model.logits.grad.abs().sum(-1)  # (B, T): how much each position's prediction counts
    learned = batch[1] != IGNORE
    assert (gradient[~learned] == 0).all() and (gradient[learned] > 0).all()
    # A change to the prompt's own predictions (its logits) cannot change the loss.
    with torch.no_grad():
        logits = model.model(batch[0]).float()
        moved = logits + 50.0 * torch.randn_like(logits) * (~learned)[..., None]
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), batch[1].flatten(), ignore_index=IGNORE)
        loss_moved = nn.functional.cross_entropy(moved.flatten(0, 1), batch[1].flatten(), ignore_index=IGNORE)
    assert torch.equal(loss, loss_moved)


def test_response_nll_sums_what_the_loss_averages(tokenizer):
    model = tiny_model("gru", vocab_size=tokenizer.vocab_size).eval()
    examples = encode_pairs(tokenizer, lookup_pairs(10), max_len=32)
    total, count = response_nll(model, examples, tokenizer.pad_id, batch_size=3)
    assert count == sum(len(ids) - start for ids, start in zip(examples.ids, examples.prompt_lengths, strict=True))
    with torch.no_grad():
        mean = response_loss(model, pad_pairs(examples, list(range(10)), tokenizer.pad_id))
    assert math.isclose(total / count, float(mean), rel_tol=1e-5)


def test_a_tiny_model_learns_a_text_to_text_task(tokenizer):
    model = tiny_model("gpt", vocab_size=tokenizer.vocab_size, block_size=32)
    train_set = encode_pairs(tokenizer, lookup_pairs(400), max_len=32)
    held_out = encode_pairs(tokenizer, lookup_pairs(50, seed=1), max_len=32)
    before = response_nll(model, held_out, tokenizer.pad_id)
    config = TrainConfig(max_steps=150, batch_size=16, learning_rate=3e-3, min_lr=3e-4, warmup_steps=10)
    train(model, config, lambda g: pair_batches(train_set, tokenizer.pad_id, 4)(16, g), response_loss)
    after = response_nll(model.eval(), held_out, tokenizer.pad_id)
    assert after[0] / after[1] < 0.1 * before[0] / before[1]  # about 3.3 nats a token before, 0.05 after

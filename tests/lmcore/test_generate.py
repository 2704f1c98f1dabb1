import pytest
import torch

from lmcore.generate import generate, sample_next
from tests.lmcore.helpers import tiny_model


@pytest.mark.parametrize("name", ["gpt", "gpt_classic", "lstm", "gru"])
def test_generation_is_deterministic_with_a_seed(name):
    model = tiny_model(name)
    a = generate(model, [1, 2, 3], 30, temperature=1.0, top_k=10, top_p=0.9, seed=5)
    b = generate(model, [1, 2, 3], 30, temperature=1.0, top_k=10, top_p=0.9, seed=5)
    c = generate(model, [1, 2, 3], 30, temperature=1.0, top_k=10, top_p=0.9, seed=6)
    assert a == b and len(a) == 30 and a != c


def test_greedy_generation_with_cache_matches_recomputing_the_prefix():
    model = tiny_model("gpt").eval()
    tokens = [3, 1, 4]
    out = generate(model, tokens, 10, temperature=0)
    for token in out:
        with torch.no_grad():
            assert int(model(torch.tensor([tokens]))[0, -1].argmax()) == token
        tokens.append(token)


def test_gpt_generation_beyond_block_size_slides_the_window():
    assert len(generate(tiny_model("gpt"), [1], 40, seed=0)) == 40  # block_size is 16


def test_stops_at_end_of_text():
    model = tiny_model("lstm")
    with torch.no_grad():
        model.lm_head.bias.fill_(-1e4)
        model.lm_head.bias[0] = 1e4
    assert generate(model, [5], 20, eot_id=0) == []


@pytest.mark.parametrize(
    ("argument", "value"),
    [("max_new_tokens", -1), ("temperature", -0.5), ("top_k", -3), ("top_p", 0.0), ("top_p", 1.5)],
)
def test_bad_sampling_arguments_are_named(argument, value):
    arguments = {"max_new_tokens": 5, "temperature": 1.0, "top_k": 0, "top_p": 1.0, argument: value}
    with pytest.raises(ValueError, match=f"{argument} must be .*got {value}"):
        generate(tiny_model("gru"), [1], **arguments)


def test_top_k_and_top_p_filter():
    g = torch.Generator().manual_seed(0)
    logits = torch.tensor([5.0, 4.0, 0.0, -1.0])
    assert {sample_next(logits, 1.0, 1, 1.0, g) for _ in range(50)} == {0}
    assert {sample_next(logits, 1.0, 0, 0.5, g) for _ in range(50)} == {0}
    assert {sample_next(logits, 1.0, 2, 1.0, g) for _ in range(200)} == {0, 1}

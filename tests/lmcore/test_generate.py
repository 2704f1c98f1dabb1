import pytest
import torch

from lmcore.generate import beam_search, generate, penalize_repeats, sample_next
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


def exhaustive_best(model, prompt, max_new_tokens, eot_id, length_penalty):
    """The best-scoring continuation over every sequence of up to max_new_tokens (ended by eot or
    not), by the same normalized score as beam search: what a wide enough beam must find."""
    best = (float("-inf"), None)
    frontier = [([], 0.0)]
    with torch.no_grad():
        for step in range(1, max_new_tokens + 1):
            grown = []
            for new, score in frontier:
                log_probs = torch.log_softmax(model(torch.tensor([prompt + new]))[0, -1].float(), -1)
                for token, lp in enumerate(log_probs.tolist()):
                    if token == eot_id:
                        best = max(best, ((score + lp) / step**length_penalty, new), key=lambda b: b[0])
                    else:
                        grown.append((new + [token], score + lp))
            frontier = grown
    return best[1]


@pytest.mark.parametrize("name", ["gpt", "lstm", "gru"])
def test_beam_search_finds_the_best_sequence_when_the_beam_covers_every_hypothesis(name):
    model = tiny_model(name, vocab_size=5).eval()
    # Vocabulary 5, two steps: 4 + 16 hypotheses ending in eot (id 0); a beam of 25 keeps them all.
    found = beam_search(model, [1, 2], 2, beam_size=25, eot_id=0, length_penalty=1.0)
    assert found == exhaustive_best(model, [1, 2], 2, 0, 1.0)


@pytest.mark.parametrize("name", ["gpt", "lstm", "gru"])
def test_beam_of_one_is_greedy_and_a_wider_beam_scores_no_worse(name):
    model = tiny_model(name).eval()
    greedy = generate(model, [3, 1, 4], 12, temperature=0.0)
    assert beam_search(model, [3, 1, 4], 12, beam_size=1, eot_id=-1) == greedy  # no eot: runs to the end

    def log_prob(new):
        with torch.no_grad():
            logits = model(torch.tensor([[3, 1, 4, *new]]))[0].float().log_softmax(-1)
        return sum(float(logits[2 + i, t]) for i, t in enumerate(new))

    wide = beam_search(model, [3, 1, 4], 12, beam_size=4, eot_id=-1, length_penalty=0.0)
    assert len(wide) == 12 and log_prob(wide) >= log_prob(greedy) - 1e-5


def test_beam_search_slides_the_gpt_window():
    assert len(beam_search(tiny_model("gpt"), [1], 40, beam_size=3, eot_id=-1)) == 40  # block_size is 16


def test_repetition_penalty_and_stop():
    logits = torch.tensor([2.0, -1.0, 1.0, 0.5])
    assert penalize_repeats(logits, [0, 1, 0], 2.0).tolist() == [1.0, -2.0, 1.0, 0.5]
    model = tiny_model("lstm").eval()
    plain = generate(model, [1], 30, temperature=0.0)
    assert len(set(plain)) < len(plain)  # greedy on a tiny random model repeats itself
    penalized = generate(model, [1], 30, temperature=0.0, repetition_penalty=1e6)
    assert len(set(penalized)) > len(set(plain)) + 10  # a repeat needs every unseen token to score below it
    assert generate(model, [1], 30, temperature=0.0, stop=lambda new: len(new) == 4) == plain[:4]
    with pytest.raises(ValueError, match="repetition_penalty must be > 0"):
        generate(model, [1], 5, repetition_penalty=0.0)

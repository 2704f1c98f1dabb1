import pytest
import torch

from lmcore.lora import LoraSettings, add_lora, default_targets, merge_lora, trainable_share
from lmcore.train import lm_loss
from tests.lmcore.helpers import BASE, lm_batches, run, tiny_model

pytest.importorskip("peft")


def perturb_adapters(model, seed: int = 1) -> None:
    """LoRA's B starts at zero (the adapted model starts as the base); give every adapter weight a
    value, as training would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("name", ["gpt", "gpt_swiglu", "lstm", "gru"])
def test_merged_model_gives_the_logits_of_base_plus_adapter(name):
    base = tiny_model(name).eval()
    x = torch.randint(0, 48, (2, 12))
    with torch.no_grad():
        base_logits = base(x)
    base_weights = {k: v.clone() for k, v in base.state_dict().items()}
    adapted = add_lora(base, LoraSettings(rank=2, alpha=4.0))
    with torch.no_grad():
        torch.testing.assert_close(adapted(x), base_logits, rtol=0, atol=1e-6)  # B = 0: nothing changed yet
    perturb_adapters(adapted)
    with torch.no_grad():
        adapter_logits = adapted(x)
        assert not torch.allclose(adapter_logits, base_logits, atol=1e-3)
        merged = merge_lora(adapted)
        merged_logits = merged(x)
    assert type(merged) is type(tiny_model(name))
    assert sorted(merged.state_dict()) == sorted(base_weights)  # a plain lmcore model again
    torch.testing.assert_close(merged_logits, adapter_logits, rtol=1e-5, atol=1e-5)
    changed = [k for k, v in merged.state_dict().items() if not torch.equal(v, base_weights[k])]
    assert changed and all("wte" not in k and "lm_head" not in k for k in changed)


@pytest.mark.parametrize("name", ["gpt", "lstm", "gru"])
def test_only_the_adapters_train(name):
    model = tiny_model(name, n_layer=2)
    base_params = list(model.parameters())  # peft keeps these objects, frozen, under its adapters
    frozen = [p.detach().clone() for p in base_params]
    adapted = add_lora(model, LoraSettings(rank=2))
    trainable, total = trainable_share(adapted)
    assert 0 < trainable < total and all("lora_" in n for n, p in adapted.named_parameters() if p.requires_grad)
    x, y = lm_batches(torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = float(lm_loss(adapted, (x, y)))
    run(adapted, BASE)
    with torch.no_grad():
        after = float(lm_loss(adapted, (x, y)))
    assert after < before
    assert all(not p.requires_grad and torch.equal(p, was) for p, was in zip(base_params, frozen, strict=True))


def test_default_targets_by_architecture_and_bad_settings():
    assert default_targets(tiny_model("gpt")) == ["qkv", "proj", "up", "down"]
    assert default_targets(tiny_model("lstm")) == [
        "rnn.weight_ih_l0",
        "rnn.weight_hh_l0",
        "rnn.weight_ih_l1",
        "rnn.weight_hh_l1",
    ]
    assert default_targets(tiny_model("gru"))[-1] == "down"  # n_hidden 48 != n_embd 32: a projection
    with pytest.raises(ValueError, match="LoRA target 'attention' names no module or parameter of GPT"):
        add_lora(tiny_model("gpt"), LoraSettings(targets=["attention"]))
    with pytest.raises(ValueError, match="LoRA rank must be at least 1, got 0"):
        LoraSettings(rank=0)

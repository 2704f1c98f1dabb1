import pytest
import torch
import torch.nn.functional as F

from lmcore.models import SequenceClassifier
from lmcore.models.gpt import ReLUSquared
from tests.lmcore.helpers import TINY, VOCAB, tiny_model

ALL = list(TINY)


@pytest.mark.parametrize("name", ALL)
def test_forward_shape_and_counts(name):
    model = tiny_model(name)
    idx = torch.randint(0, VOCAB, (3, 16))
    assert model(idx).shape == (3, 16, VOCAB)
    assert model.num_params() > 0
    assert model.flops_per_token() >= 6 * model.num_params()


@pytest.mark.parametrize("name", ALL)
def test_causality_future_tokens_do_not_change_earlier_logits(name):
    torch.manual_seed(0)
    model = tiny_model(name).eval()
    idx = torch.randint(0, VOCAB, (2, 16))
    changed = idx.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % VOCAB
    with torch.no_grad():
        a, b = model(idx), model(changed)
    assert torch.allclose(a[:, :10], b[:, :10], atol=1e-5)
    assert not torch.allclose(a[:, 10:], b[:, 10:])


@pytest.mark.parametrize("name", ["gpt", "gpt_classic"])
def test_gpt_logits_depend_on_token_order(name):
    # Without position information causal attention is a bag of the prefix: reordering earlier
    # tokens could not change the last logit.
    torch.manual_seed(0)
    model = tiny_model(name).eval()
    idx = torch.tensor([[3, 9, 14, 27, 5, 11]])
    swapped = torch.tensor([[9, 3, 27, 14, 5, 11]])
    with torch.no_grad():
        a, b = model(idx)[0, -1], model(swapped)[0, -1]
    assert not torch.allclose(a, b, atol=1e-4)


@pytest.mark.parametrize("name", ALL)
def test_tied_embeddings(name):
    model = tiny_model(name)
    assert model.lm_head.weight.data_ptr() == model.wte.weight.data_ptr()


@pytest.mark.parametrize("name", ALL)
def test_overfits_one_batch(name):
    torch.manual_seed(0)
    model = tiny_model(name)
    x = torch.randint(0, VOCAB, (4, 16))
    y = torch.randint(0, VOCAB, (4, 16))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(250):
        loss = F.cross_entropy(model(x).view(-1, VOCAB), y.view(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.3  # chance is ln(48) = 3.87


@pytest.mark.parametrize("name", ALL)
def test_incremental_state_matches_full_forward(name):
    model = tiny_model(name).eval()
    idx = torch.randint(0, VOCAB, (1, 12))
    with torch.no_grad():
        full = model(idx)
        state = model.init_state(1)
        logits, state = model.forward_step(idx[:, :7], state)
        steps = [logits]
        for t in range(7, 12):
            logits, state = model.forward_step(idx[:, t : t + 1], state)
            steps.append(logits)
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5)


def test_sequence_longer_than_block_size_is_an_error():
    with pytest.raises(ValueError, match="block_size=16"):
        tiny_model("gpt")(torch.zeros(1, 17, dtype=torch.long))


@pytest.mark.parametrize("name", ["gpt", "lstm", "gru"])
@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_classifier_ignores_padding(name, pooling):
    torch.manual_seed(0)
    model = SequenceClassifier(tiny_model(name), num_classes=3, pooling=pooling).eval()
    idx = torch.randint(1, VOCAB, (2, 10))
    lengths = torch.tensor([6, 10])
    padded = idx.clone()
    padded[0, 6:] = 0
    other_pad = idx.clone()
    other_pad[0, 6:] = 7
    with torch.no_grad():
        a, b = model(padded, lengths), model(other_pad, lengths)
        short = model(idx[:1, :6], lengths[:1])
    assert a.shape == (2, 3)
    assert torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(a[0], short[0], atol=1e-5)


def test_classifier_freeze_backbone_leaves_only_the_head():
    model = SequenceClassifier(tiny_model("gpt"), num_classes=2)
    model.freeze_backbone()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"head.weight", "head.bias"}


@pytest.mark.parametrize("name", ["gpt", "lstm"])
def test_a_frozen_backbone_gives_the_head_the_same_features_in_training(name):
    """A linear probe trains on the features it is evaluated on: no backbone dropout."""
    model = SequenceClassifier(tiny_model(name, dropout=0.5), num_classes=2, dropout=0.5)
    idx = torch.randint(0, 48, (4, 10))
    model.train()
    assert not torch.equal(model.backbone.features(idx), model.backbone.features(idx))  # dropout is on
    model.freeze_backbone()
    model.train()
    assert model.training and model.dropout.training and not model.backbone.training
    assert torch.equal(model.backbone.features(idx), model.eval().backbone.features(idx))


def test_relu_squared_matches_autograd_composite():
    x = torch.randn(3, 5, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(ReLUSquared.apply, (x,))
    grad = torch.randn(3, 5, 8, dtype=torch.float64)
    (ours,) = torch.autograd.grad(ReLUSquared.apply(x), x, grad)
    (reference,) = torch.autograd.grad(F.relu(x) ** 2, x, grad)
    assert torch.equal(ReLUSquared.apply(x), F.relu(x) ** 2)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-15)


def test_relu_squared_refuses_a_second_derivative():
    x = torch.randn(4, dtype=torch.float64, requires_grad=True)
    y = ReLUSquared.apply(x)
    (grad,) = torch.autograd.grad((y * y).sum(), x, create_graph=True)  # the incoming gradient depends on x
    with pytest.raises(RuntimeError, match="once_differentiable"):
        grad.sum().backward()

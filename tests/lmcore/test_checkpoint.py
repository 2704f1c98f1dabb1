import argparse
import json

import pytest
import torch
from safetensors.torch import load_file

import lmcore.checkpoint as checkpoint
from lmcore.checkpoint import export_model, load_checkpoint, load_model, save_checkpoint
from lmcore.models import SequenceClassifier
from tests.lmcore.helpers import TINY, tiny_model


def test_crash_mid_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"step": 1, "w": torch.ones(3)})

    def crashing_save(obj, f):
        f.write(b"partial garbage")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", crashing_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"step": 2, "w": torch.zeros(3)})
    monkeypatch.undo()
    state = load_checkpoint(path)
    assert state["step"] == 1 and torch.equal(state["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_checkpoint_refuses_pickled_objects(tmp_path):
    torch.save({"x": argparse.Namespace(payload="arbitrary object")}, tmp_path / "bad.pt")
    with pytest.raises(Exception, match="[Ww]eights only"):
        load_checkpoint(tmp_path / "bad.pt")


@pytest.mark.parametrize("name", ["gpt", "lstm", "gru"])
def test_export_and_load_round_trip(tmp_path, name):
    model = tiny_model(name).eval()
    arch = {"gpt": "gpt", "lstm": "lstm", "gru": "gru"}[name]
    export_model(tmp_path / "m", model, arch, TINY[name], extra={"tokenizer_sha256": "abc"})
    assert json.loads((tmp_path / "m" / "config.json").read_text())["tokenizer_sha256"] == "abc"
    assert load_file(str(tmp_path / "m" / "model.safetensors"))  # plain safetensors, readable alone
    loaded, config = load_model(tmp_path / "m")
    idx = torch.randint(0, 48, (2, 8))
    with torch.no_grad():
        assert torch.equal(model(idx), loaded(idx))
    assert config["arch"] == arch


def test_export_classifier(tmp_path):
    model = SequenceClassifier(tiny_model("gpt"), 3, pooling="last").eval()
    export_model(tmp_path / "c", model, "gpt", TINY["gpt"])
    loaded, _ = load_model(tmp_path / "c")
    idx, lengths = torch.randint(0, 48, (2, 8)), torch.tensor([8, 5])
    with torch.no_grad():
        assert torch.equal(model(idx, lengths), loaded(idx, lengths))


@pytest.mark.parametrize("content", [b"", b"garbage" * 10, b"half a checkpoint", "half"])
def test_an_unreadable_checkpoint_is_a_value_error_naming_it(tmp_path, content):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"step": 1, "w": torch.ones(1000)})
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2] if content == "half" else content)
    with pytest.raises(ValueError, match="checkpoint.pt cannot be read as a checkpoint .*move it away"):
        load_checkpoint(path)


def test_load_model_errors(tmp_path):
    with pytest.raises(ValueError, match="config.json is missing"):
        load_model(tmp_path)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "config.json").write_text("{bad"), "config.json is not valid JSON"),
        (lambda d: (d / "config.json").write_text('{"model": {}}'), "config.json has no 'arch' entry"),
        (lambda d: (d / "model.safetensors").unlink(), "model.safetensors is missing"),
        (lambda d: (d / "model.safetensors").write_bytes(b"\x10\x00"), "model.safetensors cannot be read"),
        (lambda d: (d / "tokenizer.json").write_text("junk"), "tokenizer.json is not a tokenizer.json"),
    ],
)
def test_a_damaged_model_folder_is_a_value_error_naming_the_file(tmp_path, damage, message):
    from lmcore.tokenizer import TokenizerConfig, train_tokenizer

    tokenizer = train_tokenizer(["abcdefg hij\n" * 20], TokenizerConfig(kind="char"))
    tokenizer.save(tmp_path / "tokenizer.json")
    config = {**TINY["lstm"], "vocab_size": tokenizer.vocab_size}
    export_model(
        tmp_path / "m", tiny_model("lstm", vocab_size=tokenizer.vocab_size), "lstm", config, tmp_path / "tokenizer.json"
    )
    load_model(tmp_path / "m")
    damage(tmp_path / "m")
    with pytest.raises(ValueError, match=message):
        load_model(tmp_path / "m")


def test_load_model_refuses_a_tokenizer_that_is_not_the_models(tmp_path):
    from lmcore.tokenizer import TokenizerConfig, train_tokenizer

    tokenizer = train_tokenizer(["abcdefg hij\n" * 20], TokenizerConfig(kind="char"))
    other = train_tokenizer(["klmnopq rst\n" * 20], TokenizerConfig(kind="char"))  # same size, other symbols
    assert other.vocab_size == tokenizer.vocab_size
    config = {**TINY["gpt"], "vocab_size": tokenizer.vocab_size}
    model = tiny_model("gpt", vocab_size=tokenizer.vocab_size)
    for name, tok in (("right", tokenizer), ("other", other)):
        tok.save(tmp_path / f"{name}.json")

    export_model(tmp_path / "m", model, "gpt", config, tmp_path / "right.json")  # records the file's hash
    load_model(tmp_path / "m")
    saved = (tmp_path / "m" / "model.safetensors").read_bytes()
    with pytest.raises(ValueError, match="other.json is not the tokenizer the model was trained with"):
        export_model(
            tmp_path / "m", model, "gpt", config, tmp_path / "other.json", {"tokenizer_sha256": tokenizer.sha256()}
        )
    with pytest.raises(ValueError, match="tokenizer file not found: .*missing.json"):
        export_model(tmp_path / "m", model, "gpt", config, tmp_path / "missing.json")
    assert (tmp_path / "m" / "model.safetensors").read_bytes() == saved  # the refused exports changed nothing
    (tmp_path / "m" / "tokenizer.json").write_bytes((tmp_path / "other.json").read_bytes())
    with pytest.raises(ValueError, match="not the tokenizer the model was trained with"):
        load_model(tmp_path / "m")

    bigger = {**config, "vocab_size": tokenizer.vocab_size + 5}
    export_model(
        tmp_path / "b", tiny_model("gpt", vocab_size=bigger["vocab_size"]), "gpt", bigger, tmp_path / "right.json"
    )
    with pytest.raises(
        ValueError, match=f"has {tokenizer.vocab_size} tokens .* model.vocab_size={bigger['vocab_size']}"
    ):
        load_model(tmp_path / "b")

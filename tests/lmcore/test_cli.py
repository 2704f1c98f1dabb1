import json
import re
import subprocess
import sys

import pytest
import torch

from lmcore.__main__ import main
from lmcore.checkpoint import export_model, load_model
from lmcore.evaluate import evaluate_lm
from lmcore.generate import beam_search, generate
from lmcore.text_to_text import template_prompt
from lmcore.tokenizer import TokenizerConfig, train_tokenizer
from tests.lmcore.helpers import TINY, tiny_model

TEXT = "the quick brown fox jumps over the lazy dog\n" * 40


@pytest.fixture
def model_dir(tmp_path):
    tokenizer = train_tokenizer([TEXT], TokenizerConfig(kind="char"))
    tokenizer.save(tmp_path / "tokenizer.json")
    config = {**TINY["gpt"], "vocab_size": tokenizer.vocab_size}
    model = tiny_model("gpt", vocab_size=tokenizer.vocab_size)
    export_model(tmp_path / "model", model, "gpt", config, tmp_path / "tokenizer.json")
    return tmp_path / "model", model, tokenizer


def test_evaluate_scores_a_text_file_as_evaluate_lm_does(tmp_path, model_dir, capsys):
    directory, model, tokenizer = model_dir
    (tmp_path / "held_out.txt").write_text(TEXT)
    main(["evaluate", "--model", str(directory), "--text", str(tmp_path / "held_out.txt"), "--windows", "20"])
    report = json.loads(capsys.readouterr().out)
    ids = tokenizer.encode_to_array(TEXT)
    expected = evaluate_lm(model.eval(), ids, TINY["gpt"]["block_size"], 32, 20, bytes_per_token=1.0)
    assert report["tokens"] == len(ids) == len(TEXT)  # one character, one byte, one token
    for key in ("loss", "perplexity", "top1_accuracy", "top5_accuracy", "bits_per_byte"):
        assert report[key] == pytest.approx(expected[key], rel=1e-6), key


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--text", "{tmp}/missing.txt"], "cannot read .*missing.txt"),
        (["--text", "{tmp}/short.txt"], r"short.txt: block_size=16 is larger than the evaluation data \(6 tokens\)"),
        (["--text", "{tmp}/short.txt", "--windows", "0"], "--windows must be >= 1, got 0"),
    ],
)
def test_evaluate_names_a_bad_argument(tmp_path, model_dir, capsys, arguments, message):
    (tmp_path / "short.txt").write_text("short\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--model", str(model_dir[0]), *[a.format(tmp=tmp_path) for a in arguments]])
    assert exit_info.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def test_generate_samples_the_same_text_for_the_same_seed(model_dir):
    cmd = [sys.executable, "-m", "lmcore", "generate", "--model", str(model_dir[0]), "--prompt", "the"]
    cmd += ["--max-new-tokens", "12", "--seed", "3"]
    first = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    assert first.startswith("the") and first == subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--device", "gpu"], "device='gpu' is not a torch device"),
        (["--top-k", "-3"], "top_k must be >= 0 (0 keeps every token), got -3"),
        (["--num-samples", "0"], "--num-samples must be >= 1, got 0"),
        (["--repetition-penalty", "0"], "repetition_penalty must be > 0 (1 is none), got 0.0"),
        (["--beam-size", "2", "--num-samples", "2"], "beam search gives one answer"),
    ],
)
def test_generate_names_a_bad_argument(model_dir, capsys, arguments, message):
    """Each bad argument is exit code 2 and a message naming it."""
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--model", str(model_dir[0]), *arguments])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_folder_with_its_own_special_tokens_loads_them_from_its_config(tmp_path, capsys):
    config = TokenizerConfig(kind="char", special_tokens=["<eos>", "<pad>"], eot_token="<eos>", pad_token="<pad>")
    tokenizer = train_tokenizer([TEXT], config)
    tokenizer.save(tmp_path / "tokenizer.json")
    model_config = {**TINY["lstm"], "vocab_size": tokenizer.vocab_size}
    model = tiny_model("lstm", vocab_size=tokenizer.vocab_size)
    extra = {"eot_token": "<eos>", "pad_token": "<pad>"}
    export_model(tmp_path / "model", model, "lstm", model_config, tmp_path / "tokenizer.json", extra=extra)
    main(["generate", "--model", str(tmp_path / "model"), "--prompt", "the", "--max-new-tokens", "5"])
    assert capsys.readouterr().out.startswith("the")


def test_export_hf_then_import_hf_gives_back_the_same_model(tmp_path, model_dir, capsys):
    directory, model, _ = model_dir
    main(["export-hf", "--model", str(directory), "--out", str(tmp_path / "hf")])
    main(["import-hf", "--model", str(tmp_path / "hf"), "--out", str(tmp_path / "back")])
    assert capsys.readouterr().out.split() == [str(tmp_path / "hf"), str(tmp_path / "back")]
    back, _ = load_model(tmp_path / "back")
    assert all(torch.equal(back.state_dict()[k], v) for k, v in model.state_dict().items())
    with pytest.raises(SystemExit) as exit_info:
        main(["import-hf", "--model", str(directory), "--out", str(tmp_path / "again")])  # an lmcore folder
    assert exit_info.value.code == 2
    assert "model_type None is neither lmcore nor llama (it is an lmcore folder already)" in capsys.readouterr().err


def test_generate_with_the_prompt_response_template_prints_the_answer(tmp_path, model_dir, capsys):
    _, model, tokenizer = model_dir
    config = {**TINY["gpt"], "vocab_size": tokenizer.vocab_size}
    export_model(
        tmp_path / "chat", model, "gpt", config, tmp_path / "tokenizer.json", extra={"template": "prompt_response"}
    )
    prompt_ids = template_prompt(tokenizer, "the fox")
    greedy = tokenizer.decode(generate(model, prompt_ids, 10, temperature=0.0, eot_id=tokenizer.eot_id))
    common = ["generate", "--model", str(tmp_path / "chat"), "--prompt", "the fox", "--max-new-tokens", "10"]
    main([*common, "--temperature", "0"])
    assert capsys.readouterr().out == greedy + "\n"  # the response alone: no prompt, no marker
    main([*common, "--beam-size", "3"])
    beam = beam_search(model, prompt_ids, 10, beam_size=3, eot_id=tokenizer.eot_id)
    assert capsys.readouterr().out == tokenizer.decode(beam) + "\n"
    stop = greedy[3:5]
    main([*common, "--temperature", "0", "--stop", stop])
    assert capsys.readouterr().out == greedy[: greedy.index(stop)] + "\n"
    main([*common, "--temperature", "0", "--template", "none"])  # a plain continuation of the raw prompt
    plain = generate(model, tokenizer.encode("the fox"), 10, temperature=0.0, eot_id=tokenizer.eot_id)
    assert capsys.readouterr().out == "the fox" + tokenizer.decode(plain) + "\n"


def test_generate_puts_the_folders_instruction_before_the_prompt(tmp_path, model_dir, capsys, monkeypatch):
    """A folder finetuned with an instruction ("Translate English to German: ") reads the bare
    source as it was trained: instruction, source, template; `--template prompt_response` does not add it."""
    import lmcore.__main__ as cli

    _, model, tokenizer = model_dir
    config = {**TINY["gpt"], "vocab_size": tokenizer.vocab_size}
    extra = {"template": "prompt_response", "instruction": "Say: "}
    export_model(tmp_path / "translator", model, "gpt", config, tmp_path / "tokenizer.json", extra=extra)
    read = []
    monkeypatch.setattr(cli, "generate", lambda m, prompt, *args, **kwargs: read.append(prompt) or [])
    common = ["generate", "--model", str(tmp_path / "translator"), "--prompt", "the fox", "--max-new-tokens", "4"]
    main(common)
    main([*common, "--template", "prompt_response"])
    assert read == [template_prompt(tokenizer, "Say: the fox"), template_prompt(tokenizer, "the fox")]


def test_generate_answers_a_chat_from_a_messages_file(tmp_path, model_dir, capsys, monkeypatch):
    """`--messages FILE`: a text task's model reads the turns one a line after its instruction, the
    prompt its exported chat template renders; a bad chat names the file and the message."""
    import lmcore.__main__ as cli

    _, model, tokenizer = model_dir
    config = {**TINY["gpt"], "vocab_size": tokenizer.vocab_size}
    extra = {"template": "prompt_response", "instruction": "Reply:\n"}
    export_model(tmp_path / "chat", model, "gpt", config, tmp_path / "tokenizer.json", extra=extra)
    chat = [{"role": "user", "content": "Tea ?"}, {"role": "assistant", "content": "Yes ."}]
    (tmp_path / "chat.json").write_text(json.dumps(chat))
    read = []
    monkeypatch.setattr(cli, "generate", lambda m, prompt, *args, **kwargs: read.append(prompt) or [])
    main(["generate", "--model", str(tmp_path / "chat"), "--messages", str(tmp_path / "chat.json")])
    assert read == [template_prompt(tokenizer, "Reply:\nTea ?\nYes .")]
    bad_chats = [([{"role": "user"}], "chat.json[0]: a message is"), ({"a": 1}, "non-empty list"), ("{", "Expecting")]
    for bad, message in bad_chats:
        (tmp_path / "chat.json").write_text(bad if isinstance(bad, str) else json.dumps(bad))
        with pytest.raises(SystemExit) as exit_info:
            main(["generate", "--model", str(tmp_path / "chat"), "--messages", str(tmp_path / "chat.json")])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and f"--messages {tmp_path / 'chat.json'}: " in err and message in err

"""Hugging Face export and import: `transformers` alone (lmcore refused in its process) opens every
architecture lmcore trains, gives lmcore's logits, generates what lmcore generates, and tokenizes
as lmcore does; a folder imported back is the same model."""

import json
import subprocess
from pathlib import Path

import pytest
import torch

from lmcore.checkpoint import export_model, load_folder_tokenizer, load_model
from lmcore.data import LabeledExamples, pad_batch
from lmcore.generate import generate
from lmcore.hf import export_hf, import_hf
from lmcore.models import SequenceClassifier
from lmcore.text_to_text import PROMPT_RESPONSE, folder_prompt, messages_text
from lmcore.tokenizer import TokenizerConfig, train_tokenizer
from tests.lmcore.helpers import ARCH_OF, TINY, open_in_transformers, tiny_model

TEXT = "the quick brown fox jumps over the lazy dog. A review ends with its verdict: great!\n" * 40
TEXTS = ["the quick fox!", " A review ends with\nits verdict: the quick brown fox", "dog"]
CLASSIFIERS = {"lstm_concat": ("lstm", "concat", 1.7), "gpt_mean": ("gpt", "mean", 0.8)}
MAX_LEN = 12
# A model finetuned on the prompt/response template (a dialogue model): its folder's chat template
# must render these turns as lmcore renders them.
INSTRUCTION = "Reply to the conversation:\n"
CHAT = [{"role": "user", "content": "Tea ?"}, {"role": "assistant", "content": 'Yes, the "green" one.'}]


def lmcore_folder(root: Path, name: str, tokenizer, classifier: tuple | None = None) -> Path:
    arch_name = classifier[0] if classifier else name.removesuffix("_chat")
    torch.manual_seed(len(name))
    model = tiny_model(arch_name, vocab_size=tokenizer.vocab_size)
    extra = {"eot_token": tokenizer.eot_token, "pad_token": tokenizer.pad_token}
    if classifier:
        model = SequenceClassifier(model, 2, classifier[1])
        torch.nn.init.normal_(model.head.weight, std=0.5)  # logits far from zero, so differences show
        extra |= {"max_len": MAX_LEN, "label_names": ["negative", "positive"], "temperature": classifier[2]}
    if name.endswith("_chat"):
        extra |= {"template": PROMPT_RESPONSE, "instruction": INSTRUCTION}
    config = {**TINY[arch_name], "vocab_size": tokenizer.vocab_size}
    return export_model(
        root / f"lmcore_{name}", model, ARCH_OF[arch_name], config, root / "tokenizer.json", extra=extra
    )


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Every architecture and two classifiers, exported; what transformers made of each, by name."""
    root = tmp_path_factory.mktemp("hf")
    tokenizer = train_tokenizer([TEXT], TokenizerConfig(kind="bpe", vocab_size=300))
    tokenizer.save(root / "tokenizer.json")
    folders, cases, names = {}, [], [*TINY, *CLASSIFIERS, "lstm_chat"]
    for name in names:
        folders[name] = lmcore_folder(root, name, tokenizer, CLASSIFIERS.get(name))
        case = {"folder": str(export_hf(folders[name], root / f"hf_{name}")), "texts": TEXTS}
        ids = tokenizer.encode(TEXT)[:16]
        case |= {"kind": "classifier"} if name in CLASSIFIERS else {"kind": "lm", "ids": ids, "prompt": ids[:4]}
        case |= {"chat": CHAT} if name.endswith("_chat") else {}
        cases.append({**case, "max_new_tokens": 10, "long_new_tokens": 40})  # 40: past a GPT's 16 positions
    results = open_in_transformers(cases, root)
    return {name: (folders[name], cases[i], results[i]) for i, name in enumerate(names)}


@pytest.mark.parametrize("name", list(TINY))
def test_transformers_gives_lmcore_logits_for_every_architecture(exported, name):
    folder, case, result = exported[name]
    model, _ = load_model(folder)
    with torch.no_grad():
        expected = model(torch.tensor([case["ids"]]))[0]
    assert (torch.tensor(result["logits"]) - expected).abs().max() < 1e-4
    # The Llama-shaped GPT opens as transformers' own Llama, with no code of ours in its folder.
    native = name == "gpt_swiglu"
    assert result["class"] == ("LlamaForCausalLM" if native else "LmcoreForCausalLM")
    assert (
        not list(Path(case["folder"]).glob("*.py"))
        if native
        else (Path(case["folder"]) / "modeling_lmcore.py").exists()
    )


@pytest.mark.parametrize("name", list(TINY))
def test_greedy_generate_in_transformers_reproduces_lmcore_generate(exported, name):
    folder, case, result = exported[name]
    model, config = load_model(folder)
    eot = load_folder_tokenizer(folder, config).eot_id
    expected = generate(model, case["prompt"], case["max_new_tokens"], temperature=0.0, eot_id=eot)
    generated = result["generated"]
    assert generated[: len(expected)] == expected and generated[len(expected) :] in ([], [eot])


def test_the_tokenizer_round_trips_as_lmcore_tokenizes(exported):
    folder, _, result = exported["lstm"]
    model, config = load_model(folder)
    tokenizer = load_folder_tokenizer(folder, config)
    assert result["ids"] == [tokenizer.encode(text) for text in TEXTS]  # no special token added
    assert result["decoded"] == TEXTS


@pytest.mark.parametrize("name", list(CLASSIFIERS))
def test_an_exported_classifier_gives_lmcore_calibrated_logits(exported, name):
    folder, _, result = exported[name]
    model, config = load_model(folder)
    tokenizer = load_folder_tokenizer(folder, config)
    examples = LabeledExamples(tokenizer.encode_batch(TEXTS), [0] * len(TEXTS))
    idx, lengths, _ = pad_batch(examples, range(len(TEXTS)), tokenizer.pad_id, MAX_LEN)  # the last MAX_LEN tokens
    with torch.no_grad():
        expected = model(idx, lengths) / config["temperature"]
    assert len(tokenizer.encode(TEXTS[1])) > MAX_LEN  # one text is cut, from the left as lmcore cuts
    assert (torch.tensor(result["logits"]) - expected).abs().max() < 1e-4
    assert result["labels"] == ["negative", "positive"]


def test_a_prompt_response_model_carries_its_prompt_as_a_chat_template(exported):
    """`apply_chat_template` on a finetuned text-to-text model's folder gives the tokens `lmcore
    generate` feeds it for the same turns (its instruction, the turns one a line, the marker);
    a plain LM's folder has no chat template."""
    folder, _, result = exported["lstm_chat"]
    model, config = load_model(folder)
    expected = folder_prompt(load_folder_tokenizer(folder, config), config, messages_text(CHAT))
    assert result["chat_ids"] == expected
    assert result["chat_text"].startswith("<|endoftext|>Reply to the conversation:\nTea ?\nYes,")
    assert exported["lstm"][2]["chat_text"] is None


@pytest.mark.parametrize("name", ["gpt_swiglu", "lstm", "lstm_concat"])
def test_an_exported_folder_imports_back_as_the_same_model(exported, tmp_path, name):
    folder, case, _ = exported[name]
    original, config = load_model(folder)
    back, back_config = load_model(import_hf(case["folder"], tmp_path / "back"))
    assert type(back) is type(original)
    for key, tensor in original.state_dict().items():
        assert torch.equal(back.state_dict()[key], tensor), key
    assert {k: v for k, v in back_config.items() if k != "model"} == {k: v for k, v in config.items() if k != "model"}


def test_importing_a_folder_lmcore_cannot_run_names_the_key(exported, tmp_path):
    source = Path(exported["gpt_swiglu"][1]["folder"])
    hf_config = json.loads((source / "config.json").read_text())
    for change, message in [({"intermediate_size": 7}, "intermediate_size=7"), ({"model_type": "bert"}, "'bert'")]:
        copy = tmp_path / "copy"
        subprocess.run(["cp", "-r", str(source), str(copy)], check=True)
        (copy / "config.json").write_text(json.dumps({**hf_config, **change}))
        with pytest.raises(ValueError, match=message):
            import_hf(copy, tmp_path / "out")
        subprocess.run(["rm", "-r", str(copy)], check=True)
    with pytest.raises(ValueError, match="config.json is missing"):
        import_hf(tmp_path / "nowhere", tmp_path / "out")


def test_a_folder_without_its_tokenizer_is_refused_by_name(tmp_path):
    model = tiny_model("lstm")
    export_model(tmp_path / "bare", model, "lstm", TINY["lstm"])
    with pytest.raises(ValueError, match="bare has no tokenizer.json"):
        export_hf(tmp_path / "bare", tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def fed_per_step(prompt: int, steps: int, context: int | None) -> list[int]:
    """The tokens each forward reads under lmcore's rule: the prompt, then one token a step; a GPT
    whose context is full starts again from the last half of it."""
    fed, seen = [prompt], prompt
    for _ in range(steps - 1):
        rebuild = context is not None and seen >= context
        fed.append(context // 2 if rebuild else 1)
        seen = context // 2 if rebuild else seen + 1
    return fed


@pytest.mark.parametrize("name", [name for name in TINY if name != "gpt_swiglu"])
def test_remote_code_generation_carries_lmcore_state(exported, name):
    """generate() of a folder with our modeling code reads one new token a step (not the prefix
    again), and past a GPT's context slides its window as lmcore's generate does."""
    folder, case, result = exported[name]
    model, _ = load_model(folder)
    steps = case["long_new_tokens"]
    assert result["generated_long"] == generate(model, case["prompt"], steps, temperature=0.0)
    assert result["fed"] == fed_per_step(len(case["prompt"]), steps, model.context_length)


def test_the_wrapper_imports_every_file_the_folder_carries(exported):
    """transformers 4 copies into its module cache only the files modeling_lmcore.py imports
    itself, not what those import: each copied lmcore file must be one of them (CI runs this file
    under transformers 4 too: `make test-transformers4`)."""
    from transformers.dynamic_module_utils import get_relative_imports

    folder = Path(exported["lstm"][1]["folder"])
    carried = {path.stem for path in folder.glob("*.py")} - {"modeling_lmcore"}
    assert set(get_relative_imports(folder / "modeling_lmcore.py")) == carried

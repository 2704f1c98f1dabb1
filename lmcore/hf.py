"""Hugging Face format: export a model folder that `transformers` opens without lmcore, and import one.

A GPT with RMSNorm, rotary positions, SwiGLU and no biases is a Llama: it exports as
`LlamaForCausalLM`, with no code of ours in the folder. Everything else (the LSTM/GRU models, the
other GPT options, every classifier) ships its modeling code in the folder, as the Hub carries
non-standard architectures (`auto_map`, opened with `trust_remote_code=True`): lmcore's own model
files, copied with their imports made relative, behind the thin wrapper in lmcore/hf_remote/. So
the exported weights run the code they were trained with, and import is a rename of keys.

Writing the folder needs no `transformers`: config.json, model.safetensors, tokenizer.json,
tokenizer_config.json, special_tokens_map.json and generation_config.json are plain files.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
import torch.nn as nn

from lmcore.checkpoint import (
    WEIGHTS_NAME,
    build_exported,
    check_state_fits,
    export_model,
    folder_swap,
    load_folder_tokenizer,
    load_model,
)
from lmcore.models import GPT, GPTConfig, SequenceClassifier
from lmcore.models.gpt import mlp_width
from lmcore.text_to_text import PROMPT_RESPONSE, chat_template

REMOTE_CODE = Path(__file__).parent / "hf_remote"
# The folder's copies of lmcore's model code, and the import each absolute one becomes.
MODEL_SOURCES = {
    "lmcore_config.py": "config.py",
    "lmcore_models.py": "models/__init__.py",
    "lmcore_gpt.py": "models/gpt.py",
    "lmcore_recurrent.py": "models/recurrent.py",
    "lmcore_classifier.py": "models/classifier.py",
}
RELATIVE_IMPORTS = {
    f"lmcore.{s[:-3].replace('/__init__', '').replace('/', '.')}": f".{n[:-3]}" for n, s in MODEL_SOURCES.items()
}
AUTO_MAP = {
    "AutoConfig": "configuration_lmcore.LmcoreConfig",
    "AutoModelForCausalLM": "modeling_lmcore.LmcoreForCausalLM",
    "AutoModelForSequenceClassification": "modeling_lmcore.LmcoreForSequenceClassification",
}
LLAMA_OPTIONS = {"norm": "rmsnorm", "position": "rotary", "mlp": "swiglu", "bias": False}


def is_llama(model: nn.Module) -> bool:
    """Whether a language model is exactly a Llama (it exports natively)."""
    return isinstance(model, GPT) and all(getattr(model.config, k) == v for k, v in LLAMA_OPTIONS.items())


def export_hf(source: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write the Hugging Face folder `out` for the exported lmcore folder `source` (replaced whole)."""
    source, out = Path(source), Path(out)
    model, config = load_model(source)
    if not (source / "tokenizer.json").exists():
        raise ValueError(f"{source} has no tokenizer.json: a Hugging Face folder needs the model's tokenizer")
    tokenizer = load_folder_tokenizer(source, config)
    classifier = isinstance(model, SequenceClassifier)
    native = is_llama(model)
    specials = {"bos_token_id": tokenizer.eot_id, "eos_token_id": tokenizer.eot_id, "pad_token_id": tokenizer.pad_id}
    if native:
        hf_config, weights = llama_config(model.config), llama_weights(model)
    else:
        hf_config, weights = (
            remote_config(config, classifier),
            {f"lmcore.{k}": v for k, v in model.state_dict().items()},
        )
    hf_config.update(specials, torch_dtype="float32", dtype="float32")
    with folder_swap(out) as tmp:
        if not native:
            copy_remote_code(tmp)
        # Tied weights are written as two tensors: safetensors stores no shared storage.
        tensors = {k: v.detach().to(torch.float32).contiguous().clone() for k, v in weights.items()}
        safetensors.torch.save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        write_json(tmp / "config.json", hf_config)
        write_json(tmp / "generation_config.json", {**specials, "_from_model_config": False})
        shutil.copyfile(source / "tokenizer.json", tmp / "tokenizer.json")
        write_tokenizer_config(tmp, tokenizer.eot_token, tokenizer.pad_token, config, classifier)
    return out


def remote_config(config: dict[str, Any], classifier: bool) -> dict[str, Any]:
    kind = "LmcoreForSequenceClassification" if classifier else "LmcoreForCausalLM"
    hf_config = {"model_type": "lmcore", "architectures": [kind], "auto_map": AUTO_MAP, "lmcore": config}
    hf_config["vocab_size"] = config["model"]["vocab_size"]
    hf_config["tie_word_embeddings"] = False  # lmcore's module ties its own weights
    hf_config["use_cache"] = True  # generate() carries lmcore's own state (hf_remote/modeling_lmcore.py)
    if config["arch"] == "gpt":  # the context a GPT's positions allow (lm-eval and generate read it)
        hf_config["max_position_embeddings"] = config["model"]["block_size"]
    if classifier:
        names = config.get("label_names") or [str(i) for i in range(config["classifier"]["num_classes"])]
        hf_config["id2label"] = dict(enumerate(names))
        hf_config["label2id"] = {name: i for i, name in enumerate(names)}
    return hf_config


def copy_remote_code(folder: Path) -> None:
    """The wrapper and lmcore's model files, each absolute `lmcore.` import made relative."""
    for path in REMOTE_CODE.glob("*.py"):
        shutil.copyfile(path, folder / path.name)
    lmcore_root = Path(__file__).parent
    for name, source in MODEL_SOURCES.items():
        text = (lmcore_root / source).read_text()
        for module, relative in sorted(RELATIVE_IMPORTS.items(), key=lambda item: -len(item[0])):
            text = re.sub(rf"^from {re.escape(module)} import", f"from {relative} import", text, flags=re.M)
        if left := re.findall(r"^\s*(?:from|import) lmcore\S*", text, flags=re.M):
            raise ValueError(f"lmcore/{source} imports {left[0].split()[-1]}, which the exported folder does not carry")
        (folder / name).write_text(text)


def write_tokenizer_config(
    folder: Path, eot_token: str, pad_token: str, config: dict[str, Any], classifier: bool
) -> None:
    """A tokenizer `AutoTokenizer` opens as `PreTrainedTokenizerFast` (named, as transformers 4
    needs): no special token added on encode, text cut from the left to a classifier's max_len (as
    lmcore cuts), right padding; a prompt/response model's prompt as its chat template."""
    specials = {"bos_token": eot_token, "eos_token": eot_token, "pad_token": pad_token}
    length = config.get("max_len", 128) if classifier else config["model"]["block_size"]
    write_json(folder / "special_tokens_map.json", specials)
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **specials,
        "model_max_length": length,
        "padding_side": "right",
        "truncation_side": "left",
        "clean_up_tokenization_spaces": False,
        "add_bos_token": False,
        "add_eos_token": False,
    }
    if config.get("template") == PROMPT_RESPONSE:
        tokenizer_config["chat_template"] = chat_template(config.get("instruction", ""))
    write_json(folder / "tokenizer_config.json", tokenizer_config)


def llama_config(model: GPTConfig) -> dict[str, Any]:
    return {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": model.vocab_size,
        "hidden_size": model.n_embd,
        "intermediate_size": mlp_width(model),
        "num_hidden_layers": model.n_layer,
        "num_attention_heads": model.n_head,
        "num_key_value_heads": model.n_head,
        "head_dim": model.n_embd // model.n_head,
        "hidden_act": "silu",
        "max_position_embeddings": model.block_size,
        "rms_norm_eps": torch.finfo(torch.float32).eps,  # nn.RMSNorm's default in fp32
        "rope_theta": model.rope_base,
        "rope_parameters": {"rope_type": "default", "rope_theta": model.rope_base},
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": True,
    }


def rotary_halves(weight: torch.Tensor, n_head: int, inverse: bool = False) -> torch.Tensor:
    """Query/key rows reordered per head between lmcore's rotary pairs (2j, 2j+1) and Llama's
    (j, j + hs/2); `inverse` goes back."""
    rows, cols = weight.shape
    half = rows // n_head // 2
    shape = (n_head, 2, half, cols) if inverse else (n_head, half, 2, cols)
    return weight.reshape(shape).transpose(1, 2).reshape(rows, cols)


def llama_weights(model: GPT) -> dict[str, torch.Tensor]:
    C, H = model.config.n_embd, mlp_width(model.config)
    weights = {"model.embed_tokens.weight": model.wte.weight, "model.norm.weight": model.norm_f.weight}
    for i, block in enumerate(model.blocks):
        q, k, v = block.attn.qkv.weight.split(C)
        gate, up = block.mlp.up.weight.split(H)
        prefix = f"model.layers.{i}."
        weights |= {
            prefix + "input_layernorm.weight": block.norm1.weight,
            prefix + "post_attention_layernorm.weight": block.norm2.weight,
            prefix + "self_attn.q_proj.weight": rotary_halves(q, model.config.n_head),
            prefix + "self_attn.k_proj.weight": rotary_halves(k, model.config.n_head),
            prefix + "self_attn.v_proj.weight": v,
            prefix + "self_attn.o_proj.weight": block.attn.proj.weight,
            prefix + "mlp.gate_proj.weight": gate,
            prefix + "mlp.up_proj.weight": up,
            prefix + "mlp.down_proj.weight": block.mlp.down.weight,
        }
    return weights


def import_hf(source: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write the lmcore folder `out` for a Hugging Face folder that `export_hf` wrote (or any Llama
    of lmcore's shape with a tokenizer.json): generation, evaluation and finetuning take it."""
    source = Path(source)
    hf_config = read_json(source / "config.json")
    kind = hf_config.get("model_type")
    if kind not in ("lmcore", "llama"):
        plain = " (it is an lmcore folder already)" if "arch" in hf_config else ""
        raise ValueError(f"{source / 'config.json'}: model_type {kind!r} is neither lmcore nor llama{plain}")
    tokens = read_json(source / "tokenizer_config.json")
    try:
        weights = safetensors.torch.load_file(str(source / WEIGHTS_NAME))
    except (OSError, safetensors.SafetensorError) as error:
        raise ValueError(f"{source / 'model.safetensors'} cannot be read: {error}") from None
    if kind == "lmcore":
        config = dict(hf_config["lmcore"])
        arch, model_config = config.pop("arch"), config.pop("model")
        weights = {k.removeprefix("lmcore."): v for k, v in weights.items()}
    else:
        arch, model_config = "gpt", gpt_config_of_llama(hf_config, source / "config.json")
        weights = gpt_weights_of_llama(weights, model_config)
        eos = token_text(tokens.get("eos_token"), source / "tokenizer_config.json", "eos_token")
        config = {
            "eot_token": eos,
            "pad_token": token_text(tokens.get("pad_token", eos), source / "tokenizer_config.json", "pad_token"),
        }
    config.pop("classifier", None)  # export_model writes it again from the module
    config.pop("tokenizer_sha256", None)  # and the tokenizer's hash from the file
    model = build_exported(arch, model_config, hf_config.get("lmcore", {}).get("classifier"))
    check_state_fits(model, weights, str(source / WEIGHTS_NAME))
    model.load_state_dict(weights)
    return export_model(out, model, arch, model_config, source / "tokenizer.json", extra=config)


def gpt_config_of_llama(hf: dict[str, Any], path: Path) -> dict[str, Any]:
    n_embd, n_head = hf["hidden_size"], hf["num_attention_heads"]
    expected = {
        "num_key_value_heads": n_head,
        "head_dim": n_embd // n_head,
        "intermediate_size": mlp_width(GPTConfig(n_embd=n_embd, n_head=n_head, mlp="swiglu")),
        "hidden_act": "silu",
        "tie_word_embeddings": True,
        "attention_bias": False,
        "mlp_bias": False,
    }
    for key, value in expected.items():
        if hf.get(key, value) != value:
            raise ValueError(f"{path}: {key}={hf[key]!r}, but an lmcore GPT has {value!r}")
    rope = hf.get("rope_parameters") or {"rope_theta": hf.get("rope_theta", 10000.0)}
    return {
        "vocab_size": hf["vocab_size"],
        "block_size": hf["max_position_embeddings"],
        "n_layer": hf["num_hidden_layers"],
        "n_head": n_head,
        "n_embd": n_embd,
        "dropout": 0.0,
        **LLAMA_OPTIONS,
        "rope_base": float(rope["rope_theta"]),
    }


def gpt_weights_of_llama(weights: dict[str, torch.Tensor], model: dict[str, Any]) -> dict[str, torch.Tensor]:
    n_head = model["n_head"]
    own = {"wte.weight": weights["model.embed_tokens.weight"], "norm_f.weight": weights["model.norm.weight"]}
    own["lm_head.weight"] = weights.get("lm_head.weight", own["wte.weight"])
    for i in range(model["n_layer"]):
        hf = {k.removeprefix(f"model.layers.{i}."): v for k, v in weights.items() if k.startswith(f"model.layers.{i}.")}
        q = rotary_halves(hf["self_attn.q_proj.weight"], n_head, inverse=True)
        k = rotary_halves(hf["self_attn.k_proj.weight"], n_head, inverse=True)
        own |= {
            f"blocks.{i}.norm1.weight": hf["input_layernorm.weight"],
            f"blocks.{i}.norm2.weight": hf["post_attention_layernorm.weight"],
            f"blocks.{i}.attn.qkv.weight": torch.cat([q, k, hf["self_attn.v_proj.weight"]]),
            f"blocks.{i}.attn.proj.weight": hf["self_attn.o_proj.weight"],
            f"blocks.{i}.mlp.up.weight": torch.cat([hf["mlp.gate_proj.weight"], hf["mlp.up_proj.weight"]]),
            f"blocks.{i}.mlp.down.weight": hf["mlp.down_proj.weight"],
        }
    return own


def token_text(token: str | dict | None, path: Path, key: str) -> str:
    """A special token as tokenizer_config.json writes it: a string, or transformers' {"content": ...}."""
    text = token.get("content") if isinstance(token, dict) else token
    if not isinstance(text, str):
        raise ValueError(f"{path} has no {key}: lmcore needs it as its end-of-text token")
    return text


def write_json(path: Path, value: dict[str, Any]) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n")


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path.parent} is not a Hugging Face model folder: {path.name} is missing") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None

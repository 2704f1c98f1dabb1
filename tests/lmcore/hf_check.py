"""Opens exported Hugging Face folders with `transformers` alone, as a user without lmcore would.

Run as a script by tests/lmcore/test_hf.py: `python hf_check.py CASES.json`. Importing lmcore is
refused here, so the folder must carry all it needs. For each case it prints what transformers
computed (logits, greedy continuation, token ids, decoded text) as one JSON line, for the test to
compare with lmcore.
"""

import json
import sys


class NoLmcore:
    """A meta path finder that refuses lmcore: the project is "not installed" in this process."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("lmcore", "pipelines", "tests"):
            raise ImportError(f"{name} is not available to an exported model")
        return None


sys.meta_path.insert(0, NoLmcore())

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer  # noqa: E402


def check(case: dict) -> dict:
    folder = case["folder"]
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    encoded = tokenizer(case["texts"], padding=True, truncation=True, return_tensors="pt")
    result = {
        "ids": [tokenizer(text)["input_ids"] for text in case["texts"]],
        "decoded": [tokenizer.decode(tokenizer(text)["input_ids"]) for text in case["texts"]],
        "tokenizer_class": type(tokenizer).__name__,
        "chat_text": None,
    }
    if "chat" in case:  # a prompt/response model's folder: the prompt its chat template renders
        result["chat_text"] = tokenizer.apply_chat_template(case["chat"], tokenize=False)
        result["chat_ids"] = tokenizer(result["chat_text"], add_special_tokens=False)["input_ids"]
    elif tokenizer.chat_template is not None:
        result["chat_text"] = "a chat template where none belongs"
    if case["kind"] == "classifier":
        model = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True).eval()
        with torch.no_grad():
            result["logits"] = model(**encoded).logits.tolist()
        result["labels"] = [model.config.id2label[i] for i in range(model.config.num_labels)]
    else:
        model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
        with torch.no_grad():
            result["logits"] = model(torch.tensor([case["ids"]])).logits[0].tolist()
            prompt = torch.tensor([case["prompt"]])
            out = model.generate(prompt, max_new_tokens=case["max_new_tokens"], do_sample=False)
            result["generated"] = out[0, prompt.size(1) :].tolist()
            if "long_new_tokens" in case:  # never stopped early, and what each forward call reads
                fed = []  # one token per step when the cache is carried
                model.register_forward_pre_hook(
                    lambda _, args, kwargs: fed.append(kwargs["input_ids"].size(1)), with_kwargs=True
                )
                out = model.generate(prompt, max_new_tokens=case["long_new_tokens"], do_sample=False, eos_token_id=None)
                result["generated_long"], result["fed"] = out[0, prompt.size(1) :].tolist(), fed
    result["class"] = type(model).__name__
    return result


if __name__ == "__main__":
    cases = json.loads(open(sys.argv[1]).read())
    results = [check(case) for case in cases]
    leaked = sorted(m for m in sys.modules if m.split(".")[0] == "lmcore")
    print(json.dumps({"results": results, "lmcore_modules": leaked}))

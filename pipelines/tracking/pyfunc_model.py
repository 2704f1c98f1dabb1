"""MLflow pyfunc model over an exported lmcore model folder (logged as a model from code).

Input: a DataFrame with a `text` column. A language model returns the generated continuation
of each text (params: max_new_tokens, temperature, top_k, top_p, seed); a classifier returns
the predicted label name and its probability. A bad request (no `text` column, a text that is
not a string or is empty, a sampling setting out of range) is an MlflowException with
INVALID_PARAMETER_VALUE, which `mlflow models serve` answers with a 400 naming the rows or key.
"""

from __future__ import annotations

import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel

MAX_SERVED_NEW_TOKENS = 2048  # one request may not hold the server for longer


def request_texts(model_input) -> list[str]:
    """The request's texts, or a 400 that says which rows are wrong and why."""
    if not isinstance(model_input, pd.DataFrame) or "text" not in model_input.columns:
        got = list(model_input.columns) if isinstance(model_input, pd.DataFrame) else type(model_input).__name__
        raise MlflowException.invalid_parameter_value(f"the input needs a 'text' column, got {got}")
    texts = list(model_input["text"])
    for problem, rows in (
        ("is not a string", [i for i, t in enumerate(texts) if not isinstance(t, str)]),
        ("is empty", [i for i, t in enumerate(texts) if isinstance(t, str) and not t.strip()]),
    ):
        if rows:
            shown = ", ".join(map(str, rows[:5])) + (f" and {len(rows) - 5} more" if len(rows) > 5 else "")
            raise MlflowException.invalid_parameter_value(f"text {problem} in row(s) {shown}")
    return texts


def sampling_settings(params: dict | None, defaults: dict) -> dict:
    """The request's generation settings over the defaults, checked, or a 400 naming the key."""
    from lmcore.generate import check_sampling

    settings = {**defaults, **(params or {})}
    try:
        typed = {key: (float if key in ("temperature", "top_p") else int)(settings[key]) for key in defaults}
        check_sampling(typed["max_new_tokens"], typed["temperature"], typed["top_k"], typed["top_p"])
    except (TypeError, ValueError) as error:
        raise MlflowException.invalid_parameter_value(f"generation params: {error}") from None
    if typed["max_new_tokens"] > MAX_SERVED_NEW_TOKENS:
        message = f"max_new_tokens must be at most {MAX_SERVED_NEW_TOKENS}, got {typed['max_new_tokens']}"
        raise MlflowException.invalid_parameter_value(message)
    return typed


class LmcoreModel(PythonModel):
    def load_context(self, context) -> None:
        import torch

        from lmcore.checkpoint import load_folder_tokenizer, load_model

        torch.set_num_threads(max(1, torch.get_num_threads()))
        directory = context.artifacts["model_dir"]
        self.model, self.config = load_model(directory)
        self.tokenizer = load_folder_tokenizer(directory, self.config)

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        import torch

        from lmcore.data import LabeledExamples
        from lmcore.evaluate import predict_classes
        from lmcore.generate import GENERATION_DEFAULTS, generate
        from lmcore.text_to_text import PROMPT_RESPONSE, folder_prompt

        texts = request_texts(model_input)
        if "classifier" in self.config:
            if not texts:
                return pd.DataFrame({"label": pd.Series(dtype=str), "probability": pd.Series(dtype=float)})
            examples = LabeledExamples(self.tokenizer.encode_batch(texts), [0] * len(texts))
            with torch.no_grad():
                predicted, probs = predict_classes(
                    self.model, examples, self.tokenizer.pad_id, self.config.get("max_len", 128),
                    temperature=self.config.get("temperature", 1.0),  # fitted on validation: calibrated
                )  # fmt: skip
            names = self.config.get("label_names") or [str(i) for i in range(probs.shape[1])]
            return pd.DataFrame({"label": [names[i] for i in predicted], "probability": probs.max(1)})
        settings = sampling_settings(params, GENERATION_DEFAULTS)
        templated = self.config.get("template") == PROMPT_RESPONSE  # answers its prompt, as finetuned
        outputs = []
        for i, text in enumerate(texts):
            prompt = folder_prompt(self.tokenizer, self.config, text) if templated else self.tokenizer.encode(text)
            ids = generate(
                self.model,
                prompt or [self.tokenizer.eot_id],
                settings["max_new_tokens"],
                settings["temperature"],
                settings["top_k"],
                settings["top_p"],
                settings["seed"] + i,
                self.tokenizer.eot_id,
            )
            outputs.append(self.tokenizer.decode(ids).strip() if templated else self.tokenizer.decode(ids))
        return pd.DataFrame({"generated": outputs})


set_model(LmcoreModel())

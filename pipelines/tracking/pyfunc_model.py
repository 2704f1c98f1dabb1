"""MLflow pyfunc model over an exported lmcore model folder (logged as a model from code).

Input: a DataFrame with a `text` column. A language model returns the generated continuation
of each text (params: max_new_tokens, temperature, top_k, top_p, seed); a classifier returns
the predicted label name and its probability.
"""

from __future__ import annotations

import pandas as pd
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel


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

        params = params or {}
        texts = [str(t) for t in model_input["text"]]
        if "classifier" in self.config:
            if not texts:
                return pd.DataFrame({"label": pd.Series(dtype=str), "probability": pd.Series(dtype=float)})
            examples = LabeledExamples(self.tokenizer.encode_batch(texts), [0] * len(texts))
            with torch.no_grad():
                predicted, probs = predict_classes(
                    self.model, examples, self.tokenizer.pad_id, self.config.get("max_len", 128)
                )
            names = self.config.get("label_names") or [str(i) for i in range(probs.shape[1])]
            return pd.DataFrame({"label": [names[i] for i in predicted], "probability": probs.max(1)})
        settings = {**GENERATION_DEFAULTS, **(params or {})}
        outputs = []
        for i, text in enumerate(texts):
            ids = generate(
                self.model,
                self.tokenizer.encode(text) or [self.tokenizer.eot_id],
                int(settings["max_new_tokens"]),
                float(settings["temperature"]),
                int(settings["top_k"]),
                float(settings["top_p"]),
                int(settings["seed"]) + i,
                self.tokenizer.eot_id,
            )
            outputs.append(self.tokenizer.decode(ids))
        return pd.DataFrame({"generated": outputs})


set_model(LmcoreModel())

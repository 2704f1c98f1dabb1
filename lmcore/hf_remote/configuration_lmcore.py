"""The `transformers` config of an exported lmcore model (shipped in the folder; see lmcore/hf.py).

`lmcore` holds the exported model's own config.json (arch, model, classifier, temperature...), from
which modeling_lmcore.py builds the model with lmcore's own code, copied beside this file.
"""

from transformers import PretrainedConfig


class LmcoreConfig(PretrainedConfig):
    model_type = "lmcore"

    def __init__(self, lmcore: dict | None = None, **kwargs) -> None:
        self.lmcore = dict(lmcore or {})
        super().__init__(**kwargs)

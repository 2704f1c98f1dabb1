"""`transformers` classes around an exported lmcore model (shipped in the folder; see lmcore/hf.py).

The model is lmcore's own module (its files are copied beside this one with relative imports), so
the exported weights run the code they were trained with. Generation carries lmcore's own state
(a GPT's key/value cache, a recurrent model's hidden state) from step to step as `generate()`'s
cache, so each new token costs one step, as in `lmcore generate`; when a GPT's context fills, the
window slides as lmcore's does (the cache rebuilt from the last half of the context). Inputs are
right-padded, as lmcore trains them; a padded batch is read whole at each step instead.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import GenerationMixin, PreTrainedModel
from transformers.generation.utils import ALL_CACHE_NAMES
from transformers.modeling_outputs import ModelOutput, SequenceClassifierOutput

# transformers 4 copies into its module cache only the files this one imports, not what they import
# in turn: so every lmcore file the model needs is imported here directly.
from .configuration_lmcore import LmcoreConfig
from .lmcore_classifier import SequenceClassifier
from .lmcore_config import config_from_dict  # noqa: F401
from .lmcore_gpt import GPT, rotary_table
from .lmcore_models import build_model, build_model_config
from .lmcore_recurrent import RecurrentLM  # noqa: F401

CACHE_NAME = ALL_CACHE_NAMES[0]  # what generate() carries from step to step: "cache" in 5, "past_key_values" in 4


def build_language_model(config: LmcoreConfig) -> torch.nn.Module:
    arch = config.lmcore["arch"]
    return build_model(arch, build_model_config(arch, config.lmcore["model"]))


def lengths_of_right_padded(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Each row's real length (B,); a mask that is not ones-then-zeros is a ValueError."""
    if attention_mask is None:
        return torch.full((input_ids.size(0),), input_ids.size(1), dtype=torch.long, device=input_ids.device)
    lengths = attention_mask.sum(1)
    positions = torch.arange(input_ids.size(1), device=input_ids.device)
    if not torch.equal(attention_mask.bool(), positions[None, :] < lengths[:, None]):
        raise ValueError("lmcore models take right-padded inputs: set tokenizer.padding_side = 'right'")
    return lengths


class LmcoreState:
    """lmcore's generation state (whatever its model's `forward_step` carries) and how many
    positions it has seen: what `generate()` hands back to the model as its cache."""

    is_croppable = False

    def __init__(self, state, seen: int) -> None:
        self.state, self.seen = state, seen

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen


@dataclass
class LmcoreCausalLMOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    cache: LmcoreState | None = None  # transformers 5's name for the generation cache
    past_key_values: LmcoreState | None = None  # transformers 4's name for the same


def unpadded(attention_mask: torch.Tensor | None) -> bool:
    """No position is padding: the batch can carry lmcore's state (padding would enter it)."""
    return attention_mask is None or bool(attention_mask.all())


class LmcorePreTrainedModel(PreTrainedModel):
    config_class = LmcoreConfig
    base_model_prefix = "lmcore"

    @torch.no_grad()
    def _init_weights(self, module: torch.nn.Module) -> None:
        """lmcore's modules initialise their own weights and model.safetensors holds every one; what
        loading leaves empty is a GPT's rotary table, a buffer that is computed, not saved."""
        if isinstance(module, GPT) and module.wpe is None:
            c = module.config
            module.rotation.copy_(rotary_table(c.n_embd // c.n_head, c.block_size, c.rope_base))


class LmcoreForCausalLM(LmcorePreTrainedModel, GenerationMixin):
    def __init__(self, config: LmcoreConfig) -> None:
        super().__init__(config)
        self.lmcore = build_language_model(config)
        self.post_init()

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.lmcore.wte

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the cache is lmcore's own state (LmcoreState), made by forward

    def forward(
        self, input_ids, attention_mask=None, labels=None, cache=None, use_cache=None, past_key_values=None, **unused
    ) -> LmcoreCausalLMOutput:
        lengths_of_right_padded(input_ids, attention_mask)  # a causal model ignores right padding
        cache = cache if cache is not None else past_key_values
        if cache is not None or (use_cache and labels is None and unpadded(attention_mask)):
            state = cache.state if cache is not None else self.lmcore.init_state(input_ids.size(0))
            logits, state = self.lmcore.forward_step(input_ids, state)
            seen = (cache.seen if cache is not None else 0) + input_ids.size(1)
            cache = LmcoreState(state, seen)
            return LmcoreCausalLMOutput(logits=logits, **{CACHE_NAME: cache})
        logits = self.lmcore(input_ids)  # (B, T, V)
        loss = None
        if labels is not None:
            targets = (
                labels[:, 1:].masked_fill(attention_mask[:, 1:] == 0, -100)
                if attention_mask is not None
                else labels[:, 1:]
            )
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=-100)
        return LmcoreCausalLMOutput(loss=loss, logits=logits)

    def prepare_inputs_for_generation(
        self, input_ids, attention_mask=None, cache=None, use_cache=True, past_key_values=None, **unused
    ):
        """The new token and the cache; the whole prompt at first (a GPT's cut to its context),
        the last half of the context when the window slides, as lmcore's `generate` does."""
        context = self.lmcore.context_length
        cache = cache if cache is not None else past_key_values
        if use_cache and unpadded(attention_mask):
            if cache is not None and (context is None or cache.seen < context):
                return {"input_ids": input_ids[:, -1:], "cache": cache, "use_cache": True}
            keep = input_ids.size(1) if cache is None else context // 2
            keep = keep if context is None else min(keep, context)
            return {"input_ids": input_ids[:, -keep:], "cache": None, "use_cache": True}
        if context is not None and input_ids.size(1) > context:
            input_ids = input_ids[:, -context:]
            attention_mask = None if attention_mask is None else attention_mask[:, -context:]
        return {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False}


class LmcoreForSequenceClassification(LmcorePreTrainedModel):
    def __init__(self, config: LmcoreConfig) -> None:
        super().__init__(config)
        head = config.lmcore["classifier"]
        self.lmcore = SequenceClassifier(build_language_model(config), head["num_classes"], head["pooling"])
        # The temperature fitted on validation: softmax(logits) are calibrated probabilities.
        self.temperature = float(config.lmcore.get("temperature", 1.0))
        self.post_init()

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.lmcore.backbone.wte

    def forward(self, input_ids, attention_mask=None, labels=None, **unused) -> SequenceClassifierOutput:
        logits = self.lmcore(input_ids, lengths_of_right_padded(input_ids, attention_mask)) / self.temperature
        loss = F.cross_entropy(logits.float(), labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)

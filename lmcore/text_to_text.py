"""Prompt/response examples for text-to-text finetuning: translation, dialogue, question answering.

Every example is rendered through one template, so that training, generation and export agree:

    <|endoftext|>{prompt}\\n### Response:\\n{response}<|endoftext|>

The leading end-of-text token starts the example the way every document of the pretraining
stream starts (documents are joined by it), and the closing one is how a generated response
ends. The loss covers the response and its closing token only: the prompt is context, never a
target. A chat (a list of `{"role", "content"}` messages) becomes a prompt of its turns, one
`{role}: {content}` line each, and the last turn, which must be the assistant's, is the response.

Batches hold examples of similar length (`pair_batches`), right-padded; padded positions
and prompt positions carry the target IGNORE, which the loss skips.

Shapes: B batch, T time, V vocab_size.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from lmcore.data import LengthBucketSampler
from lmcore.tokenizer import TextTokenizer

RESPONSE_MARKER = "\n### Response:\n"
IGNORE = -100  # the target of a position the loss skips (F.cross_entropy's ignore_index)
# What a folder's config.json says under "template" when its model was finetuned on prompt/response
# pairs: generation (the CLI, the served model) then renders the prompt and returns the response.
PROMPT_RESPONSE = "prompt_response"


def render_messages(messages: Sequence[dict[str, str]], where: str = "messages") -> tuple[str, str]:
    """(prompt, response) of a chat: every turn but the last as `{role}: {content}` lines, the last
    (the assistant's) as the response."""
    if len(messages) < 2:
        raise ValueError(f"{where}: a chat needs at least one turn before the assistant's, got {len(messages)}")
    check_messages(messages, where)
    if messages[-1]["role"] != "assistant":
        raise ValueError(f"{where}: the last message is the response and must be the assistant's")
    history = "\n".join(f"{m['role']}: {m['content']}" for m in messages[:-1])
    return history, messages[-1]["content"]


def check_messages(messages: Sequence[dict[str, str]], where: str) -> None:
    """Each message is exactly {"role", "content"}, its content a string."""
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or set(message) != {"role", "content"}:
            raise ValueError(f"{where}[{i}]: a message is {{'role': ..., 'content': ...}}, got {message!r}")
        if not isinstance(message["content"], str):
            raise ValueError(f"{where}[{i}].content must be a string, got {message['content']!r}")


def messages_text(messages: object, where: str = "messages") -> str:
    """The prompt text of a chat asked for its next turn: the messages' contents, one a line (as
    a dialogue's history is rendered; an exported folder's chat template renders the same)."""
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{where}: a chat is a non-empty list of {{'role': ..., 'content': ...}}, got {messages!r}")
    check_messages(messages, where)
    return "\n".join(message["content"] for message in messages)


def chat_template(instruction: str) -> str:
    """The Jinja chat template (Hugging Face's `apply_chat_template`) of a model finetuned with
    `instruction`: end-of-text, the instruction, `messages_text` of the messages, the marker, so
    a tokenizer renders the prompt `folder_prompt` gives for the same text. The strings are JSON
    literals, which Jinja reads as its own, escapes included."""
    return (
        f"{{{{ bos_token }}}}{{{{ {json.dumps(instruction)} }}}}"
        "{% for message in messages %}{% if not loop.first %}{{ '\\n' }}{% endif %}"
        "{{ message['content'] }}{% endfor %}"
        f"{{{{ {json.dumps(RESPONSE_MARKER)} }}}}"
    )


@dataclass(frozen=True)
class PromptResponses:
    """Tokenized examples: `ids[i]` is the whole rendered example, its first `prompt_lengths[i]`
    tokens the end-of-text and rendered prompt."""

    ids: list[list[int]]
    prompt_lengths: list[int]

    def __len__(self) -> int:
        return len(self.ids)

    def prompts(self) -> Iterator[list[int]]:
        """What generation starts from: each example's tokens up to its response."""
        for ids, length in zip(self.ids, self.prompt_lengths, strict=True):
            yield ids[:length]

    def responses(self) -> Iterator[list[int]]:
        """Each reference response's tokens, without the closing end-of-text."""
        for ids, length in zip(self.ids, self.prompt_lengths, strict=True):
            yield ids[length:-1]


def fit_lengths(prompt_length: int, response_length: int, max_len: int) -> tuple[int, int]:
    """How many prompt tokens (kept from its end) and response tokens (kept from its start) fit in
    max_len: the response keeps at least half of it, the prompt the rest."""
    if prompt_length + response_length <= max_len:
        return prompt_length, response_length
    response = min(response_length, max(max_len - prompt_length, max_len // 2))
    return max_len - response, response


def template_prompt(tokenizer: TextTokenizer, prompt: str) -> list[int]:
    """What a model reads before it writes a response: end-of-text, the prompt, the marker."""
    return [tokenizer.eot_id, *tokenizer.encode(prompt), *tokenizer.encode(RESPONSE_MARKER)]


def folder_prompt(tokenizer: TextTokenizer, config: dict, text: str) -> list[int]:
    """What a model finetuned on a template reads for `text`: the instruction its folder's config
    names (a translation model's "Translate English to German: "), then the text, templated."""
    return template_prompt(tokenizer, config.get("instruction", "") + text)


def encode_pairs(tokenizer: TextTokenizer, pairs: Iterable[tuple[str, str]], max_len: int) -> PromptResponses:
    """Token ids of each rendered (prompt, response), at most max_len tokens: a long prompt loses
    its start, a long response its end (and then its closing end-of-text); the leading
    end-of-text and the marker, which tells the model to answer, always stay."""
    marker = tokenizer.encode(RESPONSE_MARKER)
    room = max_len - 1 - len(marker)  # for the prompt's own tokens and the response
    if room < 2:
        raise ValueError(f"max_len must be at least {len(marker) + 3} for the template and a response, got {max_len}")
    all_ids, prompt_lengths = [], []
    for prompt, response in pairs:
        prompt_ids = tokenizer.encode(prompt)
        response_ids = [*tokenizer.encode(response), tokenizer.eot_id]
        keep_prompt, keep_response = fit_lengths(len(prompt_ids), len(response_ids), room)
        head = [tokenizer.eot_id, *prompt_ids[len(prompt_ids) - keep_prompt :], *marker]
        all_ids.append(head + response_ids[:keep_response])
        prompt_lengths.append(len(head))
    return PromptResponses(all_ids, prompt_lengths)


def pad_pairs(examples: PromptResponses, indices: Sequence[int], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs (B, T) and next-token targets (B, T), right-padded: a target is IGNORE where the next
    token is part of the prompt or padding, so only response tokens are learned."""
    length = max(len(examples.ids[i]) for i in indices) - 1
    inputs = torch.full((len(indices), length), pad_id, dtype=torch.long)
    targets = torch.full((len(indices), length), IGNORE, dtype=torch.long)
    for row, i in enumerate(indices):
        ids, start = examples.ids[i], examples.prompt_lengths[i]
        inputs[row, : len(ids) - 1] = torch.tensor(ids[:-1])
        # Position t predicts token t + 1: the first response token is predicted at start - 1.
        targets[row, start - 1 : len(ids) - 1] = torch.tensor(ids[start:])
    return inputs, targets


def pair_batches(examples: PromptResponses, pad_id: int, num_buckets: int) -> LengthBucketSampler:
    """Random `pad_pairs` batches of similar-length examples (see LengthBucketSampler)."""
    lengths = [len(ids) for ids in examples.ids]
    return LengthBucketSampler(lengths, lambda rows: pad_pairs(examples, rows, pad_id), num_buckets)


def response_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy over the response tokens of a `pad_pairs` batch."""
    inputs, targets = batch
    logits = model(inputs)  # (B, T, V)
    return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE)


@torch.no_grad()
def response_nll(model: nn.Module, examples: PromptResponses, pad_id: int, batch_size: int = 32) -> tuple[float, int]:
    """(summed negative log-likelihood in nats, token count) of the reference responses, closing
    end-of-text included: exp(sum / count) is the responses' perplexity."""
    device = next(model.parameters()).device
    order = np.argsort([len(ids) for ids in examples.ids], kind="stable")
    total, count = 0.0, 0
    for start in range(0, len(order), batch_size):
        inputs, targets = pad_pairs(examples, order[start : start + batch_size].tolist(), pad_id)
        logits = model(inputs.to(device)).float()  # (B, T, V)
        targets = targets.to(device)
        total += float(
            F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), reduction="sum", ignore_index=IGNORE)
        )
        count += int((targets != IGNORE).sum())
    return total, count

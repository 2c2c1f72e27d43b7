"""Reward routing for multi-domain GRPO: TRL calls every reward function on every completion.

``for_domains(f, ["math"])`` calls ``f`` on the math rows only and returns ``None`` for the others, which
TRL 1.16 treats as "no reward from this function" (NaN, skipped by ``nansum``). ``RewardModelScorer``
turns a sequence-classification reward model into such a function, so that a chat reward model
scores only chat prompts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

RewardFunc = Callable[..., list]


def for_domains(reward_func: RewardFunc, domains: Sequence[str], domain_column: str = "domain") -> RewardFunc:
    """A TRL reward function applying ``reward_func`` to the rows of ``domains`` and ``None`` elsewhere.

    Its ``__name__`` is ``<name>@<domains>``, so TRL logs ``rewards/<name>@<domains>/mean``."""
    if isinstance(domains, str):
        raise TypeError(f"domains must be a list of names, not the string {domains!r}; did you mean [{domains!r}]?")
    wanted = set(domains)

    def routed(prompts=None, completions=None, **kwargs) -> list:
        if domain_column not in kwargs:
            raise KeyError(f"reward function {name!r} needs the dataset column {domain_column!r}; the columns passed "
                           f"are {sorted(['prompts', 'completions', *kwargs])}.")
        rows = [i for i, d in enumerate(kwargs[domain_column]) if d in wanted]
        out: list = [None] * len(completions)
        if not rows:
            return out
        pick = (lambda values: [values[i] for i in rows])
        sub = {k: (pick(v) if isinstance(v, list) and len(v) == len(completions) else v) for k, v in kwargs.items()}
        values = reward_func(prompts=pick(prompts) if prompts is not None else None, completions=pick(completions), **sub)
        for i, value in zip(rows, values):
            out[i] = value
        return out

    name = f"{getattr(reward_func, '__name__', type(reward_func).__name__)}@{'+'.join(domains)}"
    routed.__name__ = name
    return routed


class RewardModelScorer:
    """A TRL reward function scoring (prompt, completion) with a sequence-classification reward model.

    Conversational prompts (lists of messages) are rendered with the reward tokenizer's chat template,
    the completion appended as the assistant's message; plain-text prompts are concatenated with the
    completion. Scores are the model's single logit, computed under ``no_grad`` in batches.

    Args:
        model_name_or_path: a Hub id or a local directory with the model and its tokenizer.
        device: where to run it (default: CUDA if available, else CPU).
        dtype: the model's dtype (default: the checkpoint's).
        batch_size: texts per forward pass.
        max_length: truncation length of each rendered text.
    """

    def __init__(self, model_name_or_path: str, device: str | torch.device | None = None, dtype: Any = "auto",
                 batch_size: int = 8, max_length: int = 4096) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.tokenizer = AutoTokenizer.from_pretrained(model_name_or_path)
        self.model = AutoModelForSequenceClassification.from_pretrained(model_name_or_path, num_labels=1, dtype=dtype)
        self.model.to(self.device).eval()
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.batch_size, self.max_length = batch_size, max_length
        self.__name__ = f"reward_model:{model_name_or_path.rstrip('/').split('/')[-1]}"

    def render(self, prompt: Any, completion: Any) -> str:
        """The text the reward model scores for one row."""
        if isinstance(prompt, list):  # conversational
            answer = completion[0]["content"] if isinstance(completion, list) else completion
            messages = [*prompt, {"role": "assistant", "content": answer}]
            return self.tokenizer.apply_chat_template(messages, tokenize=False)
        return prompt + completion

    def __call__(self, prompts: list, completions: list, **kwargs) -> list[float]:
        texts = [self.render(p, c) for p, c in zip(prompts, completions)]
        scores: list[float] = []
        with torch.no_grad():
            for start in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(texts[start : start + self.batch_size], return_tensors="pt", padding=True,
                                       truncation=True, max_length=self.max_length, add_special_tokens=False)
                logits = self.model(**batch.to(self.device)).logits
                scores += logits[:, 0].float().tolist()
        return scores

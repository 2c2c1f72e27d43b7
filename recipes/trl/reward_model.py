"""``RewardModelScorer``: a sequence-classification reward model as a TRL reward function, for the paper recipe
(``grpo_multidomain.py``, which routes it to the chat rows with ``trl_mgs.rewards.for_domains``).

Recipe code rather than part of ``trl_mgs``: surgery does not need it, and TRL itself accepts a reward model
(``reward_funcs`` takes a model or its name). This one renders conversational prompts with the reward
tokenizer's chat template and returns plain floats, which ``for_domains`` can route. Run as a script,
``grpo_multidomain.py`` finds it on ``sys.path`` (the script's folder).
"""

from __future__ import annotations

from typing import Any

import torch


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

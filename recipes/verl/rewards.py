"""One verl reward function for the multi-domain recipes: math by math-verify, instruction following by
verifiable checks, chat by a reward model served by verl's reward loop.

Recipe code, not part of ``verl_mgs``: surgery needs no reward of its own, and verl takes any reward function
as a file. In a recipe (``mgs_common.yaml``)::

    reward:
      custom_reward_function: {path: recipes/verl/rewards.py, name: compute_score}

verl 0.9.1 loads the file by its path (``verl.utils.import_utils.load_module``: a path that is not
``pkg://`` is opened as given, so a relative one is relative to the current directory of the Ray worker
that builds the reward loop). With the local Ray cluster that ``python -m verl.trainer.main_ppo`` starts
from the repository root, as ``recipes/verl/README.md`` runs it, that is the repository root. From another
directory, or on a cluster started with ``ray start``, pass an absolute path that exists on every node:
``reward.custom_reward_function.path=$PWD/recipes/verl/rewards.py``.

verl calls ``compute_score(data_source, solution_str, ground_truth, extra_info, ...)`` once per response
(verl/experimental/reward_loop/reward_manager/naive.py). The row's domain is read as the MGS engine reads
it, through ``mgs.integration.DomainIndex`` on ``domain_key`` (a ``reward_kwargs`` entry; the recipes set
it to the actor's ``fsdp_config.domain_key``), so the reward and the surgery cannot disagree about a row.
verl passes the reward function ``data_source`` and ``extra_info`` only, so the key is ``data_source`` (the
default) or a path into ``extra_info`` (``extra_info.domain``); another key is an error naming them. verl's validation metrics already split by
``data_source``; training rewards per domain come from the actor as ``actor/mgs/reward/{domain}/mean``
(docs/metrics.md).

- ``math``: ``verl.utils.reward_score.math_verify.compute_score`` (math-verify) against ``ground_truth``.
- ``ifeval``: the fraction of the row's instructions satisfied (``extra_info["instruction_id_list"]``
  and ``extra_info["kwargs"]``, Google IFEval's format, the kwargs as a list or its JSON); :data:`INSTRUCTION_CHECKS` lists the supported ids.
- ``chat``: the score of a discriminative reward model (``reward.reward_model.enable=true``,
  ``reward.reward_model.model_path=...``, a vLLM server that verl starts), asked through verl's reward
  router with the row's chat prompt (``extra_info["messages"]``) plus the response.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from mgs.integration import DomainIndex

DOMAINS = ("math", "ifeval", "chat")


# ----------------------------------------------------------------------------- instruction following
def _words(text: str) -> list[str]:
    return re.findall(r"\b\w+\b", text)


def _compare(value: int, relation: str, n: int) -> bool:
    if relation == "less than":
        return value < n
    if relation == "at least":
        return value >= n
    raise ValueError(f"unknown relation {relation!r}; IFEval uses 'less than' or 'at least'.")


def _json(text: str) -> bool:
    text = text.strip().removeprefix("```json").removeprefix("```Json").removeprefix("```JSON")
    text = text.removeprefix("```").removesuffix("```").strip()
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


INSTRUCTION_CHECKS: dict[str, Callable[..., bool]] = {
    "punctuation:no_comma": lambda text, **_: "," not in text,
    "change_case:english_lowercase": lambda text, **_: text == text.lower(),
    "change_case:english_capital": lambda text, **_: text == text.upper(),
    "length_constraints:number_words": lambda text, num_words, relation, **_: _compare(
        len(_words(text)), relation, num_words),
    "length_constraints:number_sentences": lambda text, num_sentences, relation, **_: _compare(
        len([s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]), relation, num_sentences),
    "length_constraints:number_paragraphs": lambda text, num_paragraphs, **_: len(
        [p for p in re.split(r"\s?\*\*\*\s?", text) if p.strip()]) == num_paragraphs,
    "keywords:existence": lambda text, keywords, **_: all(
        re.search(re.escape(k), text, flags=re.IGNORECASE) for k in keywords),
    "keywords:forbidden_words": lambda text, forbidden_words, **_: not any(
        re.search(r"\b" + re.escape(w) + r"\b", text, flags=re.IGNORECASE) for w in forbidden_words),
    "keywords:frequency": lambda text, keyword, frequency, relation, **_: _compare(
        len(re.findall(re.escape(keyword), text, flags=re.IGNORECASE)), relation, frequency),
    "detectable_format:number_bullet_lists": lambda text, num_bullets, **_: len(
        re.findall(r"^\s*[\*\-]\s", text, flags=re.MULTILINE)) == num_bullets,
    "detectable_format:json_format": lambda text, **_: _json(text),
    "detectable_format:title": lambda text, **_: re.search(r"<<[^\n]+>>", text) is not None,
    "detectable_content:postscript": lambda text, postscript_marker, **_: re.search(
        r"\s*" + re.escape(postscript_marker.lower()), text.lower()) is not None,
    "startend:end_checker": lambda text, end_phrase, **_: text.strip().lower().endswith(end_phrase.strip().lower()),
    "startend:quotation": lambda text, **_: len(text.strip()) > 1 and text.strip()[0] == text.strip()[-1] == '"',
}
"""IFEval instruction id → check ``(response, **kwargs) -> bool`` (kwargs as in IFEval's ``kwargs`` column)."""


def instruction_score(response: str, instruction_ids: list[str], kwargs: list[dict[str, Any]] | str | None) -> float:
    """The fraction of the instructions ``response`` follows (``kwargs``: one dict per instruction, or their JSON)."""
    if not instruction_ids:
        raise ValueError("an ifeval row has no instruction_id_list in extra_info.")
    unknown = sorted(set(instruction_ids) - set(INSTRUCTION_CHECKS))
    if unknown:
        raise ValueError(f"unsupported IFEval instructions {unknown}; supported: {sorted(INSTRUCTION_CHECKS)} "
                         "(recipes/verl/prepare_data.py keeps only rows whose instructions are all supported).")
    if isinstance(kwargs, str):
        kwargs = json.loads(kwargs)
    kwargs = list(kwargs) if kwargs is not None else [{}] * len(instruction_ids)
    if len(kwargs) != len(instruction_ids):
        raise ValueError(f"{len(instruction_ids)} instructions but {len(kwargs)} kwargs entries.")
    followed = [INSTRUCTION_CHECKS[i](response, **{k: v for k, v in (kw or {}).items() if v is not None})
                for i, kw in zip(instruction_ids, kwargs)]
    return sum(followed) / len(followed)


# ----------------------------------------------------------------------------- chat
def chat_score(response: str, extra_info: dict, reward_router_address: str | None, reward_model_tokenizer,
               model_name: str | None = None) -> float:
    """A discriminative reward model's score of the conversation ``extra_info["messages"]`` + ``response``,
    asked through verl's reward router (vLLM's ``/classify``, as verl's own ``compute_score_disrm``)."""
    import urllib.request

    if reward_router_address is None or reward_model_tokenizer is None:
        raise ValueError("chat rows need a reward model: set reward.reward_model.enable=true and "
                         "reward.reward_model.model_path=<a sequence-classification reward model>.")
    messages = list(extra_info.get("messages") or [])
    if not messages:
        raise ValueError("a chat row has no extra_info['messages'] (the prompt as chat messages).")
    text = reward_model_tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": response}],
                                                      add_generation_prompt=False, tokenize=False)
    bos = reward_model_tokenizer.bos_token
    if bos and text.startswith(bos):
        text = text[len(bos):]
    payload = {"input": text, "use_activation": False}
    if model_name:
        payload["model"] = model_name
    request = urllib.request.Request(f"http://{reward_router_address}/classify", data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as reply:
        return float(json.loads(reply.read())["data"][-1]["probs"][-1])


# ----------------------------------------------------------------------------- verl's entry point
def domain_of(data_source: str, extra_info: dict | None, domain_key: str = "data_source") -> str:
    """The row's domain, read as the MGS engine reads it (``mgs.integration.DomainIndex`` on ``domain_key``)."""
    index = DomainIndex(domain_key, key_setting="reward.custom_reward_function.reward_kwargs.domain_key")
    return index.of_row({"data_source": data_source, "extra_info": extra_info or {}})


def compute_score(data_source: str, solution_str: str, ground_truth: Any, extra_info: dict | None = None,
                  reward_router_address: str | None = None, reward_model_tokenizer=None,
                  reward_model_name: str | None = None, domain_key: str = "data_source", gdpo: bool = False,
                  **_) -> float | dict[str, float]:
    """verl's custom reward function: the reward of one response. ``domain_key`` (``reward_kwargs`` in the
    recipes, set to the actor's ``fsdp_config.domain_key``) names the row's domain as the engine reads it.

    ``gdpo=True`` (the ``*_gdpo`` recipes, ``algorithm.adv_estimator=gdpo``): a dict with the ``score`` and one
    reward per domain, ``{domain}_reward``: the score on the row's own domain, 0 on the others (verl's GDPO turns
    each ``gdpo_reward_keys`` entry into a float array, so None is not an option; inside a prompt group every row is
    one domain, so the other domains' rewards are constant and normalise to 0)."""
    extra_info = extra_info or {}
    domain = domain_of(data_source, extra_info, domain_key)
    if domain == "math":
        from verl.utils.reward_score.math_verify import compute_score as math_verify_score

        score = float(math_verify_score(solution_str, str(ground_truth)))
    elif domain == "ifeval":
        score = instruction_score(solution_str, list(extra_info.get("instruction_id_list") or []),
                                  extra_info.get("kwargs"))
    elif domain == "chat":
        score = chat_score(solution_str, extra_info, reward_router_address, reward_model_tokenizer, reward_model_name)
    else:
        raise ValueError(f"no reward for domain {domain!r} (data_source {data_source!r}); recipes/verl/rewards.py "
                         f"scores {list(DOMAINS)}: set extra_info['domain'] or data_source to one of them.")
    if gdpo:
        return {"score": score, **{f"{d}_reward": score if d == domain else 0.0 for d in DOMAINS}}
    return score

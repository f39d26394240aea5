"""Policies that continue a code prefix: the generators behind Monte-Carlo step labels.

One protocol (`base`), three implementations:

- :class:`TransformersGenerator` (`transformers_lm`): a local ``transformers`` causal LM;
- :class:`OpenAICompatibleGenerator` (`openai_server`): any OpenAI-compatible server (``vllm serve``, OpenAI,
  ...) through the ``openai`` client, the way to scale generation past one machine (extra ``serve``);
- :class:`PoolGenerator` (`pool`): no model; grafts the remaining steps of *other* sampled candidates onto a prefix.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .base import (
    GenerationError, Generator, RolloutRequest, assemble_program, complete_prefixes, rollout_prompt, truncate_at_stop,
)
from .openai_server import OpenAICompatibleGenerator
from .pool import PoolGenerator
from .transformers_lm import TransformersGenerator

__all__ = [
    "Generator", "GenerationError", "RolloutRequest", "TransformersGenerator", "OpenAICompatibleGenerator",
    "PoolGenerator", "rollout_prompt", "assemble_program", "complete_prefixes", "truncate_at_stop", "make_generator",
]


def make_generator(kind: str, pool: Mapping[str, Sequence[str]] | None = None, **kwargs: Any) -> Generator:
    """Build a generator by name, for command lines and configs.

    ``"pool"``: :class:`PoolGenerator` over ``pool`` (``seed``); ``"openai"``: :class:`OpenAICompatibleGenerator`
    (``model``, ``base_url``, ``api_key_env``, ``mode``, ``max_concurrency``, ...); ``"transformers"``: loads
    ``model`` (a local path) with ``AutoModelForCausalLM`` / ``AutoTokenizer`` (``batch_size``,
    ``use_chat_template``, ``seed``). Keyword arguments that are None are dropped, so defaults apply.
    """
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if kind == "pool":
        if pool is None:
            raise ValueError("make_generator('pool') needs pool={task_id: [programs]}.")
        return PoolGenerator(pool, seed=kwargs.get("seed", 0))
    if kind == "openai":
        if "model" not in kwargs:
            raise ValueError("make_generator('openai') needs model=<served model name>.")
        keys = ("model", "base_url", "api_key_env", "mode", "max_concurrency", "max_retries", "timeout")
        return OpenAICompatibleGenerator(**{k: kwargs[k] for k in keys if k in kwargs})
    if kind == "transformers":
        if "model" not in kwargs:
            raise ValueError("make_generator('transformers') needs model=<local model path>.")
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(kwargs["model"]).eval()
        tokenizer = AutoTokenizer.from_pretrained(kwargs["model"])
        keys = ("batch_size", "use_chat_template", "seed")
        return TransformersGenerator(model, tokenizer, **{k: kwargs[k] for k in keys if k in kwargs})
    raise ValueError(f"Unknown generator {kind!r}; choose 'pool', 'openai' or 'transformers'.")

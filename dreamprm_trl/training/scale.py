"""What training at scale needs around the PRM: loading a backbone with ``model_init_kwargs`` (dtype, attention,
4-bit quantisation), adapters and tokenizer preparation for the TRL-style constructor, and the precision rules of
the meta step (fp16 loss-scale removal, fp32 finite differences, activation checkpointing in the meta passes).

Each helper is a small pure function or context manager, so it can be tested on CPU without real fp16 AMP or a GPU.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..prm.backbones import load_backbone
from ..prm.inputs import prepare_tokenizer, token_id

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------ model loading
def is_quantized(model: nn.Module) -> bool:
    """True for a bitsandbytes 4-/8-bit transformers model (its Linear weights cannot be cast or perturbed)."""
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


def keep_quantized_trainable(model: nn.Module) -> None:
    """Stop bitsandbytes repacking 4-bit weights for CPU inference on an eval-mode forward (meta passes, scoring).

    On CPUs with AVX512-BF16 such a forward converts the weights, in place and for good, to a packed layout whose
    kernel supports no gradients; the next training forward then fails ("a view of a leaf Variable that requires
    grad is being used in an in-place operation"). GPUs never take that path.
    """
    for sub in model.modules():
        if getattr(sub, "support_avx512bf16_for_cpu", False):
            sub.support_avx512bf16_for_cpu = False


def model_init_kwargs(args: Any, quantization_config: Any = None) -> dict[str, Any]:
    """``args.model_init_kwargs`` ready for ``from_pretrained``: ``dtype`` as a torch dtype (``float32`` unless
    set, as in TRL), a dict ``quantization_config`` as a `BitsAndBytesConfig`, a device map for quantised loads."""
    kwargs = dict(args.model_init_kwargs or {})
    if quantization_config is not None:
        if "quantization_config" in kwargs:
            raise ValueError(
                "quantization_config is set both as a trainer argument and in args.model_init_kwargs; set it once."
            )
        kwargs["quantization_config"] = quantization_config
    dtype = kwargs.get("dtype", "float32")
    if isinstance(dtype, str) and dtype != "auto":
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise ValueError(f"model_init_kwargs dtype={dtype!r} is not a torch dtype; use 'bfloat16', 'float32'...")
        dtype = getattr(torch, dtype)
    kwargs["dtype"] = dtype
    quant = kwargs.get("quantization_config")
    if isinstance(quant, dict):
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(**quant)
    if quant is not None and "device_map" not in kwargs:
        kwargs["device_map"] = {"": args.device}  # quantise straight onto this process's device
    return kwargs


def load_training_backbone(name_or_path: str, args: Any, quantization_config: Any = None) -> nn.Module:
    """`backbones.load_backbone` with the trainer's ``model_init_kwargs`` (see `model_init_kwargs`)."""
    model = load_backbone(name_or_path, **model_init_kwargs(args, quantization_config))
    if is_quantized(model):
        keep_quantized_trainable(model)
    return model


def add_adapters(prm: Any, peft_config: Any) -> None:
    """Wrap the backbone of a PRM built without adapters with ``peft_config`` (step-token rows kept trainable)."""
    from peft import get_peft_model

    from ..prm.lora import default_lora_targets

    if prm.prm_config.lora:
        raise ValueError(
            "The FunctionStepPRM already has LoRA adapters and peft_config was given too. Pass the PRM alone, or "
            "merge_and_unload() it first and pass the merged PRM with the new peft_config (as TRL's trainers do)."
        )
    peft_config = copy.deepcopy(peft_config)
    if getattr(peft_config, "target_modules", "absent") is None:
        peft_config.target_modules = default_lora_targets(prm.backbone)
    if hasattr(peft_config, "trainable_token_indices"):
        extra = peft_config.trainable_token_indices or []
        peft_config.trainable_token_indices = sorted(set(extra) | set(prm.prm_config.new_token_ids))
    prm.backbone = get_peft_model(prm.backbone, peft_config)
    prm.prm_config.lora = True


def prepared_tokenizer(prm: Any, tokenizer: Any) -> Any:
    """``tokenizer`` with the PRM's format tokens: the PRM's own when ``None``, as is when it has the step token,
    else a prepared copy, checked to give the PRM's token ids (i.e. it is the base tokenizer the PRM came from)."""
    step_token = prm.prm_config.step_token
    if tokenizer is None:
        return prm.tokenizer
    if token_id(tokenizer, step_token) is not None:
        return tokenizer
    tokenizer = copy.deepcopy(tokenizer)
    ids = prepare_tokenizer(tokenizer, step_token)
    rows = prm.backbone.get_input_embeddings().weight.shape[0]
    if ids != list(prm.prm_config.new_token_ids) or len(tokenizer) > rows:
        raise ValueError(
            f"processing_class gets ids {ids} for {step_token!r} (and format tokens) but the PRM was trained with "
            f"{prm.prm_config.new_token_ids}; pass the PRM's tokenizer (prm.tokenizer) or the base tokenizer the "
            "PRM was built from."
        )
    return tokenizer


# ------------------------------------------------------------------------------------------------ meta-step precision
def unscaled_grads(grads: Sequence[Tensor], scaler: Any = None) -> list[Tensor] | None:
    """Inner gradients without the fp16 loss scale, or ``None`` when any is non-finite (skip the meta step).

    Under fp16 AMP the plain step leaves ``scale * grad`` in ``.grad`` (the scaler unscales only inside the
    optimizer step); ``scaler`` is the Accelerator's `torch.amp.GradScaler` (``None`` or disabled: no scaling).
    """
    scale = scaler.get_scale() if scaler is not None and scaler.is_enabled() else 1.0
    out = [g.detach() if scale == 1.0 else g.detach().float() / scale for g in grads]
    if not all(torch.isfinite(g).all() for g in out):
        return None
    return out


@contextlib.contextmanager
def fp32_parameters(module: nn.Module) -> Iterator[None]:
    """Run the block with every floating parameter and buffer of ``module`` in float32, then restore the dtypes.

    The DARTS finite differences move the weights by ``eps * v`` and difference two forward passes; in bf16 or
    fp16 both the perturbation and the difference drown in rounding. Casting up and back is exact (bf16/fp16 values
    are fp32 values); the Parameter objects stay the same, so optimizer state is untouched. bitsandbytes 4-bit
    layers keep their packed weights and compute in fp32 for the block.
    """
    changed: list[tuple[Tensor, torch.dtype]] = []
    compute: list[tuple[nn.Module, Any]] = []
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            if tensor.is_floating_point() and tensor.dtype in (torch.float16, torch.bfloat16):
                changed.append((tensor, tensor.dtype))
                tensor.data = tensor.data.float()
        for sub in module.modules():
            if getattr(sub, "compute_dtype", None) in (torch.float16, torch.bfloat16):
                compute.append((sub, sub.compute_dtype))
                sub.compute_dtype = torch.float32
    try:
        yield
    finally:
        with torch.no_grad():
            for tensor, dtype in changed:
                tensor.data = tensor.data.to(dtype)
            for sub, dtype in compute:
                sub.compute_dtype = dtype


@contextlib.contextmanager
def deterministic_train_mode(module: nn.Module) -> Iterator[None]:
    """Eval mode (no dropout) for the meta passes, except that checkpointed layers still checkpoint.

    transformers checkpoints a `GradientCheckpointingLayer` only when that layer is in training mode; setting the
    flag on the layer object alone (not its children) keeps dropout off while the backward recomputes activations.
    """
    from transformers.modeling_layers import GradientCheckpointingLayer

    was_training = module.training
    module.eval()
    for sub in module.modules():
        if isinstance(sub, GradientCheckpointingLayer) and sub.gradient_checkpointing:
            sub.training = True
    try:
        yield
    finally:
        module.train(was_training)

"""`FunctionStepPRM`: a transformers backbone + PEFT LoRA + a scalar head read at the marker closing every step.

One forward pass scores every step of a candidate (the paper's code runs one pass per prefix). The input format
(prompt, steps and a trained special marker after each step) is defined once, in `collator.encode_steps`.

Why a `PreTrainedModel` with its own config (`PRMConfig`, registered with `AutoConfig`/`AutoModel`) rather than a
stock ``*ForTokenClassification``: the PRM carries more than weights - the step token, whether an encoder backbone
runs under a causal mask (a standard encoder checkpoint cannot express that), the aggregation and loss it was
trained with - and its forward reads logits at ``step_positions``, the contract the trainer and the meta step use.
Being a `PreTrainedModel` gives the library's ``save_pretrained``/``from_pretrained``/``push_to_hub``, gradient
checkpointing and the stock `transformers.Trainer` save and resume path. For serving stacks that know only standard
architectures, a merged causal PRM exports losslessly to the backbone's own ``*ForTokenClassification`` with one
label (`FunctionStepPRM.to_token_classification`): its logit at each step marker is the step logit.
"""

from __future__ import annotations

import copy
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedConfig, PreTrainedModel
from transformers.configuration_utils import SubConfigSpec
from transformers.utils import SAFE_WEIGHTS_NAME, ModelOutput

from .backbones import MINILM_ID, is_causal_backbone, load_backbone, load_tokenizer
from .collator import (
    IGNORE_INDEX, STEP_TOKEN, ChainOfFunctionCollator, code_to_steps, effective_prompt, prepare_tokenizer,
)
from .steps import SPLITTERS

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2
ADAPTER_CONFIG_NAME = "adapter_config.json"  # PEFT's
BACKBONE_DIR = "backbone"
AGGREGATIONS = ("min", "mean", "last", "prod", "logodds")
LOSS_TYPES = ("bce", "mse")
_EPS = 1e-6


# --------------------------------------------------------------------------------------------------- pure parts
def aggregate_scores(
    scores: Any, how: str = "min", mask: torch.Tensor | None = None, logits: bool = False
) -> Any:
    """THE aggregation of step scores into one program score, in [0, 1].

    ``min`` weakest step; ``mean``; ``last`` final step; ``prod`` product (all steps right);
    ``logodds`` sigmoid of the mean step log-odds. ``scores`` is a sequence of probabilities (returns a float)
    or a tensor (..., S) with an optional boolean ``mask`` of valid steps (returns a tensor (...), differentiable);
    ``logits=True`` takes logits instead of probabilities. A program with no valid step scores NaN.
    """
    if how not in AGGREGATIONS:
        raise ValueError(f"Unknown aggregation {how!r}; choose one of {AGGREGATIONS}.")
    as_float = not isinstance(scores, torch.Tensor)
    x = torch.as_tensor(list(scores) if as_float else scores, dtype=torch.float64 if as_float else None)
    if mask is None:
        mask = torch.ones_like(x, dtype=torch.bool)
    mask = mask.bool()
    p = torch.sigmoid(x) if logits else x
    n = mask.sum(-1)
    zero = torch.zeros_like(p)
    if how == "min":
        out = torch.where(mask, p, torch.ones_like(p)).amin(-1)
    elif how == "mean":
        out = torch.where(mask, p, zero).sum(-1) / n
    elif how == "last":
        idx = torch.where(mask, torch.arange(p.shape[-1], device=p.device), -1).amax(-1, keepdim=True)
        out = p.gather(-1, idx.clamp(min=0)).squeeze(-1)
    elif how == "prod":
        logp = F.logsigmoid(x) if logits else torch.log(p.clamp(min=_EPS))
        out = torch.exp(torch.where(mask, logp, zero).sum(-1))
    else:
        lo = x if logits else torch.logit(p, eps=_EPS)
        out = torch.sigmoid(torch.where(mask, lo, zero).sum(-1) / n)
    out = torch.where(n > 0, out, torch.full_like(out, float("nan")))
    return float(out) if as_float else out


def smoothed_targets(labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """``t = y (1 - s) + s / 2``: label smoothing towards 0.5 (the one definition; the loss and its label
    gradient in `correction` both use it)."""
    return labels * (1.0 - label_smoothing) + 0.5 * label_smoothing


def step_loss(
    step_logits: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor | None = None,
    loss_type: str = "bce",
    label_smoothing: float = 0.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Loss of step logits (B, S) against soft labels in [0, 1]; differentiable in the logits AND the labels.

    ``bce``: softplus(z) - y z (BCE with logits, soft targets). ``mse``: (sigmoid(z) - y)^2, the paper's choice.
    Label smoothing maps y to y (1 - eps) + eps / 2. ``mask`` defaults to ``labels != -100``.
    ``reduction``: ``mean`` over valid steps (0 if none), ``sum``, ``row_mean`` (B,) per-row mean over its
    valid steps (rows without steps give 0), ``none`` (B, S) with 0 at masked entries.
    """
    if mask is None:
        mask = labels != IGNORE_INDEX
    mask = mask.bool()
    y = torch.where(mask, labels, torch.zeros_like(labels)).to(step_logits.dtype)
    if label_smoothing:
        y = smoothed_targets(y, label_smoothing)
    if loss_type == "bce":
        per = F.softplus(step_logits) - y * step_logits
    elif loss_type == "mse":
        per = (torch.sigmoid(step_logits) - y) ** 2
    else:
        raise ValueError(f"loss_type={loss_type!r}; use one of {LOSS_TYPES}.")
    per = torch.where(mask, per, torch.zeros_like(per))
    if reduction == "none":
        return per
    if reduction == "sum":
        return per.sum()
    if reduction == "row_mean":
        return per.sum(-1) / mask.sum(-1).clamp(min=1)
    if reduction == "mean":
        return per.sum() / mask.sum().clamp(min=1)
    raise ValueError(f"reduction={reduction!r}; use mean, sum, row_mean or none.")


@dataclass
class StepScores:
    """Per-step scores in [0, 1] of one candidate, and their aggregation."""

    steps: list[str]
    scores: list[float]
    default_aggregation: str = "min"

    def aggregate(self, how: str | None = None) -> float:
        return aggregate_scores(self.scores, how or self.default_aggregation)

    def __len__(self) -> int:
        return len(self.scores)


@dataclass
class PRMOutput(ModelOutput):
    """``loss`` (scalar, when labels are given) and ``step_logits`` (B, S; 0 where there is no step)."""

    loss: torch.Tensor | None = None
    step_logits: torch.Tensor | None = None


@strict(accept_kwargs=True)
class PRMConfig(PreTrainedConfig):
    """Configuration of `FunctionStepPRM` (``config.json``, ``model_type="function_step_prm"``).

    ``text_config`` is the backbone's own config (any `AutoModel` architecture); the other fields say how steps are
    marked, read and scored. ``backbone`` and ``backbone_source`` say where the frozen backbone weights of a LoRA
    checkpoint come from (``hub``/``local``: that name or path; ``package``: the packaged MiniLM; ``saved``: the
    ``backbone/`` folder next to the adapter). A merged or fully fine-tuned checkpoint holds every weight itself.
    """

    model_type: ClassVar[str] = "function_step_prm"
    sub_configs_defaults: ClassVar[dict] = {"text_config": SubConfigSpec(config_class=AutoConfig, model_type="qwen2")}

    text_config: dict | PreTrainedConfig | None = None
    backbone: str | None = None
    backbone_source: str = "hub"
    step_token: str = STEP_TOKEN
    new_token_ids: list[int] | None = None
    backbone_is_causal: bool = True
    causal_mask: bool = True
    lora: bool = False
    aggregation: str = "min"
    label_format: str = "soft"  # step labels are probabilities in [0, 1] (Monte-Carlo pass rates)
    loss_type: str = "bce"
    label_smoothing: float = 0.0
    max_length: int = 1024
    step_splitter: str = "function"  # the `steps.SPLITTERS` name the PRM was trained with; rerank splits by it
    backbone_attn_implementation: str | None = None
    format_version: int = FORMAT_VERSION

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        if self.format_version > FORMAT_VERSION:
            raise ValueError(
                f"PRMConfig format_version {self.format_version} is newer than this library's ({FORMAT_VERSION}); "
                "upgrade dreamprm-trl."
            )
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"PRMConfig.aggregation={self.aggregation!r}; choose one of {AGGREGATIONS}.")
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"PRMConfig.loss_type={self.loss_type!r}; choose one of {LOSS_TYPES}.")
        if self.step_splitter not in SPLITTERS:
            raise ValueError(f"PRMConfig.step_splitter={self.step_splitter!r}; choose one of {sorted(SPLITTERS)}.")
        self.new_token_ids = list(self.new_token_ids or [])


# ---------------------------------------------------------------------------------------------------- the model
def fit_max_length(backbone: nn.Module, max_length: int, default_limit: int | None = None) -> int:
    """``max_length`` capped at the backbone's position embeddings (``default_limit`` when its config has none),
    with a warning when it is capped."""
    limit = getattr(backbone.config, "max_position_embeddings", None) or default_limit
    if limit and max_length > limit:
        logger.warning("max_length=%d exceeds the backbone's %d positions; using %d.", max_length, limit, limit)
        return limit
    return max_length


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
    from peft import LoraConfig

    return LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, bias="none")


def _wrap_lora(body: PreTrainedModel, lora_config: Any, new_ids: list[int]) -> Any:
    """``get_peft_model`` with LoRA on ``lora_config.target_modules`` (default q/k/v/o) and the new token rows."""
    from peft import get_peft_model

    lora_config = default_lora_config() if lora_config == "default" else copy.deepcopy(lora_config)
    if lora_config.target_modules is None:
        lora_config.target_modules = default_lora_targets(body)
    extra = lora_config.trainable_token_indices or []
    lora_config.trainable_token_indices = sorted(set(extra) | set(new_ids))
    return get_peft_model(body, lora_config)


def _resolve_backbone_id(body: PreTrainedModel) -> tuple[str | None, str]:
    name = getattr(body.config, "_name_or_path", "") or getattr(body, "name_or_path", "") or ""
    if name == MINILM_ID:
        return name, "package"
    if name and os.path.isdir(name):
        return os.path.abspath(name), "local"
    if name:
        return name, "hub"
    return None, "saved"


class FunctionStepPRM(PreTrainedModel):
    """Process reward model for code: backbone (LoRA) + ``head`` Linear(hidden, 1) read at each step marker.

    A `transformers.PreTrainedModel` with its own `PRMConfig`, registered with `AutoConfig` and `AutoModel`. The
    LoRA adapter (and the trained rows of the new tokens) lives in ``backbone``, a `peft.PeftModel`, and is saved in
    PEFT's format; ``merge_and_unload()`` folds it in, after which `save_pretrained` writes a plain checkpoint.

    ``causal_mask`` (encoders only; causal LMs are causal anyway): ``True`` applies a causal attention mask so the
    score of step k sees the prompt and steps 1..k only - it equals the per-prefix score and cannot peek at later
    code. ``False`` lets an encoder attend to the whole program, so step k's score also depends on later steps
    (no longer a prefix score; one-pass != per-prefix).
    """

    config_class = PRMConfig
    base_model_prefix = "backbone"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True

    def __init__(self, config: PRMConfig, backbone: nn.Module | None = None, tokenizer: Any = None):
        # PreTrainedModel.__init__ resets the sub-config's attention choice; the backbone keeps the one it runs with.
        body_config = backbone.config if backbone is not None else config.text_config
        attn = body_config._attn_implementation
        super().__init__(config)
        self._builds_backbone = backbone is None
        self.backbone = backbone if backbone is not None else AutoModel.from_config(config.text_config)
        self.head = nn.Linear(config.text_config.hidden_size, 1)
        self.tokenizer = tokenizer
        self.post_init()
        if attn is not None:
            self.config._attn_implementation = attn  # set on text_config too (and on the backbone's, shared)
            body_config._attn_implementation = attn

    def initialize_weights(self) -> None:
        """The head keeps `nn.Linear`'s initialisation (drawn in `__init__`, seeded by `from_backbone`). A backbone
        passed in arrives initialised, pretrained or not, with any adapter in place (its own initialiser would
        overwrite LoRA's), so it is left alone; one built here from ``text_config`` (``from_pretrained``, which loads
        the weights next) is initialised by the library as usual."""
        if self._builds_backbone:
            super().initialize_weights()

    def _init_weights(self, module: nn.Module) -> None:
        """See `initialize_weights`."""

    @property
    def prm_config(self) -> PRMConfig:
        """The PRM's settings (``self.config``; the name other modules use)."""
        return self.config

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_backbone(
        cls,
        model_or_path: str | PreTrainedModel,
        tokenizer: Any = None,
        lora_config: Any = "default",
        step_token: str = STEP_TOKEN,
        causal_mask: bool | None = None,
        aggregation: str = "min",
        loss_type: str = "bce",
        label_smoothing: float = 0.0,
        max_length: int | None = None,
        attn_implementation: str | None = None,
        dtype: torch.dtype | None = None,
        quantization_config: Any = None,
        seed: int = 0,
        **load_kwargs: Any,
    ) -> FunctionStepPRM:
        """Wrap a backbone (Hub id, local path or model object) as a fresh PRM.

        The step marker (and, for whitespace-dropping tokenizers, the whitespace tokens) is added to a copy of the
        tokenizer, the embeddings are resized and the new rows trained (PEFT ``trainable_token_indices``).
        ``lora_config``: ``"default"`` (r=8, alpha=16, dropout 0.05 on q/k/v/o), a `peft.LoraConfig`
        (``target_modules=None`` picks q/k/v/o), or ``None`` to train the whole backbone.
        ``causal_mask`` defaults to True (see the class docstring). ``quantization_config`` (e.g. a 4-bit
        `BitsAndBytesConfig`) loads a name/path quantised for QLoRA; a quantised backbone is prepared with
        `peft.prepare_model_for_kbit_training` and needs LoRA. The head and LoRA are initialised from ``seed``
        alone, whatever the global random state: the same arguments give the same PRM.
        """
        if isinstance(model_or_path, str):
            kwargs = {"attn_implementation": attn_implementation, "dtype": dtype,
                      "quantization_config": quantization_config, **load_kwargs}
            body = load_backbone(model_or_path, **{k: v for k, v in kwargs.items() if v is not None})
            tokenizer = tokenizer or load_tokenizer(model_or_path)
        else:
            body = model_or_path
            if tokenizer is None:
                name, _ = _resolve_backbone_id(body)
                if not name:
                    raise ValueError("A backbone given as an object built from a config needs its `tokenizer=`.")
                tokenizer = load_tokenizer(name)
        if hasattr(body, "peft_config"):
            raise ValueError("from_backbone takes a plain transformers model; pass the base model, not a PeftModel.")
        body = getattr(body, "base_model", body)
        quantized = bool(getattr(body, "is_quantized", False))
        if quantized and lora_config is None:
            raise ValueError("A quantised backbone cannot be fine-tuned in full; pass a lora_config (QLoRA).")
        tokenizer = copy.deepcopy(tokenizer)
        backbone_id, source = _resolve_backbone_id(body)
        new_ids = prepare_tokenizer(tokenizer, step_token)
        with torch.random.fork_rng(devices=[]):  # new token rows, LoRA and head: drawn from `seed` alone
            torch.manual_seed(seed)
            if body.get_input_embeddings().weight.shape[0] < len(tokenizer):
                body.resize_token_embeddings(len(tokenizer), mean_resizing=False)
            return cls._assemble(body, tokenizer, new_ids, lora_config, quantized, backbone_id, source, step_token,
                                 causal_mask, aggregation, loss_type, label_smoothing, max_length)

    @classmethod
    def _assemble(
        cls, body: PreTrainedModel, tokenizer: Any, new_ids: list[int], lora_config: Any, quantized: bool,
        backbone_id: str | None, source: str, step_token: str, causal_mask: bool | None, aggregation: str,
        loss_type: str, label_smoothing: float, max_length: int | None,
    ) -> FunctionStepPRM:
        """The `PRMConfig` of a prepared backbone, LoRA on it, then the PRM (the head is drawn last)."""
        if quantized:
            from peft import prepare_model_for_kbit_training

            body = prepare_model_for_kbit_training(body, use_gradient_checkpointing=False)
        limit = getattr(body.config, "max_position_embeddings", None) or 1024
        max_length = fit_max_length(body, max_length, default_limit=limit) if max_length else None
        config = PRMConfig(
            attn_implementation=body.config._attn_implementation,  # PRMConfig sets it on text_config too
            text_config=body.config,
            backbone=backbone_id,
            backbone_source=source,
            step_token=step_token,
            new_token_ids=new_ids,
            backbone_is_causal=is_causal_backbone(body),
            causal_mask=True if causal_mask is None else bool(causal_mask),
            lora=lora_config is not None,
            aggregation=aggregation,
            loss_type=loss_type,
            label_smoothing=label_smoothing,
            max_length=max_length or min(limit, 1024),
            backbone_attn_implementation=body.config._attn_implementation,
        )
        backbone = _wrap_lora(body, lora_config, new_ids) if lora_config is not None else body
        prm = cls(config, backbone, tokenizer)
        prm.head.to(device=body.device)
        return prm

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, *model_args: Any, is_trainable: bool = False,
        revision: str | None = None, **kwargs: Any,
    ) -> FunctionStepPRM:
        """Load a PRM written by `save_pretrained` from a local directory or a Hub repo (also `AutoModel`'s path).

        A merged or fully fine-tuned checkpoint is read by `PreTrainedModel.from_pretrained` (``kwargs`` go there).
        A LoRA checkpoint loads its backbone (by name, or from ``backbone/``; ``kwargs`` such as ``dtype`` or
        ``quantization_config`` go to that load), then the adapter with `peft.PeftModel.from_pretrained`
        (``is_trainable`` as there), then the head.
        """
        path = str(pretrained_model_name_or_path)
        if not os.path.isdir(path):
            from huggingface_hub import snapshot_download

            path = snapshot_download(path, revision=revision)
        tokenizer = load_tokenizer(path)
        if not os.path.isfile(os.path.join(path, ADAPTER_CONFIG_NAME)):
            model = super().from_pretrained(path, *model_args, **kwargs)
            model.tokenizer = tokenizer
            return model
        from peft import PeftModel

        config = PRMConfig.from_pretrained(path)
        if config.backbone_attn_implementation:
            kwargs.setdefault("attn_implementation", config.backbone_attn_implementation)
        if config.backbone_source == "saved" or not config.backbone:
            body = load_backbone(os.path.join(path, BACKBONE_DIR), **kwargs)
        else:
            body = load_backbone(config.backbone, **kwargs)
        if body.get_input_embeddings().weight.shape[0] != len(tokenizer):
            body.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        if getattr(body, "is_quantized", False):
            from peft import prepare_model_for_kbit_training

            body = prepare_model_for_kbit_training(body, use_gradient_checkpointing=False)
        model = cls(config, body, tokenizer)  # before the adapter: post_init must not re-initialise LoRA weights
        model.backbone = PeftModel.from_pretrained(body, path, is_trainable=is_trainable)
        from safetensors.torch import load_file

        state = load_file(os.path.join(path, SAFE_WEIGHTS_NAME))
        model.head.load_state_dict({k.removeprefix("head."): v for k, v in state.items() if k.startswith("head.")})
        return model.to(body.device).eval()

    # ------------------------------------------------------------------ saving
    def _base_state_dict(self) -> dict[str, torch.Tensor]:
        """Backbone weights without adapters, under the plain model's keys (checked against a meta-device copy)."""
        body = self.backbone.get_base_model() if self.config.lora else self.backbone
        out = {}
        for key, value in body.state_dict().items():
            if any(tag in key for tag in ("lora_", "trainable_tokens_", "modules_to_save")):
                continue
            parts = [p for p in key.split(".") if p not in ("base_layer", "token_adapter", "original_module")]
            out[".".join(parts)] = value.detach().contiguous()
        with torch.device("meta"):
            expected = set(AutoModel.from_config(body.config).state_dict())
        if set(out) != expected:
            raise RuntimeError(
                f"Cannot map the adapted backbone back to plain weights (unexpected {sorted(set(out) - expected)[:3]}, "
                f"missing {sorted(expected - set(out))[:3]}); call merge_and_unload() before saving."
            )
        return out

    def save_pretrained(
        self, save_directory: str | os.PathLike, state_dict: dict | None = None, is_main_process: bool = True,
        save_backbone: bool | None = None, **kwargs: Any,
    ) -> None:
        """`PreTrainedModel.save_pretrained`, plus the tokenizer and, with LoRA, PEFT's adapter files.

        Without LoRA (merged or fully fine-tuned) this is the library's plain checkpoint (``config.json`` +
        ``model.safetensors``), loadable with `AutoModel`. With LoRA, ``model.safetensors`` holds only the trained
        weights (head, LoRA, new token rows: what `transformers.Trainer` resumes from), next to
        ``adapter_config.json`` + ``adapter_model.safetensors`` (PEFT's own format) and, when the backbone cannot be
        re-loaded by name (a model built from a config) or ``save_backbone=True``, the frozen backbone in
        ``backbone/``.
        """
        if not self.config.lora:
            super().save_pretrained(save_directory, state_dict=state_dict, is_main_process=is_main_process, **kwargs)
        else:
            trained = [n for n, p in self.named_parameters() if p.requires_grad] or ["head.weight", "head.bias"]
            source = state_dict if state_dict is not None else self.state_dict()
            trained_state = {n: source[n].detach().contiguous() for n in trained if n in source}
            super().save_pretrained(save_directory, state_dict=trained_state, is_main_process=is_main_process,
                                    **kwargs)
            self.backbone.save_pretrained(save_directory, is_main_process=is_main_process)
            if save_backbone or (save_backbone is None and self.config.backbone_source == "saved"):
                self._save_base_backbone(os.path.join(save_directory, BACKBONE_DIR), is_main_process)
        if is_main_process and self.tokenizer is not None:
            self.tokenizer.save_pretrained(save_directory)

    def _save_base_backbone(self, directory: str, is_main_process: bool) -> None:
        from safetensors.torch import save_file

        if not is_main_process:
            return
        base = self.backbone.get_base_model()
        base.config.save_pretrained(directory)
        save_file(self._base_state_dict(), os.path.join(directory, SAFE_WEIGHTS_NAME), metadata={"format": "pt"})

    def merge_and_unload(self) -> FunctionStepPRM:
        """Fold LoRA and the trained token rows into the backbone (PEFT's ``merge_and_unload``), in place.

        `save_pretrained` then writes a plain checkpoint that ``AutoModel.from_pretrained`` loads (with
        ``dreamprm_trl.modeling`` imported, which registers the architecture)."""
        if self.config.lora:
            self.backbone = self.backbone.merge_and_unload()
            self.config.lora = False
            self.config.text_config = self.backbone.config
        return self

    def to_token_classification(self) -> PreTrainedModel:
        """The PRM as the backbone's standard ``*ForTokenClassification`` with one label (for serving stacks).

        Needs a merged or fully fine-tuned PRM (call `merge_and_unload` first) and a causal backbone (an encoder's
        causal mask is not part of a standard checkpoint). The returned model's logit at a step marker is the PRM's
        step logit; ``save_pretrained`` it with ``prm.tokenizer`` and `AutoModelForTokenClassification` (or a
        serving stack that runs token classification) loads it without this package.
        """
        from transformers import AutoModelForTokenClassification

        if self.config.lora:
            raise ValueError("Call merge_and_unload() before to_token_classification(): LoRA must be folded in.")
        if not self.config.backbone_is_causal:
            raise ValueError(
                "to_token_classification() needs a causal backbone: an encoder's step scores use the PRM's causal "
                "mask, which a standard token-classification checkpoint does not apply."
            )
        text_config = copy.deepcopy(self.backbone.config)
        text_config.num_labels, text_config.id2label, text_config.label2id = 1, {0: "step_ok"}, {"step_ok": 0}
        with torch.device("meta"):
            probe = AutoModelForTokenClassification.from_config(text_config)
        heads = [n for n, m in probe.named_children() if isinstance(m, nn.Linear) and m.out_features == 1]
        if len(heads) != 1:
            raise ValueError(f"Cannot find the one-label head of {type(probe).__name__}; it has {heads}.")
        state = {f"{probe.base_model_prefix}.{k}": v for k, v in self.backbone.state_dict().items()}
        state.update({f"{heads[0]}.{k}": v for k, v in self.head.state_dict().items()})
        out = AutoModelForTokenClassification.from_config(text_config, dtype=self.backbone.dtype)
        out.load_state_dict(state, strict=True)
        return out.to(self.device).eval()

    # ------------------------------------------------------------------ forward
    def _attention_mask(self, attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        if self.prm_config.backbone_is_causal or not self.prm_config.causal_mask:
            return attention_mask
        t = attention_mask.shape[-1]
        causal = torch.ones(t, t, dtype=torch.bool, device=attention_mask.device).tril()
        allowed = causal[None, None] & attention_mask[:, None, None, :].bool()
        return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
            ~allowed, torch.finfo(dtype).min
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        step_positions: torch.Tensor,
        step_labels: torch.Tensor | None = None,
        **_: Any,
    ) -> PRMOutput:
        """Step logits (B, S) read at ``step_positions`` (-100 = no step); BCE/MSE loss when labels are given."""
        valid = step_positions != IGNORE_INDEX
        if input_ids.shape[0] == 0:
            logits = self.head.weight.sum() * 0 + torch.zeros(step_positions.shape, device=input_ids.device)
            return PRMOutput(loss=logits.sum() if step_labels is not None else None, step_logits=logits)
        dtype = self.backbone.get_input_embeddings().weight.dtype
        out = self.backbone(
            input_ids=input_ids, attention_mask=self._attention_mask(attention_mask, dtype), use_cache=False
        )
        hidden = out.last_hidden_state
        idx = step_positions.clamp(min=0)
        picked = hidden.gather(1, idx.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
        logits = self.head(picked.to(self.head.weight.dtype)).squeeze(-1)
        logits = torch.where(valid, logits, torch.zeros_like(logits))
        loss = None
        if step_labels is not None:
            mask = valid & (step_labels != IGNORE_INDEX)
            loss = step_loss(
                logits,
                step_labels.to(logits.dtype),
                mask,
                self.prm_config.loss_type,
                self.prm_config.label_smoothing,
            )
        return PRMOutput(loss=loss, step_logits=logits)

    # ------------------------------------------------------------------ inference
    def collator(self, max_length: int | None = None, **kwargs: Any) -> ChainOfFunctionCollator:
        """A `ChainOfFunctionCollator` matching this PRM's tokenizer, step token and max length."""
        return ChainOfFunctionCollator(
            self.tokenizer, max_length or self.prm_config.max_length, self.prm_config.step_token, **kwargs
        )

    def _steps(self, item: Any, splitter: Callable | None) -> list[str]:
        return list(item) if isinstance(item, (list, tuple)) else code_to_steps(item, splitter)

    @torch.no_grad()
    def score_batch(
        self,
        pairs: Sequence[tuple[str, Any]],
        batch_size: int = 8,
        progress: bool = True,
        splitter: Callable | None = None,
        mode: Literal["one_pass", "per_prefix"] = "one_pass",
        overflow: Literal["nan", "error"] = "nan",
    ) -> list[StepScores]:
        """Score ``(prompt, code)`` pairs (code may also be a list of step texts), one forward pass per candidate.

        ``mode="per_prefix"`` is the paper's reference (one pass per prefix, the score of step k read at the end
        of prefix k): K times the work, kept for tests and benchmarks. A candidate whose code alone exceeds
        ``prm_config.max_length`` tokens gets NaN scores (counted in a warning; rank it last) with
        ``overflow="nan"``, or raises ``ValueError`` with ``overflow="error"``. Code is never cut.
        """
        from tqdm.auto import tqdm

        if overflow not in ("nan", "error"):
            raise ValueError(f"overflow={overflow!r}; use 'nan' or 'error'.")
        was_training = self.training
        self.eval()
        collate = self.collator()
        items = [(p, self._steps(c, splitter)) for p, c in pairs]
        items = [(effective_prompt(p, steps), steps) for p, steps in items]
        rows, owner, too_long = [], [], set()
        for i, (prompt, steps) in enumerate(items):
            prefixes = [steps[: k + 1] for k in range(len(steps))] if mode == "per_prefix" else [steps]
            encs = [collate.encode_row({"prompt": prompt, "steps": pre}) for pre in prefixes]
            if any(e is None for e in encs):
                if overflow == "error":
                    raise ValueError(
                        f"Candidate {i} needs more than max_length={self.prm_config.max_length} tokens for its code "
                        "alone; raise `prm.prm_config.max_length` (the backbone allows "
                        f"{getattr(self.backbone.config, 'max_position_embeddings', '?')}) or pass overflow='nan'."
                    )
                too_long.add(i)
                continue
            rows.extend(encs)
            owner.extend([i] * len(encs))
        if too_long:
            logger.warning(
                "%d of %d candidates exceed max_length=%d tokens for their code alone; they score NaN.",
                len(too_long), len(items), self.prm_config.max_length,
            )
        order = sorted(range(len(rows)), key=lambda j: len(rows[j].input_ids))
        probs_of: dict[int, list[float]] = {}
        try:
            for start in tqdm(range(0, len(order), batch_size), disable=not progress, desc="PRM scoring"):
                chunk = order[start : start + batch_size]
                batch = collate.pad([rows[j] for j in chunk])
                batch = {k: v.to(self.device) for k, v in batch.items() if k != "step_labels"}
                out = torch.sigmoid(self(**batch).step_logits.float()).cpu()
                for b, j in enumerate(chunk):
                    probs_of[j] = out[b, : len(rows[j].step_positions)].tolist()
        finally:
            self.train(was_training)
        per_item: list[list[float]] = [[] for _ in items]
        for j, i in enumerate(owner):
            per_item[i].extend(probs_of[j][-1:] if mode == "per_prefix" else probs_of[j])
        for i in too_long:
            per_item[i] = [math.nan] * len(items[i][1])
        agg = self.prm_config.aggregation
        return [
            StepScores(steps, probs, agg) for (_, steps), probs in zip(items, per_item)
        ]

    def score(self, prompt: str, code: str | Sequence[str], splitter: Callable | None = None) -> StepScores:
        """Per-step scores of one candidate (``code`` split by ``splitter``, default `steps.split_steps`).

        Raises ``ValueError`` if the code alone exceeds ``prm_config.max_length`` tokens."""
        return self.score_batch([(prompt, code)], batch_size=1, progress=False, splitter=splitter, overflow="error")[0]

    def program_scores(
        self,
        pairs: Sequence[tuple[str, Any]],
        aggregation: str | None = None,
        batch_size: int = 8,
        progress: bool = True,
        splitter: Callable | None = None,
    ) -> list[float]:
        """One score per ``(prompt, code)`` candidate for ranking: its step scores aggregated with ``aggregation``
        (default ``prm_config.aggregation``); a candidate too long to score ranks last (``-inf``)."""
        scored = self.score_batch(pairs, batch_size=batch_size, progress=progress, splitter=splitter)
        values = [s.aggregate(aggregation) for s in scored]
        return [-math.inf if math.isnan(v) else v for v in values]

    def num_trainable_parameters(self) -> int:
        """Parameters that training updates (LoRA, head, step-marker rows)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


AutoConfig.register(PRMConfig.model_type, PRMConfig)
AutoModel.register(PRMConfig, FunctionStepPRM)

"""`FunctionStepPRM`: a transformers backbone + PEFT LoRA + a scalar head read at the marker closing every step.

One forward pass scores every step of a candidate (the paper's code runs one pass per prefix). The input format
(prompt, steps and a trained special marker after each step) is defined once, in `inputs.encode_steps`.

Why a `PreTrainedModel` with its own config (`PRMConfig`, registered with `AutoConfig`/`AutoModel`) rather than a
stock ``*ForTokenClassification``: the PRM carries more than weights - the step token, whether an encoder backbone
runs under a causal mask (a standard encoder checkpoint cannot express that), the aggregation and loss it was
trained with - and its forward reads logits at ``step_positions``, the contract the trainer and the meta step use.
Being a `PreTrainedModel` gives the library's ``save_pretrained``/``from_pretrained``/``push_to_hub``, gradient
checkpointing and the stock `transformers.Trainer` save and resume path. For serving stacks that know only standard
architectures, a merged causal PRM exports losslessly to the backbone's own ``*ForTokenClassification`` with one
label (`FunctionStepPRM.to_token_classification`): its logit at each step marker is the step logit.

This file holds the core (construction and forward); saving and loading live in `checkpoint`, scoring in
`scoring`, both mixed into the one public class.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import AutoModel, PreTrainedModel
from transformers.utils import ModelOutput

from ..schema import IGNORE_INDEX
from .backbones import fit_max_length, is_causal_backbone, load_backbone, load_tokenizer, resolve_backbone_id
from .checkpoint import CheckpointMixin
from .config import PRMConfig
from .inputs import STEP_TOKEN, prepare_tokenizer
from .lora import wrap_lora
from .losses import step_loss
from .scoring import ScoringMixin


@dataclass
class PRMOutput(ModelOutput):
    """``loss`` (scalar, when labels are given) and ``step_logits`` (B, S; 0 where there is no step)."""

    loss: torch.Tensor | None = None
    step_logits: torch.Tensor | None = None


class FunctionStepPRM(ScoringMixin, CheckpointMixin, PreTrainedModel):
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
        ``lora_config``: ``"default"`` (`lora.LORA_DEFAULTS` on q/k/v/o), a `peft.LoraConfig`
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
                name, _ = resolve_backbone_id(body)
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
        backbone_id, source = resolve_backbone_id(body)
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
        backbone = wrap_lora(body, lora_config, new_ids) if lora_config is not None else body
        prm = cls(config, backbone, tokenizer)
        prm.head.to(device=body.device)
        return prm

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

    def num_trainable_parameters(self) -> int:
        """Parameters that training updates (LoRA, head, step-marker rows)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


AutoModel.register(PRMConfig, FunctionStepPRM)

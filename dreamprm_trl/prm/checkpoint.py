"""Saving, loading and exporting a `FunctionStepPRM`: the library's checkpoint (plus PEFT's adapter files with
LoRA), `merge_and_unload`, and the export to a standard ``*ForTokenClassification``. A mixin of the model class (as
transformers' `PushToHubMixin` is); ``super()`` here is `PreTrainedModel`."""

from __future__ import annotations

import copy
import os
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from transformers import AutoModel, PreTrainedModel
from transformers.utils import SAFE_WEIGHTS_NAME

from .backbones import load_backbone, load_tokenizer
from .config import PRMConfig

if TYPE_CHECKING:  # pragma: no cover
    from .model import FunctionStepPRM

ADAPTER_CONFIG_NAME = "adapter_config.json"  # PEFT's
BACKBONE_DIR = "backbone"


class CheckpointMixin:
    """`from_pretrained`, `save_pretrained`, `merge_and_unload` and `to_token_classification` of `FunctionStepPRM`."""

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
        ``dreamprm_trl.prm`` imported, which registers the architecture)."""
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

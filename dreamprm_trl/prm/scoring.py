"""Scoring with a `FunctionStepPRM`: per-step scores of candidate programs (`StepScores`), one forward pass per
candidate, and one score per program for ranking. A mixin of the model class (as transformers' `GenerationMixin`
is), so users call ``prm.score(...)``."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from ..schema import PROMPT, STEPS
from .collator import ChainOfFunctionCollator
from .inputs import EncodedSteps, code_to_steps, effective_prompt
from .losses import aggregate_scores

logger = logging.getLogger(__name__)


@dataclass
class StepScores:
    """Per-step scores in [0, 1] of one candidate, and their aggregation."""

    steps: list[str]
    scores: list[float]
    default_aggregation: str = "min"

    def aggregate(self, how: str | None = None) -> float:
        """The program score: the step scores aggregated with ``how`` (default: the PRM's aggregation)."""
        return aggregate_scores(self.scores, how or self.default_aggregation)

    def __len__(self) -> int:
        return len(self.scores)


class ScoringMixin:
    """`score`, `score_batch` and `program_scores` of `FunctionStepPRM` (needs ``prm_config``, ``tokenizer``,
    ``backbone``, ``device`` and the forward's ``step_logits``)."""

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
        if overflow not in ("nan", "error"):
            raise ValueError(f"overflow={overflow!r}; use 'nan' or 'error'.")
        was_training = self.training
        self.eval()
        collate = self.collator()
        items = [(p, self._steps(c, splitter)) for p, c in pairs]
        items = [(effective_prompt(p, steps), steps) for p, steps in items]
        rows, owner, too_long = self._encode_candidates(collate, items, mode, overflow)
        try:
            probs_of = self._step_probs(collate, rows, batch_size, progress)
        finally:
            self.train(was_training)
        per_item: list[list[float]] = [[] for _ in items]
        for j, i in enumerate(owner):
            per_item[i].extend(probs_of[j][-1:] if mode == "per_prefix" else probs_of[j])
        for i in too_long:
            per_item[i] = [math.nan] * len(items[i][1])
        agg = self.prm_config.aggregation
        return [StepScores(steps, probs, agg) for (_, steps), probs in zip(items, per_item)]

    def _encode_candidates(
        self, collate: ChainOfFunctionCollator, items: list[tuple[str, list[str]]], mode: str, overflow: str
    ) -> tuple[list[EncodedSteps], list[int], set[int]]:
        """The encoded rows to run (one per candidate, or one per prefix), the candidate each row belongs to, and
        the candidates too long to score (or ``ValueError`` with ``overflow="error"``)."""
        rows, owner, too_long = [], [], set()
        for i, (prompt, steps) in enumerate(items):
            prefixes = [steps[: k + 1] for k in range(len(steps))] if mode == "per_prefix" else [steps]
            encs = [collate.encode_row({PROMPT: prompt, STEPS: pre}) for pre in prefixes]
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
        return rows, owner, too_long

    def _step_probs(
        self, collate: ChainOfFunctionCollator, rows: list[EncodedSteps], batch_size: int, progress: bool
    ) -> dict[int, list[float]]:
        """Step probabilities of each encoded row, batched by length (row index -> one probability per marker)."""
        from tqdm.auto import tqdm

        order = sorted(range(len(rows)), key=lambda j: len(rows[j].input_ids))
        probs_of: dict[int, list[float]] = {}
        for start in tqdm(range(0, len(order), batch_size), disable=not progress, desc="PRM scoring"):
            chunk = order[start : start + batch_size]
            batch = collate.pad([rows[j] for j in chunk])
            batch = {k: v.to(self.device) for k, v in batch.items() if k != "step_labels"}
            out = torch.sigmoid(self(**batch).step_logits.float()).cpu()
            for b, j in enumerate(chunk):
                probs_of[j] = out[b, : len(rows[j].step_positions)].tolist()
        return probs_of

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

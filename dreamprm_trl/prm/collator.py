"""`ChainOfFunctionCollator`: batches step rows for `FunctionStepPRM.forward`, each row encoded by
`inputs.encode_steps` (the PRM's input format) and right-padded."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .. import schema
from ..schema import CODE, IGNORE_INDEX, PROMPT, ROW_ID, STEPS, TASK_ID, VERDICT, WEIGHT
from .inputs import STEP_TOKEN, EncodedSteps, code_to_steps, effective_prompt, encode_steps

logger = logging.getLogger(__name__)


def _label(value: Any) -> float:
    if value is None:
        return IGNORE_INDEX
    value = float(value)
    return IGNORE_INDEX if math.isnan(value) else value


class ChainOfFunctionCollator:
    """Batch rows ``{"prompt", "steps", "labels"|"mc_labels", ...}`` for `FunctionStepPRM.forward`.

    Output: ``input_ids``/``attention_mask`` (B, T) padded on the right; ``step_positions`` (B, S) long and
    ``step_labels`` (B, S) float, both -100 where there is no step/label; and when the rows have them
    ``row_ids`` (from ``"row_id"``), ``final_labels`` (from ``"passed"``), ``weights``
    (from ``"weight"``). A row without ``"steps"`` but with ``"code"`` is split with ``splitter``.
    Rows whose code alone exceeds ``max_length`` are dropped and counted in ``num_dropped`` (with a warning).
    """

    def __init__(
        self,
        tokenizer: Any,
        max_length: int = 1024,
        step_token: str = STEP_TOKEN,
        label_key: str | None = None,
        splitter: Callable[[str], Sequence[Any]] | None = None,
    ):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.step_token = step_token
        self.label_key = label_key
        self.splitter = splitter
        self.num_dropped = 0
        self.num_prompt_truncated = 0
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def encode_row(self, row: dict) -> EncodedSteps | None:
        """``row`` in the PRM's input format (``None`` if its code alone exceeds ``max_length``); a row with
        ``code`` but no ``steps`` is split with ``splitter``."""
        steps = row.get(STEPS)
        if steps is None:
            if CODE not in row:
                raise ValueError(f"Row needs {STEPS!r} (list[str]) or {CODE!r} (str); got keys {sorted(row)}.")
            steps = code_to_steps(row[CODE], self.splitter)
        steps = list(steps)
        prompt = effective_prompt(row.get(PROMPT) or "", steps)
        return encode_steps(self.tokenizer, prompt, steps, self.step_token, self.max_length)

    def _labels(self, row: dict, n_steps: int, index: int) -> list[float]:
        key = schema.label_key(row, self.label_key)
        if key is None or row.get(key) is None:
            return [IGNORE_INDEX] * n_steps
        labels = [_label(v) for v in row[key]]
        if len(labels) != n_steps:
            raise ValueError(
                f"Row {index} (task_id={row.get(TASK_ID)!r}) has {n_steps} steps but {len(labels)} {key!r}; "
                "labels must be one per step."
            )
        return labels

    def pad(self, encs: Sequence[EncodedSteps], labels: Sequence[Sequence[float]] | None = None) -> dict:
        """Right-pad encodings into ``input_ids``, ``attention_mask``, ``step_positions``, ``step_labels``."""
        b = len(encs)
        t = max((len(e.input_ids) for e in encs), default=1)
        s = max((len(e.step_positions) for e in encs), default=1) or 1
        input_ids = torch.full((b, t), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((b, t), dtype=torch.long)
        positions = torch.full((b, s), IGNORE_INDEX, dtype=torch.long)
        step_labels = torch.full((b, s), float(IGNORE_INDEX), dtype=torch.float)
        for j, enc in enumerate(encs):
            n, k = len(enc.input_ids), len(enc.step_positions)
            input_ids[j, :n] = torch.tensor(enc.input_ids)
            attention_mask[j, :n] = 1
            if k:
                positions[j, :k] = torch.tensor(enc.step_positions)
                if labels is not None:
                    step_labels[j, :k] = torch.tensor(labels[j], dtype=torch.float)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "step_positions": positions,
            "step_labels": step_labels,
        }

    def __call__(self, rows: Sequence[dict]) -> dict[str, torch.Tensor]:
        """The padded batch of ``rows`` (see the class docstring); rows too long to fit are dropped and counted."""
        kept: list[tuple[dict, EncodedSteps, list[float]]] = []
        for i, row in enumerate(rows):
            enc = self.encode_row(row)
            if enc is None:
                self.num_dropped += 1
                logger.warning(
                    "Dropped a row (task_id=%r) whose code alone exceeds max_length=%d; %d dropped so far. "
                    "Raise max_length to keep such rows.",
                    row.get(TASK_ID),
                    self.max_length,
                    self.num_dropped,
                )
                continue
            self.num_prompt_truncated += enc.prompt_tokens_dropped > 0
            kept.append((row, enc, self._labels(row, len(enc.step_positions), i)))

        batch = self.pad([e for _, e, _ in kept], [lab for _, _, lab in kept])
        kept_rows = [r for r, _, _ in kept]
        if rows and all(ROW_ID in r for r in rows):
            batch["row_ids"] = torch.tensor([int(r[ROW_ID]) for r in kept_rows], dtype=torch.long)
        if rows and all(VERDICT in r for r in rows):
            batch["final_labels"] = torch.tensor([_label(r[VERDICT]) for r in kept_rows], dtype=torch.float)
        if rows and all(WEIGHT in r for r in rows):
            batch["weights"] = torch.tensor([float(r[WEIGHT]) for r in kept_rows], dtype=torch.float)
        return batch

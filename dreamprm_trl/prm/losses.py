"""The PRM's loss and aggregation, as pure tensor maths (no model): `step_loss` of step logits against soft labels,
`smoothed_targets` (its label smoothing, shared with the label gradient in `training.hypergradient`) and `aggregate_scores`,
the one aggregation of step scores into a program score."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..schema import IGNORE_INDEX

AGGREGATIONS = ("min", "mean", "last", "prod", "logodds")
LOSS_TYPES = ("bce", "mse")
_EPS = 1e-6


def aggregate_scores(
    scores: Any, how: str = "min", mask: torch.Tensor | None = None, logits: bool = False
) -> Any:
    """THE aggregation of step scores into one program score, in [0, 1].

    ``min`` weakest step; ``mean``; ``last`` final step; ``prod`` product (all steps right);
    ``logodds`` sigmoid of the mean step log-odds. ``scores`` is a sequence of probabilities (returns a float)
    or a tensor (..., S) with an optional boolean ``mask`` of valid steps (returns a tensor (...), differentiable);
    ``logits=True`` takes logits instead of probabilities. A program with no valid step scores NaN.
    """
    if how not in AGGREGATIONS:
        raise ValueError(f"Unknown aggregation {how!r}; choose one of {AGGREGATIONS}.")
    as_float = not isinstance(scores, torch.Tensor)
    x = torch.as_tensor(list(scores) if as_float else scores, dtype=torch.float64 if as_float else None)
    if mask is None:
        mask = torch.ones_like(x, dtype=torch.bool)
    mask = mask.bool()
    p = torch.sigmoid(x) if logits else x
    n = mask.sum(-1)
    zero = torch.zeros_like(p)
    if how == "min":
        out = torch.where(mask, p, torch.ones_like(p)).amin(-1)
    elif how == "mean":
        out = torch.where(mask, p, zero).sum(-1) / n
    elif how == "last":
        idx = torch.where(mask, torch.arange(p.shape[-1], device=p.device), -1).amax(-1, keepdim=True)
        out = p.gather(-1, idx.clamp(min=0)).squeeze(-1)
    elif how == "prod":
        logp = F.logsigmoid(x) if logits else torch.log(p.clamp(min=_EPS))
        out = torch.exp(torch.where(mask, logp, zero).sum(-1))
    else:
        lo = x if logits else torch.logit(p, eps=_EPS)
        out = torch.sigmoid(torch.where(mask, lo, zero).sum(-1) / n)
    out = torch.where(n > 0, out, torch.full_like(out, float("nan")))
    return float(out) if as_float else out


def smoothed_targets(labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """``t = y (1 - s) + s / 2``: label smoothing towards 0.5 (the one definition; the loss and its label
    gradient in `training.hypergradient` both use it)."""
    return labels * (1.0 - label_smoothing) + 0.5 * label_smoothing


def step_loss(
    step_logits: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor | None = None,
    loss_type: str = "bce",
    label_smoothing: float = 0.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Loss of step logits (B, S) against soft labels in [0, 1]; differentiable in the logits AND the labels.

    ``bce``: softplus(z) - y z (BCE with logits, soft targets). ``mse``: (sigmoid(z) - y)^2, the paper's choice.
    Label smoothing maps y to y (1 - eps) + eps / 2. ``mask`` defaults to ``labels != -100``.
    ``reduction``: ``mean`` over valid steps (0 if none), ``sum``, ``row_mean`` (B,) per-row mean over its
    valid steps (rows without steps give 0), ``none`` (B, S) with 0 at masked entries.
    """
    if mask is None:
        mask = labels != IGNORE_INDEX
    mask = mask.bool()
    y = torch.where(mask, labels, torch.zeros_like(labels)).to(step_logits.dtype)
    if label_smoothing:
        y = smoothed_targets(y, label_smoothing)
    if loss_type == "bce":
        per = F.softplus(step_logits) - y * step_logits
    elif loss_type == "mse":
        per = (torch.sigmoid(step_logits) - y) ** 2
    else:
        raise ValueError(f"loss_type={loss_type!r}; use one of {LOSS_TYPES}.")
    per = torch.where(mask, per, torch.zeros_like(per))
    if reduction == "none":
        return per
    if reduction == "sum":
        return per.sum()
    if reduction == "row_mean":
        return per.sum(-1) / mask.sum(-1).clamp(min=1)
    if reduction == "mean":
        return per.sum() / mask.sum().clamp(min=1)
    raise ValueError(f"reduction={reduction!r}; use mean, sum, row_mean or none.")

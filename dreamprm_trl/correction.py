"""Meta label correction: the label maths, the meta tables and the one-step-unrolled hypergradient.

The bi-level problem (DreamPRM-Code, arXiv 2512.15000)::

    inner:  theta*(phi) = argmin_theta  l(theta, phi)   (PRM on step rows, labels/weights given by the table phi)
    outer:  min_phi  L_meta(theta*(phi))                (whole programs scored against clean unit-test verdicts)

With one unrolled SGD step ``theta' = theta - lr * grad_theta l(theta, phi)`` the hypergradient is
``dL_meta/dphi = -lr * d2l/(dphi dtheta) . v`` with ``v = grad L_meta(theta')``. Two ways to get it:

* :func:`darts_hypergradient` -- the DARTS central difference ``-lr [g(theta + eps v) - g(theta - eps v)] / (2 eps)``
  with ``g = d l / d phi`` and ``eps = alpha / ||v||``. ``g`` is analytic in the prediction
  (:func:`label_loss_grad`), so the two perturbed terms need forward passes only, and the inner step can reuse
  the gradient the ordinary training step already computed.
* :func:`exact_hypergradient` -- differentiates through the unrolled step with ``torch.func`` (second order).

Everything here works on plain callables and parameter dicts, so it is tested on a float64 MLP against a central
finite difference of :func:`unrolled_meta_loss`.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from .prm.losses import LOSS_TYPES, smoothed_targets


def label_loss_grad(logits: Tensor, labels: Tensor, loss_type: str = "bce", label_smoothing: float = 0.0) -> Tensor:
    """Elementwise ``d loss(logit, y) / d y`` of `modeling.step_loss`, in closed form (no backward through a model).

    * ``bce``: ``loss = softplus(x) - t x`` so ``d/dy = -(1 - s) x``;
    * ``mse``: ``loss = (sigmoid(x) - t)^2`` so ``d/dy = -2 (1 - s) (sigmoid(x) - t)``;

    with ``t = y (1 - s) + s / 2`` and ``x`` the step logit.
    """
    if loss_type == "bce":
        return -(1.0 - label_smoothing) * logits
    if loss_type == "mse":
        return -2.0 * (1.0 - label_smoothing) * (torch.sigmoid(logits) - smoothed_targets(labels, label_smoothing))
    raise ValueError(f"loss_type={loss_type!r} is not supported; use one of {LOSS_TYPES}.")


# ---------------------------------------------------------------------------------------------------------------
# Meta tables: the outer variables, one entry per step label (label correction) or per prefix (reweighting).
# ---------------------------------------------------------------------------------------------------------------

#: Train-row column (written by `labeling.label_steps`) marking step labels that are clean -- a complete program's
#: unit-test verdict -- and therefore never meta-parameters: they stay fixed targets with weight 1.
FIXED_LABEL_COLUMN = "label_fixed"


class MetaTable(nn.Module):
    """Base class of the learnable outer variables ``phi``: one entry per step label of every train row.

    ``fixed`` marks clean labels (a complete program's verdict): their entry never moves, its hypergradient is
    zeroed, and the inner loss uses the clean label (label correction) or weight 1 (reweighting).
    """

    kind: str = ""

    def __init__(self, labels: Sequence[Sequence[float | None]], fixed: Sequence[Sequence[bool]] | None = None):
        super().__init__()
        lengths = torch.tensor([len(row) for row in labels], dtype=torch.long)
        flat = torch.tensor([math.nan if v is None else float(v) for row in labels for v in row], dtype=torch.float32)
        if torch.any((flat < 0) | (flat > 1)):
            bad = int(torch.nonzero((flat < 0) | (flat > 1))[0])
            raise ValueError(
                f"step label {flat[bad].item()} at flat index {bad} is outside [0, 1]; labels are fractions of "
                "passing rollouts."
            )
        if fixed is None:
            fixed_flat = torch.zeros_like(flat, dtype=torch.bool)
        else:
            if [len(r) for r in fixed] != lengths.tolist():
                raise ValueError(
                    f"'{FIXED_LABEL_COLUMN}' must have one flag per step label; its row lengths differ from the "
                    "labels'. Write it with labeling.label_steps or drop the column."
                )
            fixed_flat = torch.tensor([bool(v) for row in fixed for v in row], dtype=torch.bool)
        self.register_buffer("lengths", lengths, persistent=False)
        self.register_buffer("offsets", torch.cumsum(lengths, 0) - lengths, persistent=False)
        self.register_buffer("noisy", flat, persistent=False)
        self.register_buffer("learnable", ~fixed_flat & ~torch.isnan(flat), persistent=False)

    @property
    def phi(self) -> nn.Parameter:
        raise NotImplementedError

    def index(self, row_ids: Tensor, num_steps: int) -> tuple[Tensor, Tensor]:
        """Flat table index ``(B, S)`` of each step of the batch rows, and the mask of steps that exist."""
        steps = torch.arange(num_steps, device=row_ids.device)
        valid = steps[None, :] < self.lengths[row_ids][:, None]
        flat = torch.where(valid, self.offsets[row_ids][:, None] + steps[None, :], 0)
        return flat, valid

    def decay_grad(self, weight_decay: float) -> Tensor:
        """Gradient of ``weight_decay / 2 * ||phi - phi_0||^2``: decay pulls towards the initial (noisy) state."""
        return weight_decay * (self.phi.detach() - self.phi_init) * self.learnable

    def project_(self) -> None:
        """Keep ``phi`` in its box after an optimizer step and restore the fixed entries."""
        with torch.no_grad():
            self.phi.clamp_(*self.bounds)
            self.phi.copy_(torch.where(self.learnable, self.phi, self.phi_init))

    def make_optimizer(self, lr: float) -> torch.optim.Optimizer:
        """Lazy Adam (`torch.optim.SparseAdam`): moments and steps only for the entries a window touched. Dense
        Adam kept moving entries not seen for many steps through its momentum."""
        return torch.optim.SparseAdam([self.phi], lr=lr)

    def sparse_grad(self, grad: Tensor) -> Tensor:
        """The dense hypergradient restricted to the learnable entries it touches (a sparse COO tensor)."""
        idx = torch.nonzero((grad != 0) & self.learnable).reshape(1, -1)
        return torch.sparse_coo_tensor(idx, grad[idx[0]], grad.shape, check_invariants=True).coalesce()

    def state_summary(self) -> dict[str, float]:
        raise NotImplementedError

    def _rows(self, values: list[float]) -> list[list[float | None]]:
        missing = torch.isnan(self.noisy).cpu().tolist()
        out, start = [], 0
        for n in self.lengths.tolist():
            out.append([None if missing[i] else values[i] for i in range(start, start + n)])
            start += n
        return out


class LabelTable(MetaTable):
    """Corrected step labels ``y_hat`` in [0, 1], initialised at the noisy labels (label correction).

    The labels are the parameters themselves, projected back to [0, 1] after each step: no logit clip, so the
    inner loss sees exactly the targets the baselines see. They are updated lazily (`torch.optim.SparseAdam`):
    only the labels of rows in the current window move, by about ``lr`` per visit, so a label visited a few
    times per epoch can cross 0.5 (an Adam step on logits moved about 0.01 per visit and kept moving rows long
    after they were seen).
    """

    kind = "label_correction"
    bounds = (0.0, 1.0)

    def __init__(self, labels: Sequence[Sequence[float | None]], fixed: Sequence[Sequence[bool]] | None = None):
        super().__init__(labels, fixed)
        y0 = torch.nan_to_num(self.noisy, nan=0.5)
        self.y = nn.Parameter(y0.clone())
        self.register_buffer("phi_init", y0.clone(), persistent=False)

    @property
    def phi(self) -> nn.Parameter:
        return self.y

    def labels(self, row_ids: Tensor, step_labels: Tensor, y: Tensor | None = None) -> Tensor:
        """Corrected labels in the layout of the collator's ``step_labels`` (-100 where the collator has none).

        ``y`` replaces the table's own parameter (a functional call, for ``torch.func``); fixed entries keep the
        clean label whatever ``y`` holds.
        """
        y = self.y if y is None else y
        flat, valid = self.index(row_ids, step_labels.shape[1])
        keep = valid & (step_labels != -100)
        value = torch.where(self.learnable[flat], y[flat], self.phi_init[flat].to(y.dtype))
        return torch.where(keep, value.to(step_labels.dtype), torch.full_like(step_labels, -100.0))

    def corrected(self) -> list[list[float | None]]:
        """Current ``y_hat`` per row, aligned with the rows' step labels (``None`` where the label was missing)."""
        return self._rows(self.y.detach().float().cpu().tolist())

    def state_summary(self) -> dict[str, float]:
        known = self.learnable
        y, y_hat = self.noisy[known], self.y.detach()[known]
        if y.numel() == 0:
            return {}
        return {
            "meta/label_shift": (y_hat - y).abs().mean().item(),
            "meta/labels_crossed": float(((y_hat > 0.5) != (y > 0.5)).sum().item()),
            "meta/label_mean": y_hat.mean().item(),
        }


class WeightTable(MetaTable):
    """Learnable sample weights, one per step label (= per training prefix), as the authors' released code.

    Initialised at 1, clamped to [0, 2] after every step, Adam lr 1e-2 and weight decay 0.002 -- here lazy Adam on
    the standardised hypergradient with the decay pulling towards 1, like the label table. Fixed (clean) labels
    keep weight 1.
    """

    kind = "sample_reweighting"
    bounds = (0.0, 2.0)

    def __init__(self, labels: Sequence[Sequence[float | None]], fixed: Sequence[Sequence[bool]] | None = None):
        super().__init__(labels, fixed)
        w0 = torch.ones_like(self.noisy)
        self.w = nn.Parameter(w0.clone())
        self.register_buffer("phi_init", w0.clone(), persistent=False)

    @property
    def phi(self) -> nn.Parameter:
        return self.w

    def all_weights(self, w: Tensor | None = None) -> Tensor:
        """Every entry's weight (flat, aligned with the step labels); fixed entries are 1."""
        w = self.w if w is None else w
        return torch.where(self.learnable, w, torch.ones_like(w))

    def weights(self, row_ids: Tensor, num_steps: int, w: Tensor | None = None) -> Tensor:
        """``(B, S)`` weights of the batch rows' steps; ``w`` replaces the table's own parameter (functional)."""
        flat, valid = self.index(row_ids, num_steps)
        return torch.where(valid, self.all_weights(w)[flat], torch.zeros_like(flat, dtype=self.w.dtype))

    def corrected(self) -> list[list[float | None]]:
        """Reweighting leaves labels as they are: the noisy labels, aligned with the rows."""
        return self._rows(self.noisy.cpu().tolist())

    def row_weights(self) -> list[list[float | None]]:
        """Current weight of every step label, aligned with the rows."""
        return self._rows(self.all_weights().detach().float().cpu().tolist())

    def state_summary(self) -> dict[str, float]:
        w = self.w.detach()[self.learnable]
        if w.numel() == 0:
            return {}
        return {"meta/weight_min": w.min().item(), "meta/weight_max": w.max().item(), "meta/weight_std": w.std().item()}


def build_table(
    meta_method: str, labels: Sequence[Sequence[float | None]], fixed: Sequence[Sequence[bool]] | None = None
) -> MetaTable | None:
    """The table for ``meta_method`` (``None`` for ``"none"``); ``fixed`` flags clean labels (never learnable)."""
    if meta_method == "label_correction":
        return LabelTable(labels, fixed)
    if meta_method == "sample_reweighting":
        return WeightTable(labels, fixed)
    if meta_method == "none":
        return None
    raise ValueError(f"meta_method={meta_method!r}; use label_correction, sample_reweighting or none.")


def standardise_hypergradient(grad: Tensor, seen: Tensor, centre: bool = False) -> Tensor:
    """``(g - mean(g)) / rms`` over the ``seen`` entries (zero elsewhere): the per-window label hypergradient.

    The raw scale follows the inner learning-rate schedule (the unrolled step is ``lr``-proportional) and sinks
    towards Adam's ``eps`` late in training; dividing by the window's RMS keeps each lazy Adam step near ``lr``.
    ``centre`` removes the window's common mode first: complete meta programs pass less often than prefixes, so
    that base-rate mismatch pushes every label the same way (|mean| / rms of the raw hypergradient: 0.98 on the
    hidden-vocabulary task, `benchmarks/bench_hypergradient_quality.py`) and drifted ClassEval labels down.
    """
    if not bool(seen.any()):
        return torch.zeros_like(grad)
    if centre:
        grad = grad - grad[seen].mean()
    return torch.where(seen, grad / grad[seen].pow(2).mean().sqrt().clamp(min=1e-30), torch.zeros_like(grad))


def split_by_task(
    task_ids: Sequence[str], meta_fraction: float = 0.2, seed: int = 0
) -> tuple[list[int], list[int]]:
    """Row indices ``(train, meta)`` with disjoint problems: a seeded ``meta_fraction`` of the distinct task ids
    goes to the meta set (at least one task each side). A task's side depends only on its id and ``seed`` (a
    seeded hash rank), so the experiment's problem splits use the same rule. Pure, no model needed."""
    tasks = sorted(set(task_ids))
    if len(tasks) < 2 or not 0.0 < meta_fraction < 1.0:
        raise ValueError(
            f"split_by_task needs >= 2 distinct task ids (got {len(tasks)}) and meta_fraction in (0, 1) "
            f"(got {meta_fraction})."
        )
    ranked = sorted(tasks, key=lambda t: hashlib.sha256(f"{seed}:{t}".encode()).hexdigest())
    n_meta = min(max(1, round(meta_fraction * len(tasks))), len(tasks) - 1)
    meta_tasks = set(ranked[:n_meta])
    train = [i for i, t in enumerate(task_ids) if t not in meta_tasks]
    meta = [i for i, t in enumerate(task_ids) if t in meta_tasks]
    return train, meta


# ---------------------------------------------------------------------------------------------------------------
# Hypergradients
# ---------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def _assign(params: Sequence[Tensor], values: Sequence[Tensor]) -> None:
    for p, v in zip(params, values):
        p.copy_(v)


def darts_hypergradient(
    params: Sequence[Tensor],
    inner_grads: Sequence[Tensor],
    lr: float,
    meta_grad_fn: Callable[[], tuple[Sequence[Tensor], Tensor]],
    table_grad_fn: Callable[[], Tensor],
    alpha: float = 0.01,
    reduce_fn: Callable[[list[Tensor]], list[Tensor]] | None = None,
) -> tuple[Tensor, Tensor]:
    """DARTS finite-difference hypergradient of the one-step-unrolled meta loss with respect to the table ``phi``.

    Args:
        params: the inner parameters ``theta`` (modified in place during the call, restored bit for bit after).
        inner_grads: ``grad_theta l(theta, phi)`` -- e.g. the gradient the plain training step left in ``.grad``.
        lr: inner learning rate ``eta`` of the unrolled SGD step.
        meta_grad_fn: at the current ``params``, returns ``(grad_theta L_meta, L_meta)``.
        table_grad_fn: at the current ``params``, returns ``d l / d phi`` (forward passes only).
        alpha: ``eps = alpha / ||v||``.
        reduce_fn: averages ``v`` across processes so every rank perturbs identically (identity if ``None``).

    Returns:
        ``(d L_meta(theta') / d phi, L_meta(theta'))``.
    """
    params = list(params)
    original = [p.detach().clone() for p in params]
    try:
        _assign(params, [p - lr * g for p, g in zip(original, inner_grads)])
        v, meta_loss = meta_grad_fn()
        v = [t.detach() for t in v]
        if reduce_fn is not None:
            v = reduce_fn(v)
        norm = torch.sqrt(sum((t.double() ** 2).sum() for t in v))
        if not torch.isfinite(norm):
            raise FloatingPointError(f"meta gradient norm is {norm.item()}; lower meta_learning_rate or check labels.")
        eps = alpha / max(norm.item(), 1e-12)
        _assign(params, [p + eps * t for p, t in zip(original, v)])
        grad_plus = table_grad_fn()
        _assign(params, [p - eps * t for p, t in zip(original, v)])
        grad_minus = table_grad_fn()
    finally:
        _assign(params, original)
    return -lr * (grad_plus - grad_minus) / (2.0 * eps), meta_loss.detach()


def unrolled_meta_loss(
    inner_loss: Callable[[Mapping[str, Tensor], Tensor], Tensor],
    meta_loss: Callable[[Mapping[str, Tensor]], Tensor],
    params: Mapping[str, Tensor],
    phi: Tensor,
    lr: float,
) -> Tensor:
    """``L_meta(theta - lr * grad_theta l(theta, phi))`` as a differentiable function of ``phi`` (``torch.func``)."""
    grads = torch.func.grad(inner_loss)(dict(params), phi)
    return meta_loss({k: p - lr * grads[k] for k, p in params.items()})


def exact_hypergradient(
    inner_loss: Callable[[Mapping[str, Tensor], Tensor], Tensor],
    meta_loss: Callable[[Mapping[str, Tensor]], Tensor],
    params: Mapping[str, Tensor],
    phi: Tensor,
    lr: float,
) -> tuple[Tensor, Tensor]:
    """Exact second-order hypergradient of :func:`unrolled_meta_loss`; returns ``(d L_meta / d phi, L_meta)``.

    ``inner_loss(params, phi)`` and ``meta_loss(params)`` must be pure in ``params`` (e.g. built on
    ``torch.func.functional_call``). Attention kernels without double backward (flash / memory-efficient SDPA)
    cannot run here: load the backbone with ``attn_implementation="eager"``.
    """
    detached = {k: p.detach() for k, p in params.items()}
    grad, value = torch.func.grad_and_value(lambda f: unrolled_meta_loss(inner_loss, meta_loss, detached, f, lr))(
        phi.detach()
    )
    return grad, value

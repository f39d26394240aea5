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

import math
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .modeling import LOSS_TYPES, smoothed_targets


def label_logits(labels: Tensor, clip: float = 0.02) -> Tensor:
    """``z = logit(clip(y, clip, 1 - clip))``: the learnable parameterisation of a soft label (finite at 0 and 1)."""
    if not 0.0 < clip < 0.5:
        raise ValueError(f"label clip must be in (0, 0.5), got {clip}; use e.g. 0.02.")
    return torch.logit(labels.clamp(clip, 1.0 - clip))


def label_loss_grad(logits: Tensor, labels: Tensor, loss_type: str = "bce", label_smoothing: float = 0.0) -> Tensor:
    """Elementwise ``d loss(logit, y) / d y`` of `modeling.step_loss`, in closed form (no backward through a model).

    * ``bce``: ``loss = softplus(x) - t x`` so ``d/dy = -(1 - s) x``;
    * ``mse``: ``loss = (sigmoid(x) - t)^2`` so ``d/dy = -2 (1 - s) (sigmoid(x) - t)``;

    with ``t = y (1 - s) + s / 2`` and ``x`` the step logit. Multiply by ``y (1 - y)`` for ``d/dz`` (``y = sigmoid(z)``).
    """
    if loss_type == "bce":
        return -(1.0 - label_smoothing) * logits
    if loss_type == "mse":
        return -2.0 * (1.0 - label_smoothing) * (torch.sigmoid(logits) - smoothed_targets(labels, label_smoothing))
    raise ValueError(f"loss_type={loss_type!r} is not supported; use one of {LOSS_TYPES}.")


# ---------------------------------------------------------------------------------------------------------------
# Meta tables: the outer variables, one entry per step label (label correction) or per train row (reweighting).
# ---------------------------------------------------------------------------------------------------------------


class MetaTable(nn.Module):
    """Base class of the learnable outer variables ``phi`` indexed by train ``row_id`` (and step)."""

    kind: str = ""

    def __init__(self, labels: Sequence[Sequence[float | None]], clip: float = 0.02):
        super().__init__()
        lengths = torch.tensor([len(row) for row in labels], dtype=torch.long)
        flat = torch.tensor([math.nan if v is None else float(v) for row in labels for v in row], dtype=torch.float32)
        if torch.any((flat < 0) | (flat > 1)):
            bad = int(torch.nonzero((flat < 0) | (flat > 1))[0])
            raise ValueError(
                f"step label {flat[bad].item()} at flat index {bad} is outside [0, 1]; labels are fractions of "
                "passing rollouts."
            )
        self.clip = clip
        self.register_buffer("lengths", lengths, persistent=False)
        self.register_buffer("offsets", torch.cumsum(lengths, 0) - lengths, persistent=False)
        self.register_buffer("noisy", flat, persistent=False)

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
        return weight_decay * (self.phi.detach() - self.phi_init)

    def state_summary(self) -> dict[str, float]:
        raise NotImplementedError


class LabelTable(MetaTable):
    """Corrected step labels ``y_hat = sigmoid(z)``, ``z`` initialised at ``logit(clip(y))`` (label correction)."""

    kind = "label_correction"

    def __init__(self, labels: Sequence[Sequence[float | None]], clip: float = 0.02):
        super().__init__(labels, clip)
        z0 = label_logits(torch.nan_to_num(self.noisy, nan=0.5), clip)
        self.z = nn.Parameter(z0.clone())
        self.register_buffer("phi_init", z0.clone(), persistent=False)

    @property
    def phi(self) -> nn.Parameter:
        return self.z

    def labels(self, row_ids: Tensor, step_labels: Tensor, z: Tensor | None = None) -> Tensor:
        """Corrected labels in the layout of the collator's ``step_labels`` (-100 where the collator has none).

        ``z`` replaces the table's own parameter (a functional call, for ``torch.func``).
        """
        z = self.z if z is None else z
        flat, valid = self.index(row_ids, step_labels.shape[1])
        keep = valid & (step_labels != -100)
        return torch.where(keep, torch.sigmoid(z[flat]).to(step_labels.dtype), torch.full_like(step_labels, -100.0))

    def corrected(self) -> list[list[float | None]]:
        """Current ``y_hat`` per row, aligned with the rows' step labels (``None`` where the label was missing)."""
        values = torch.sigmoid(self.z.detach()).float().cpu().tolist()
        missing = torch.isnan(self.noisy).cpu().tolist()
        out, start = [], 0
        for n in self.lengths.tolist():
            out.append([None if missing[i] else values[i] for i in range(start, start + n)])
            start += n
        return out

    def state_summary(self) -> dict[str, float]:
        known = ~torch.isnan(self.noisy)
        y, y_hat = self.noisy[known], torch.sigmoid(self.z.detach()[known])
        if y.numel() == 0:
            return {}
        return {
            "meta/label_shift": (y_hat - y).abs().mean().item(),
            "meta/labels_crossed": float(((y_hat > 0.5) != (y > 0.5)).sum().item()),
            "meta/label_mean": y_hat.mean().item(),
        }


class WeightTable(MetaTable):
    """Learnable per-row sample weights ``w = softplus(u) / mean(softplus(u))`` (the authors' released code).

    Normalising by the mean over the whole table (not the batch) keeps the inner loss independent of how rows are
    batched, so gradient accumulation and multiple processes compute the same objective.
    """

    kind = "sample_reweighting"

    def __init__(self, labels: Sequence[Sequence[float | None]], clip: float = 0.02):
        super().__init__(labels, clip)
        u0 = torch.full((len(self.lengths),), math.log(math.e - 1.0), dtype=torch.float32)  # softplus(u0) = 1
        self.u = nn.Parameter(u0.clone())
        self.register_buffer("phi_init", u0.clone(), persistent=False)

    @property
    def phi(self) -> nn.Parameter:
        return self.u

    def all_weights(self, u: Tensor | None = None) -> Tensor:
        w = F.softplus(self.u if u is None else u)
        return w / w.mean()

    def weights(self, row_ids: Tensor, u: Tensor | None = None) -> Tensor:
        """Weights of the batch rows; ``u`` replaces the table's own parameter (a functional call)."""
        return self.all_weights(u)[row_ids]

    def corrected(self) -> list[list[float | None]]:
        """Reweighting leaves labels as they are: the noisy labels, aligned with the rows."""
        values, out, start = self.noisy.cpu().tolist(), [], 0
        for n in self.lengths.tolist():
            out.append([None if math.isnan(v) else v for v in values[start:start + n]])
            start += n
        return out

    def state_summary(self) -> dict[str, float]:
        w = self.all_weights().detach()
        return {"meta/weight_min": w.min().item(), "meta/weight_max": w.max().item(), "meta/weight_std": w.std().item()}


def build_table(meta_method: str, labels: Sequence[Sequence[float | None]], clip: float = 0.02) -> MetaTable | None:
    """The table for ``meta_method`` (``None`` for ``"none"``)."""
    if meta_method == "label_correction":
        return LabelTable(labels, clip)
    if meta_method == "sample_reweighting":
        return WeightTable(labels, clip)
    if meta_method == "none":
        return None
    raise ValueError(f"meta_method={meta_method!r}; use label_correction, sample_reweighting or none.")


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

"""The pure core of meta label correction: the label gradient and the hypergradients (one-step unrolled, implicit).

The bi-level problem (DreamPRM-Code, arXiv 2512.15000)::

    inner:  theta*(phi) = argmin_theta  l(theta, phi)   (PRM on step rows, labels/weights given by the table phi)
    outer:  min_phi  L_meta(theta*(phi))                (whole programs scored against clean unit-test verdicts)

With one unrolled step ``theta' = theta - lr * P grad_theta l(theta, phi)`` the hypergradient is
``dL_meta/dphi = -lr * d2l/(dphi dtheta) . P v`` with ``v = grad L_meta(theta')``. ``P`` is a fixed diagonal
preconditioner: the identity models plain SGD, ``1 / (sqrt(v_hat) + eps)`` from the optimizer's state models an
Adam step (:func:`adam_preconditioner`). Two ways to get it:

* :func:`darts_hypergradient` -- the DARTS central difference ``-lr [g(theta + eps u) - g(theta - eps u)] / (2 eps)``
  with ``g = d l / d phi``, ``u = P v`` and ``eps = alpha / ||u||``. ``g`` is analytic in the prediction
  (:func:`label_loss_grad`), so the two perturbed terms need forward passes only, and the inner step can reuse
  the gradient the ordinary training step already computed.
* :func:`exact_hypergradient` -- differentiates through the unrolled step with ``torch.func`` (second order).

:func:`implicit_hypergradient` replaces the unroll by the implicit function theorem at a fitted ``theta``:
``dL_meta/dphi = -d2l/(dphi dtheta) . H^-1 v`` with ``v = grad L_meta(theta)`` and ``H`` the inner Hessian;
``H^-1 v`` comes from ``K`` Neumann terms (:func:`neumann_inverse_hvp`), its Hessian-vector products from central
differences of the inner gradient, and the mixed term from the same difference as DARTS (`_central_difference`).

Everything here works on plain callables and parameter dicts, so it is tested on a float64 MLP against a central
finite difference of :func:`unrolled_meta_loss`. The meta tables (the ``phi`` these differentiate) are in
`meta_methods`; the trainer's orchestration of one meta step is in `meta_step`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ..prm.losses import LOSS_TYPES, smoothed_targets

#: The fix named when a Neumann term is not finite.
DIVERGED = ("the Neumann series diverged (is the inner loss convex here?); lower neumann_steps or use "
            "hypergradient='darts'")
InnerLoss = Callable[[Mapping[str, Tensor], Tensor], Tensor]  # (params, phi) -> inner loss l(theta, phi)
MetaLoss = Callable[[Mapping[str, Tensor]], Tensor]  # params -> meta loss L_meta(theta)


def label_loss_grad(logits: Tensor, labels: Tensor, loss_type: str = "bce", label_smoothing: float = 0.0) -> Tensor:
    """Elementwise ``d loss(logit, y) / d y`` of `prm.step_loss`, in closed form (no backward through a model).

    * ``bce``: ``loss = softplus(x) - t x`` so ``d/dy = -(1 - s) x``;
    * ``mse``: ``loss = (sigmoid(x) - t)^2`` so ``d/dy = -2 (1 - s) (sigmoid(x) - t)``;

    with ``t = y (1 - s) + s / 2`` and ``x`` the step logit.
    """
    if loss_type == "bce":
        return -(1.0 - label_smoothing) * logits
    if loss_type == "mse":
        return -2.0 * (1.0 - label_smoothing) * (torch.sigmoid(logits) - smoothed_targets(labels, label_smoothing))
    raise ValueError(f"loss_type={loss_type!r} is not supported; use one of {LOSS_TYPES}.")


def standardise_hypergradient(grad: Tensor, seen: Tensor, centre: bool = False) -> Tensor:
    """``(g - mean(g)) / rms(g)`` over the ``seen`` entries (zero elsewhere): the per-window label hypergradient.

    The raw scale follows the inner learning-rate schedule (the unrolled step is ``lr``-proportional) and sinks
    late in training; dividing by the window's RMS makes the table's step size independent of that scale.
    ``centre`` removes the window's common mode: complete meta programs pass less often than prefixes, so that
    base-rate mismatch pushes every label the same way (|mean| / rms of the raw hypergradient: 0.98 on the
    hidden-vocabulary task, `benchmarks/bench_hypergradient_quality.py`) and drifted ClassEval labels down.
    The RMS is the raw gradient's, taken before centring: where the common mode is nearly all there is, what is
    left is small and the labels barely move, instead of being blown up to full steps (on the hidden vocabulary
    the residual is a coin flip: MAE ratio 1.09-1.27 x noisy against 1.45-2.28 x with the centred RMS).
    """
    if not bool(seen.any()):
        return torch.zeros_like(grad)
    rms = grad[seen].pow(2).mean().sqrt().clamp(min=1e-30)
    if centre:
        grad = grad - grad[seen].mean()
    return torch.where(seen, grad / rms, torch.zeros_like(grad))


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
    precondition: Sequence[Tensor] | None = None,
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
        precondition: the diagonal ``P`` of the unrolled step, one tensor per parameter (``None``: SGD, ``P = 1``).

    Returns:
        ``(d L_meta(theta') / d phi, L_meta(theta'))``.
    """
    params = list(params)
    original = [p.detach().clone() for p in params]
    scale = list(precondition) if precondition is not None else [1.0] * len(params)
    try:
        _assign(params, [p - lr * d * g for p, d, g in zip(original, scale, inner_grads)])
        v, meta_loss = meta_grad_fn()
        v = [t.detach() for t in v]
        if reduce_fn is not None:
            v = reduce_fn(v)
        grad_plus, grad_minus, eps = _central_difference(params, original, [d * t for d, t in zip(scale, v)],
                                                         table_grad_fn, alpha)
    finally:
        _assign(params, original)
    return -lr * (grad_plus - grad_minus) / (2.0 * eps), meta_loss.detach()


def _norm(vectors: Sequence[Tensor], fix: str = "lower meta_learning_rate or check labels") -> float:
    norm = torch.sqrt(sum((t.double() ** 2).sum() for t in vectors)).item()
    if not math.isfinite(norm):
        raise FloatingPointError(f"meta gradient norm is {norm}; {fix}.")
    return norm


def _central_difference(
    params: list[Tensor], original: list[Tensor], u: Sequence[Tensor], fn: Callable[[], Any], alpha: float,
    fix: str = "lower meta_learning_rate or check labels",
) -> tuple[Any, Any, float]:
    """``(fn(theta + eps u), fn(theta - eps u), eps)`` with ``eps = alpha / ||u||``, ``theta = original``; leaves
    ``params`` at ``theta - eps u`` (the caller restores them). ``fix`` completes the error on a non-finite ``u``."""
    eps = alpha / max(_norm(u, fix), 1e-12)
    _assign(params, [p + eps * t for p, t in zip(original, u)])
    plus = fn()
    _assign(params, [p - eps * t for p, t in zip(original, u)])
    return plus, fn(), eps


def _dot(a: Sequence[Tensor], b: Sequence[Tensor]) -> float:
    return sum((x.double() * y.double()).sum() for x, y in zip(a, b)).item()


def neumann_inverse_hvp(
    v: Sequence[Tensor], hvp_fn: Callable[[list[Tensor]], list[Tensor]], steps: int,
    power_iterations: int = 3, eta: float | None = None,
) -> tuple[list[Tensor], float]:
    """``H^-1 v`` by ``K = steps`` Neumann terms: ``eta * sum_{j=0..K} (I - eta H)^j v``; returns it and ``eta``.

    The series converges where ``H`` is positive definite and ``eta |lambda_max| < 2``. ``eta`` defaults to
    ``0.5 / |lambda|``, ``|lambda|`` from ``power_iterations`` power-iteration steps on ``H`` started at ``v``: a
    lower estimate of ``|lambda_max|``, so the default keeps a factor of 4 inside that bound. ``K = 0`` is ``eta v``,
    the one-step direction; its scale is irrelevant, so no products are spent on ``eta`` (it is 1). Where ``H``
    has no curvature along ``v`` (products of 0) there is nothing to invert: ``v`` itself comes back, ``eta = 1``.
    """
    if steps < 0 or power_iterations < 1:
        raise ValueError(f"neumann_inverse_hvp needs steps >= 0 and power_iterations >= 1, got steps={steps}, "
                         f"power_iterations={power_iterations}.")
    if eta is None and steps == 0:
        eta = 1.0
    if eta is None:
        u, lam = list(v), 0.0
        for _ in range(power_iterations):
            hu = hvp_fn(u)
            lam = (_dot(hu, hu) / max(_dot(u, u), 1e-300)) ** 0.5
            if lam == 0.0:
                return list(v), 1.0
            u = [t / lam for t in hu]
        eta = 0.5 / lam
    total, term = list(v), list(v)
    for _ in range(steps):
        term = [t - eta * h for t, h in zip(term, hvp_fn(term))]
        total = [a + t for a, t in zip(total, term)]
    return [eta * t for t in total], eta


def implicit_hypergradient(
    params: Sequence[Tensor],
    meta_grad_fn: Callable[[], tuple[Sequence[Tensor], Tensor]],
    table_grad_fn: Callable[[], Tensor],
    inner_grad_fn: Callable[[], Sequence[Tensor]],
    steps: int = 5,
    alpha: float = 0.01,
    reduce_fn: Callable[[list[Tensor]], list[Tensor]] | None = None,
    power_iterations: int = 3,
) -> tuple[Tensor, Tensor]:
    """Implicit-function hypergradient ``-d2l/(dphi dtheta) . H^-1 v`` at the current ``params``.

    ``v = grad L_meta(theta)`` (``meta_grad_fn``), ``H^-1 v`` by :func:`neumann_inverse_hvp` with Hessian-vector
    products ``[grad l(theta + eps u) - grad l(theta - eps u)] / (2 eps)`` of ``inner_grad_fn`` (the window's
    inner gradient at the current ``params``; ``eps = alpha / ||u||``), the mixed term as in
    :func:`darts_hypergradient`. ``reduce_fn`` averages ``v`` and every product across processes. Costs
    ``2 (power_iterations + steps)`` inner forward+backward passes more than DARTS. ``params`` are restored bit for
    bit. Returns ``(d L_meta(theta*) / d phi, L_meta(theta))``.
    """
    params = list(params)
    original = [p.detach().clone() for p in params]
    reduce = reduce_fn or (lambda t: t)

    def hvp_fn(u: list[Tensor]) -> list[Tensor]:  # every evaluation perturbs from ``original``
        plus, minus, eps = _central_difference(params, original, u, inner_grad_fn, alpha, DIVERGED)
        return reduce([(a.detach() - b.detach()) / (2.0 * eps) for a, b in zip(plus, minus)])

    try:
        v, meta_loss = meta_grad_fn()
        v = reduce([t.detach() for t in v])
        u, _ = neumann_inverse_hvp(v, hvp_fn, steps, power_iterations)
        grad_plus, grad_minus, eps = _central_difference(params, original, u, table_grad_fn, alpha)
    finally:
        _assign(params, original)
    return -(grad_plus - grad_minus) / (2.0 * eps), meta_loss.detach()


def unrolled_meta_loss(
    inner_loss: InnerLoss, meta_loss: MetaLoss, params: Mapping[str, Tensor], phi: Tensor, lr: float,
    precondition: Mapping[str, Tensor] | None = None,
) -> Tensor:
    """``L_meta(theta - lr * P grad_theta l(theta, phi))`` as a differentiable function of ``phi`` (``torch.func``);
    ``precondition`` maps parameter names to the diagonal ``P`` (``None``: the identity, an SGD step)."""
    grads = torch.func.grad(inner_loss)(dict(params), phi)
    scale = precondition or {}
    return meta_loss({k: p - lr * scale.get(k, 1.0) * grads[k] for k, p in params.items()})


def exact_hypergradient(
    inner_loss: InnerLoss, meta_loss: MetaLoss, params: Mapping[str, Tensor], phi: Tensor, lr: float,
    precondition: Mapping[str, Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """Exact second-order hypergradient of :func:`unrolled_meta_loss`; returns ``(d L_meta / d phi, L_meta)``.

    ``inner_loss(params, phi)`` and ``meta_loss(params)`` must be pure in ``params`` (e.g. built on
    ``torch.func.functional_call``). Attention kernels without double backward (flash / memory-efficient SDPA)
    cannot run here: load the backbone with ``attn_implementation="eager"``.
    """
    detached = {k: p.detach() for k, p in params.items()}
    grad, value = torch.func.grad_and_value(
        lambda f: unrolled_meta_loss(inner_loss, meta_loss, detached, f, lr, precondition)
    )(phi.detach())
    return grad, value


def adam_preconditioner(state: Mapping[str, Tensor], beta2: float, eps: float) -> Tensor | None:
    """Adam's diagonal step scale ``1 / (sqrt(v_hat) + eps)`` of one parameter from its optimizer ``state``
    (``exp_avg_sq`` and ``step``, as `torch.optim.Adam`/`AdamW` keep them); ``None`` before its first step."""
    if "exp_avg_sq" not in state or "step" not in state:
        return None
    step = float(state["step"])
    if step < 1:
        return None
    v_hat = state["exp_avg_sq"] / (1.0 - beta2 ** step)
    return 1.0 / (v_hat.sqrt() + eps)

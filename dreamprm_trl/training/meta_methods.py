"""The meta methods as strategies: one table class per method, one interface the trainer calls.

A table holds the learnable outer variables ``phi`` (one entry per step label of every train row) and answers what
the trainer asks of every method, without the trainer knowing which one runs:

- `MetaTable.targets`: the inner loss's step targets and weights for a batch (``phi`` replaceable, for
  ``torch.func``); `weighted_step_loss` turns them into the per-step loss, once for every caller;
- `MetaTable.inner_grad`: ``d l / d phi`` of a micro-batch from its step logits alone (closed form, for DARTS);
- `MetaTable.corrected` / `MetaTable.row_weights`: the results (corrected labels; per-prefix weights or ``None``);
- `MetaTable.state_summary`, `decay_grad`, `project_`, `make_optimizer`, `sparse_grad`: logging and the update.

`META_TABLES` maps ``FunctionStepPRMConfig.meta_method`` to its class (``"none"``: no table); `build_table` builds one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..prm.losses import step_loss
from ..schema import IGNORE_INDEX, LABEL_FIXED
from .hypergradient import label_loss_grad


def weighted_step_loss(
    step_logits: Tensor, targets: Tensor, weights: Tensor | None, loss_type: str, label_smoothing: float
) -> tuple[Tensor, Tensor]:
    """Per-step inner loss ``(B, S)`` in ``step_logits``' dtype (times ``weights`` when given), and the mask of
    steps with a target: the one loss of plain training, of every meta method and of the exact hypergradient."""
    mask = targets != IGNORE_INDEX
    per_step = step_loss(step_logits, targets.to(step_logits.dtype), mask, loss_type, label_smoothing,
                         reduction="none")
    if weights is not None:
        per_step = per_step * weights.to(per_step.dtype)
    return per_step, mask


def informedness_lower_bound(up: Sequence[float], seen: Sequence[float], seen_sq: Sequence[float], z: float) -> float:
    """Lower bound of ``P(up | verdict 1) - P(up | verdict 0)`` (Youden's J of a direction as a verdict predictor).

    ``up[c]`` / ``seen[c]``: (weighted) count of probes of verdict ``c`` whose direction points up / in all;
    ``seen_sq[c]``: the sum of squared weights, so that ``seen**2 / seen_sq`` is the effective count. The bound is
    the Agresti-Caffo interval's (one success and one failure added per class) ``z`` standard errors below: a class
    never seen counts as a coin flip, and a handful of agreeing probes does not license a step.
    """
    est, var = [], 0.0
    for u, s, sq in zip(up, seen, seen_sq):
        n = s * s / sq if sq > 0 else 0.0
        p = ((u / s if s > 0 else 0.5) * n + 1) / (n + 2)
        est.append(p)
        var += p * (1 - p) / (n + 2)
    return est[1] - est[0] - z * math.sqrt(var)


class MetaTable(nn.Module):
    """Base class of the learnable outer variables ``phi``: one entry per step label of every train row.

    ``fixed`` marks clean labels (a complete program's verdict): their entry never moves, its hypergradient is
    zeroed, and the inner loss uses the clean label (label correction) or weight 1 (reweighting).
    """

    kind: str = ""
    bounds: tuple[float, float] = (0.0, 1.0)
    #: Largest step of one entry per meta update, in units of the standardised hypergradient (``None``: no clip).
    step_clip: float | None = None
    #: Whether the clean (fixed) entries get a hypergradient too, as probes of its reliability (never applied);
    #: a table that sets it defines ``reliability(hypergrad, seen, centre) -> float`` (`LabelTable.reliability`).
    probes_clean: bool = False
    #: Running statistics a resumed run may start afresh when its checkpoint predates them (`load_meta_state`).
    restartable: tuple[str, ...] = ()

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
                    f"'{LABEL_FIXED}' must have one flag per step label; its row lengths differ from the "
                    "labels'. Write it with labeling.label_steps or drop the column."
                )
            fixed_flat = torch.tensor([bool(v) for row in fixed for v in row], dtype=torch.bool)
        self.register_buffer("lengths", lengths, persistent=False)
        self.register_buffer("offsets", torch.cumsum(lengths, 0) - lengths, persistent=False)
        self.register_buffer("noisy", flat, persistent=False)
        self.register_buffer("learnable", ~fixed_flat & ~torch.isnan(flat), persistent=False)
        # clean entries whose hypergradient is computed (never applied) to measure its reliability (`reliability`)
        self.register_buffer("probes", fixed_flat & ~torch.isnan(flat) & self.probes_clean, persistent=False)
        self.noisy_rows = [list(row) for row in labels]  # as given (floats, not float32-rounded)

    @property
    def phi(self) -> nn.Parameter:
        raise NotImplementedError

    def index(self, row_ids: Tensor, num_steps: int) -> tuple[Tensor, Tensor]:
        """Flat table index ``(B, S)`` of each step of the batch rows, and the mask of steps that exist."""
        steps = torch.arange(num_steps, device=row_ids.device)
        valid = steps[None, :] < self.lengths[row_ids][:, None]
        flat = torch.where(valid, self.offsets[row_ids][:, None] + steps[None, :], 0)
        return flat, valid

    def targets(self, row_ids: Tensor, step_labels: Tensor, phi: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """The inner loss's step targets (`IGNORE_INDEX` where none) and per-step weights (``None``: all 1) of the
        batch rows; ``phi`` replaces the table's own parameter (a functional call, for ``torch.func``)."""
        raise NotImplementedError

    def step_grad(
        self, logits: Tensor, step_labels: Tensor, flat: Tensor, loss_type: str, label_smoothing: float
    ) -> Tensor:
        """``d loss / d phi`` of each step ``(B, S)`` at table entries ``flat``, in closed form from the logits."""
        raise NotImplementedError

    def inner_grad(
        self, step_logits: Tensor, step_labels: Tensor, row_ids: Tensor, loss_type: str, label_smoothing: float,
        num_items: Tensor,
    ) -> Tensor:
        """``d l / d phi`` of one micro-batch (the loss summed over its steps, divided by ``num_items``), dense over
        the table: no model backward. Zero on rows not in the batch and on fixed (clean) entries, except `probes`."""
        logits = step_logits.detach().float()
        flat, valid = self.index(row_ids, step_labels.shape[1])
        mask = valid & (step_labels != IGNORE_INDEX) & (self.learnable | self.probes)[flat]
        per = self.step_grad(logits, step_labels, flat, loss_type, label_smoothing)
        grad = torch.zeros_like(self.phi)
        return grad.index_put_((flat[mask],), (per[mask] / num_items).to(grad.dtype), accumulate=True)

    def corrected(self) -> list[list[float | None]]:
        """The step labels of every train row after correction; methods that leave labels alone: the noisy ones."""
        return [list(row) for row in self.noisy_rows]

    def row_weights(self) -> list[list[float | None]] | None:
        """The weight of every step label, aligned with the rows; ``None`` for methods without weights."""
        return None

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

    def step_direction(self, grad: Tensor) -> Tensor:
        """The standardised hypergradient as the optimizer gets it: clipped to ``step_clip`` where set."""
        return grad if self.step_clip is None else grad.clamp(-self.step_clip, self.step_clip)

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
    inner loss sees exactly the targets the baselines see. Each meta update is a plain SGD step on the standardised
    hypergradient clipped to one RMS (`step_clip`), on the labels of the current window only: a label moves in
    proportion to how strongly the clean verdicts point at it, at most ``lr`` per visit. Lazy Adam (the previous
    rule) moved every visited label by about ``lr`` whatever the size of its hypergradient, so at batch 64 correct
    labels with a weak, noisy hypergradient wandered across 0.5 (`benchmarks/results/correction_tried.md`).
    With ``meta_calibrate`` the step is scaled by `reliability`, measured on the clean labels (`probes`).
    """

    kind = "label_correction"
    bounds = (0.0, 1.0)
    step_clip = 1.0
    probes_clean = True
    #: Per-meta-step decay of the running agreement counts of `reliability` (about the last 10 meta steps).
    reliability_decay = 0.9
    #: Standard errors below the estimate that `reliability` steps by (`informedness_lower_bound`).
    reliability_z = 1.0
    restartable = ("clean_up", "clean_seen", "clean_seen_sq")

    def __init__(self, labels: Sequence[Sequence[float | None]], fixed: Sequence[Sequence[bool]] | None = None):
        super().__init__(labels, fixed)
        y0 = torch.nan_to_num(self.noisy, nan=0.5)
        self.y = nn.Parameter(y0.clone())
        self.register_buffer("phi_init", y0.clone(), persistent=False)
        # running counts of `reliability` per verdict (0, 1), checkpointed with the table
        self.register_buffer("clean_up", torch.zeros(2, dtype=torch.float64))
        self.register_buffer("clean_seen", torch.zeros(2, dtype=torch.float64))
        self.register_buffer("clean_seen_sq", torch.zeros(2, dtype=torch.float64))  # sums of squared weights

    def reliability(self, hypergrad: Tensor, seen: Tensor, centre: bool) -> float:
        """How far the (centred) hypergradient's descent direction tells good steps from bad, measured on the
        window's clean labels: ``max(0, lower bound of P(up | passed) - P(up | failed))``, counts kept as running
        averages over meta steps (`informedness_lower_bound`); 1 while no clean label has been seen (rows without
        ``label_fixed``).

        The clean final labels are probes: their hypergradient is computed like any label's and never applied.
        Its agreement with the verdicts tracks the agreement of the learnable labels' directions with their
        unknown truth (flip 30 %, 10 runs: 0.45-0.91 on learnable labels, within 0.05 on clean ones;
        `benchmarks/results/correction.md`). The difference of the two rates, not the plain agreement, because
        verdicts are imbalanced (most programs fail): a direction that points down at every final step agrees with
        most verdicts and says nothing about any label, and J is 0 for it. A step that the verdicts cannot support
        shrinks to nothing instead of moving labels at random.
        """
        probes = (hypergrad != 0) & self.probes
        if bool(probes.any()):
            g = hypergrad[probes].double()
            if centre and bool(seen.any()):
                g = g - hypergrad[seen].double().mean()
            verdict = (self.phi_init[probes] > 0.5).long()
            ones, decay = torch.ones_like(g), self.reliability_decay
            self.clean_up.mul_(decay).index_add_(0, verdict, (g < 0).double())  # descent direction: up
            self.clean_seen.mul_(decay).index_add_(0, verdict, ones)
            self.clean_seen_sq.mul_(decay**2).index_add_(0, verdict, ones)
        if self.clean_seen.sum().item() == 0:
            return 1.0
        bound = informedness_lower_bound(self.clean_up.tolist(), self.clean_seen.tolist(),
                                         self.clean_seen_sq.tolist(), self.reliability_z)
        return max(0.0, bound)

    @property
    def phi(self) -> nn.Parameter:
        return self.y

    def make_optimizer(self, lr: float) -> torch.optim.Optimizer:
        """Plain SGD (sparse: only the window's labels move); the step size comes from `step_direction`."""
        return torch.optim.SGD([self.phi], lr=lr)

    def labels(self, row_ids: Tensor, step_labels: Tensor, y: Tensor | None = None) -> Tensor:
        """Corrected labels in the layout of the collator's ``step_labels`` (`IGNORE_INDEX` where the collator has none).

        ``y`` replaces the table's own parameter (a functional call, for ``torch.func``); fixed entries keep the
        clean label whatever ``y`` holds.
        """
        y = self.y if y is None else y
        flat, valid = self.index(row_ids, step_labels.shape[1])
        keep = valid & (step_labels != IGNORE_INDEX)
        clean = self.phi_init[flat].to(y.dtype)
        probe = clean + (y[flat] - y[flat].detach())  # the clean value, with a gradient for `reliability`
        value = torch.where(self.learnable[flat], y[flat], torch.where(self.probes[flat], probe, clean))
        return torch.where(keep, value.to(step_labels.dtype), torch.full_like(step_labels, float(IGNORE_INDEX)))

    def targets(self, row_ids: Tensor, step_labels: Tensor, phi: Tensor | None = None) -> tuple[Tensor, None]:
        """The corrected labels as targets, no weights."""
        return self.labels(row_ids, step_labels, y=phi), None

    def step_grad(
        self, logits: Tensor, step_labels: Tensor, flat: Tensor, loss_type: str, label_smoothing: float
    ) -> Tensor:
        """``d loss / d y`` (`label_loss_grad`) at the current labels."""
        return label_loss_grad(logits, self.y.detach()[flat], loss_type, label_smoothing)

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

    def targets(self, row_ids: Tensor, step_labels: Tensor, phi: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The noisy labels as targets, weighted by the table."""
        return step_labels, self.weights(row_ids, step_labels.shape[1], w=phi)

    def step_grad(
        self, logits: Tensor, step_labels: Tensor, flat: Tensor, loss_type: str, label_smoothing: float
    ) -> Tensor:
        """``d (w loss) / d w``: the per-step loss itself."""
        return step_loss(logits, step_labels.float(), None, loss_type, label_smoothing, reduction="none")

    def row_weights(self) -> list[list[float | None]]:
        """Current weight of every step label, aligned with the rows."""
        return self._rows(self.all_weights().detach().float().cpu().tolist())

    def state_summary(self) -> dict[str, float]:
        w = self.w.detach()[self.learnable]
        if w.numel() == 0:
            return {}
        return {"meta/weight_min": w.min().item(), "meta/weight_max": w.max().item(), "meta/weight_std": w.std().item()}



#: The table class of each ``meta_method`` (``"none"`` trains without a table).
META_TABLES: dict[str, type[MetaTable]] = {"label_correction": LabelTable, "sample_reweighting": WeightTable}


def build_table(
    meta_method: str, labels: Sequence[Sequence[float | None]], fixed: Sequence[Sequence[bool]] | None = None
) -> MetaTable | None:
    """The table for ``meta_method`` (``None`` for ``"none"``); ``fixed`` flags clean labels (never learnable)."""
    if meta_method == "none":
        return None
    if meta_method not in META_TABLES:
        raise ValueError(f"meta_method={meta_method!r}; use one of {[*META_TABLES, 'none']}.")
    return META_TABLES[meta_method](labels, fixed)

